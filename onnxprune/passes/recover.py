"""Recovery without retraining: bias compensation and least-squares reconstruction.

Before: a consumer layer L (Conv/Gemm/MatMul) lost some input channels; its
        output is off by what those channels contributed.
After (``bias``): L's bias absorbs the expected contribution of each removed
        channel, E[x_j] * sum(W[:, j]) (Nagel et al.'s bias correction idea,
        applied to removed channels).
After (``lsq``): L's remaining weights and bias are re-fitted by ridge least
        squares so that L's output, computed from the *pruned* model's
        activations, matches the *original* model's output at that point
        (He et al., ICCV 2017). Layers are processed front to back, so each
        fit sees the errors of the layers before it. The ridge term pulls
        towards the plain sliced weights; its strength is chosen per layer
        on a held-back fifth of the calibration samples, and a fit is kept
        only when it beats the plain weights there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CalibrationError
from ..graph.analysis import Analysis
from ..runtime import make_session

logger = logging.getLogger(__name__)

MAX_ROWS = 20000
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1)  # candidate strengths, relative to the mean diagonal of A'A


@dataclass
class _Site:
    """One layer to re-fit: its node, sampled positions and the original targets there."""

    node: str
    op: str
    input: str
    output: str
    keep_in: np.ndarray
    keep_out: np.ndarray
    positions: Optional[tuple[np.ndarray, np.ndarray]] = None
    target: Optional[np.ndarray] = None
    in_mean: Optional[np.ndarray] = None
    hw: int = 0


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _expose(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
            have.add(n)
    return m


def _prefix(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Only the nodes ``name`` depends on (onnxruntime runs every node of a graph, needed or not)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    need, stack = set(), [name]
    while stack:
        t = stack.pop()
        node = producer.get(t)
        if node is None or id(node) in need:
            continue
        need.add(id(node))
        stack.extend(i for i in node.input if i)
    nodes = [n for n in g.node if id(n) in need]
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "prefix", [i for i in g.input if i.name in used],
                              [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)],
                              [t for t in g.initializer if t.name in used])
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def _stream(model: onnx.ModelProto, names: list[str], batches):
    """The named tensors, batch by batch: whole activations of every calibration sample at once
    would not fit in memory for big models (EfficientNet-Lite0: GBs per layer for 500 images)."""
    sess = make_session(_expose(model, names))
    start = 0
    for feeds in batches:
        out = dict(zip(names, sess.run(names, feeds)))
        n = next(iter(out.values())).shape[0]
        yield start, start + n, out
        start += n


def _conv_rows(x: np.ndarray, node: onnx.NodeProto, w_shape: tuple, pos) -> np.ndarray:
    """im2col of ``x`` at the sampled output positions: rows x (C_in * kh * kw)."""
    kh, kw = w_shape[2], w_shape[3]
    sh, sw = _attr(node, "strides", [1, 1])
    dh, dw = _attr(node, "dilations", [1, 1])
    pads = _attr(node, "pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oy, ox = pos  # [N, P]
    n_idx = np.arange(x.shape[0])[:, None, None, None]
    yy = (oy * sh)[:, :, None, None] + (np.arange(kh) * dh)[None, None, :, None]
    xx = (ox * sw)[:, :, None, None] + (np.arange(kw) * dw)[None, None, None, :]
    patches = xp[n_idx, :, yy, xx]  # [N, P, kh, kw, C]
    patches = np.moveaxis(patches, -1, 2)  # [N, P, C, kh, kw]
    return patches.reshape(-1, x.shape[1] * kh * kw)


def _fit(rows: np.ndarray, target: np.ndarray, w0: np.ndarray, b0: np.ndarray, n_train: int,
         ridge: float | None = None) -> Optional[tuple[np.ndarray, np.ndarray, float, float]]:
    """Ridge LSQ toward (w0, b0); returns new (W, b) and held-out errors (fit, plain) or None.

    ``ridge=None`` picks the strength from RIDGES by the error on the held-back
    rows (one eigendecomposition serves every candidate), then refits on all
    rows with it: too weak over-fits a few hundred images, too strong forgets
    the removed channels, and the right point differs from layer to layer.
    """
    A = np.concatenate([rows, np.ones((rows.shape[0], 1), rows.dtype)], axis=1).astype(np.float64)
    Y = target.astype(np.float64)
    W0 = np.concatenate([w0, b0[:, None]], axis=1).astype(np.float64)  # [C_out, F+1]
    held = n_train < A.shape[0]
    At, Yt = A[:n_train], Y[:n_train]
    Av, Yv = (A[n_train:], Y[n_train:]) if held else (At, Yt)
    candidates = (RIDGES if held else (1e-3,)) if ridge is None else (ridge,)
    try:
        best = _ridge_path(At.T @ At, At.T @ Yt, W0, candidates, Av, Yv)
        if best is None:
            return None
        sol, err_fit, lam_rel = best
        if held and ridge is None:  # the chosen strength, refitted on every row
            refit = _ridge_path(A.T @ A, A.T @ Y, W0, (lam_rel,), Av, Yv)
            if refit is None:
                return None
            sol = refit[0]
    except np.linalg.LinAlgError:
        return None
    err_plain = float(((Av @ W0.T - Yv) ** 2).mean())
    return sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32), err_fit, err_plain


def _ridge_path(G: np.ndarray, AtY: np.ndarray, W0: np.ndarray, ridges, Av: np.ndarray, Yv: np.ndarray):
    """Solutions of (G + lam I) X = AtY + lam W0' for each relative ridge; the best on (Av, Yv)."""
    evals, Q = np.linalg.eigh(G)
    scale = float(np.trace(G)) / G.shape[0]
    best = None
    for r in ridges:
        lam = r * scale + 1e-12
        sol = Q @ ((Q.T @ (AtY + lam * W0.T)) / (evals + lam)[:, None])
        if not np.isfinite(sol).all():
            continue
        err = float(((Av @ sol - Yv) ** 2).mean())
        if best is None or err < best[1]:
            best = (sol, err, r)
    return best


def _sites(analysis: Analysis, removed: np.ndarray, pruned: onnx.ModelProto, scope: str) -> list[_Site]:
    """Consumer layers to re-fit, in the pruned model's topological order."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    pruned_order = [n.name for n in pruned.graph.node]
    sites = []
    started = False
    for name in pruned_order:
        node = nodes.get(name)
        if node is None or node.op not in ("Conv", "Gemm", "MatMul"):
            continue
        if node.op == "Conv" and (int(node.attrs.get("group", 1)) != 1 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")):
            continue
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            continue
        x = node.inputs[0].name
        if node.op == "MatMul" and name not in analysis.layers:
            continue
        keep_in = analysis.keep_mask(x, removed)
        changed = keep_in is not None and not keep_in.all()
        if changed:
            started = True
        if not changed and not (scope == "all" and started):
            continue
        out = node.outputs[0].name
        keep_out = analysis.keep_mask(out, removed)
        n_in = analysis.probe.shapes[x][analysis.labels[x].axis] if x in analysis.labels else None
        if keep_in is None:
            keep_in = np.ones(n_in if n_in else node.inputs[1].values.shape[1], dtype=bool)
        if keep_out is None:
            keep_out = np.ones(analysis.probe.shapes[out][1 if node.op != "MatMul" else -1], dtype=bool)
        sites.append(_Site(name, node.op, x, out, keep_in, keep_out))
    return sites


def _weights(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[np.ndarray, Optional[np.ndarray]]:
    inits = {t.name: t for t in model.graph.initializer}
    W = numpy_helper.to_array(inits[node.input[1]])
    B = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
    return W, B


def _set_weights(model: onnx.ModelProto, node: onnx.NodeProto, W: np.ndarray, B: np.ndarray) -> None:
    inits = {t.name: t for t in model.graph.initializer}
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(W.astype(np.float32), node.input[1]))
    if node.op_type == "MatMul":
        return
    if len(node.input) > 2 and node.input[2] in inits:
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(B.astype(np.float32), node.input[2]))
    else:
        name = f"{node.name}__bias"
        model.graph.initializer.append(numpy_helper.from_array(B.astype(np.float32), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name


def _as_matrix(op: str, node: onnx.NodeProto, W: np.ndarray) -> np.ndarray:
    """Weights as [C_out, features] in the row layout used by ``_rows``."""
    if op == "Conv":
        return W.reshape(W.shape[0], -1)
    if op == "Gemm":
        return W if _attr(node, "transB", 0) else W.T
    return W.T


def _from_matrix(op: str, node: onnx.NodeProto, M: np.ndarray, shape: tuple) -> np.ndarray:
    if op == "Conv":
        return M.reshape(shape)
    if op == "Gemm":
        return M if _attr(node, "transB", 0) else M.T
    return M.T


def _sample_positions(sites: list[_Site], first: dict, n_img: int, max_rows: int, rng) -> None:
    """Output positions each Conv site is fitted on, per sample (at most ``max_rows`` rows a layer)."""
    for s in sites:
        if s.op != "Conv":
            continue
        y = first[s.output]
        s.hw = y.shape[2] * y.shape[3]
        per = max(1, min(s.hw, max_rows // max(n_img, 1)))
        flat = np.stack([rng.choice(s.hw, per, replace=False) for _ in range(n_img)])
        s.positions = (flat // y.shape[3], flat % y.shape[3])


def recover(p, removed, pruned: onnx.ModelProto, calibration, mode: str = "lsq", *,
            scope: str = "pruned", max_rows: int = MAX_ROWS, ridge: float | None = None, seed: int = 0):
    """Return (recovered model, one-line summary). ``p`` is the Prepared original."""
    if mode == "auto":
        mode = "lsq"
    a: Analysis = p.analysis
    rem = np.array(sorted(removed), dtype=np.int64)
    sites = _sites(a, rem, pruned, scope)
    if not sites or not len(rem):
        return pruned, "nothing to recover"
    batches = [f for f, _ in calibration.batches()]
    n_img = sum(next(iter(f.values())).shape[0] for f in batches)
    n_train = max(1, int(round(n_img * 0.8))) if n_img >= 5 else n_img
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    pnodes = {n.name: n for n in model.graph.node}
    # one streamed pass of the original model: targets at sampled positions for least squares,
    # input means for bias compensation (each input once, however many sites read it)
    outputs = sorted({s.output for s in sites}) if mode == "lsq" else []
    inputs = sorted({s.input for s in sites}) if mode == "bias" else []
    targets: dict[str, list] = {s.node: [] for s in sites}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(inputs, 0)
    channel_axis = {s.input: (1 if s.op != "MatMul" else None) for s in sites}
    for b0, b1, out in _stream(a.proto, outputs + inputs, batches):
        if b0 == 0 and outputs:
            _sample_positions(sites, out, n_img, max_rows, rng)
        for s in sites if outputs else ():
            y = out[s.output]
            if s.op == "Conv":
                if y.shape[2] * y.shape[3] != s.hw:
                    raise CalibrationError("calibration samples of different spatial sizes cannot be re-fitted together")
                oy, ox = s.positions[0][b0:b1], s.positions[1][b0:b1]
                t = y[np.arange(b1 - b0)[:, None], :, oy, ox]  # [n, P, C]
                targets[s.node].append(t.reshape(-1, y.shape[1])[:, s.keep_out])
            else:
                targets[s.node].append(y.reshape(-1, y.shape[-1])[:, s.keep_out])
        for name in inputs:
            x = out[name]
            axis = channel_axis[name] if channel_axis[name] is not None else x.ndim - 1
            flat = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
            sums[name] = sums.get(name, 0.0) + flat.sum(1, dtype=np.float64)
            counts[name] += flat.shape[1]
        del out
    for s in sites:
        if outputs:
            s.target = np.concatenate(targets[s.node], axis=0)
        if inputs:
            s.in_mean = (sums[s.input] / max(counts[s.input], 1)).astype(np.float32)
    del targets
    fitted = kept_plain = 0
    for s in sites:
        node = pnodes[s.node]
        W, B = _weights(model, node)
        M = _as_matrix(s.op, node, W)
        b0 = B if B is not None else np.zeros(M.shape[0], np.float32)
        if mode == "bias":
            Wo = [t for t in a.graph.nodes if t.name == s.node][0].inputs[1].values
            Mo = _as_matrix(s.op, node, Wo)[s.keep_out]
            removed_in = ~s.keep_in
            if s.op == "Conv":
                k = Mo.shape[1] // s.keep_in.shape[0]
                contrib = Mo.reshape(Mo.shape[0], s.keep_in.shape[0], k)[:, removed_in, :].sum(2) @ s.in_mean[removed_in]
            else:
                per = Mo.shape[1] // s.keep_in.shape[0]
                contrib = Mo.reshape(Mo.shape[0], s.keep_in.shape[0], per)[:, removed_in, :].sum(2) @ s.in_mean[removed_in]
            _set_weights(model, node, W, b0 + contrib.astype(np.float32))
            fitted += 1
            continue
        parts = []
        for i0, i1, out in _stream(_prefix(model, s.input), [s.input], batches):
            x = out[s.input]
            if s.op == "Conv":
                parts.append(_conv_rows(x, node, W.shape, (s.positions[0][i0:i1], s.positions[1][i0:i1])))
            else:
                parts.append(x.reshape(-1, x.shape[-1]))
        rows = np.concatenate(parts, axis=0)
        del parts
        per_img = s.positions[0].shape[1] if s.op == "Conv" else rows.shape[0] // n_img
        res = _fit(rows, s.target, M, b0, n_train * per_img, ridge)
        if res is None or res[2] >= res[3]:
            kept_plain += 1
            continue
        M_new, b_new, _, _ = res
        _set_weights(model, node, _from_matrix(s.op, node, M_new, W.shape), b_new)
        fitted += 1
    what = "bias compensation" if mode == "bias" else "least-squares re-fit"
    return model, f"{what} of {fitted} layer(s)" + (f", {kept_plain} kept plain (fit not better on held-back data)" if kept_plain else "") + f", {n_img} calibration samples"
