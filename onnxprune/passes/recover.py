"""Recovery without retraining: bias compensation and least-squares reconstruction.

Before: a consumer layer L (Conv/Gemm/MatMul) lost some input channels; its
        output is off by what those channels contributed.
After (``bias``): L's bias absorbs the expected contribution of each removed
        channel, E[x_j] * sum(W[:, j]) (Nagel et al.'s bias correction idea,
        applied to removed channels).
After (``lsq``): L's remaining weights and bias are re-fitted by ridge least
        squares so that L's output, computed from the *pruned* model's
        activations, matches the *original* model's output at that point
        (He et al., ICCV 2017). A dropped residual branch (graph/depth.py)
        changes no channel count, so the layers that read the stream after it
        are re-fitted too. Layers are processed front to back, so each
        fit sees the errors of the layers before it. The ridge term pulls
        towards the plain sliced weights; its strength is chosen per layer
        on a held-back fifth of the calibration samples, and a fit is kept
        only when it beats the plain weights there (:mod:`onnxprune.lsq`).
        The target is asymmetric (pruned inputs, original outputs), so each
        fit also absorbs the error of the fits before it.
Residual targets (``target="residual"``, the default; ``"own"`` turns them
        off): when L's only consumer is an
        Add whose other addend r is computed before L (the skip path), L is
        fitted to the original *Add output* minus the pruned model's r, so
        that L also repairs the error carried on the residual stream (Kwon
        et al., NeurIPS 2022; El Halabi et al., NeurIPS 2022). Every other
        layer keeps its own output as the target. Measured (same plans):
        ResNet-56 81.7% -> 82.5% at 70% of the MACs, 76.0% -> 78.5% at
        50%; EfficientNet-Lite0 50.8% -> 55.6% at 70% (RESULTS.md).

:class:`RecoverPass` is the same as a :class:`~onnxprune.passes.base.Pass`;
recovery is inexact by design, so its ``ensures`` checks structure and
finite outputs, not equality.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import VerificationError
from ..graph.analysis import Analysis
from ..graph.layout import as_matrix, from_matrix, node_attrs
from ..graph.subgraph import prefix
from ..lsq import Site, fit_samples, fit_toward, stream
from ..runtime import make_session
from .verify import check_structure
from .base import Pass, PassResult

logger = logging.getLogger(__name__)

MAX_ROWS = 20000
TARGETS = ("own", "residual")
DEFAULT_TARGET = "residual"  # measured better on ResNet-56 and EfficientNet-Lite0 (benchmarks/recovery_targets.py)


@dataclass(kw_only=True)
class _Site(Site):
    """One layer to re-fit (:class:`onnxprune.lsq.Site`): the channels it keeps, the original targets at its
    sampled rows, its input means (bias compensation), the skip path it repairs."""

    keep_in: np.ndarray
    keep_out: np.ndarray
    target: Optional[np.ndarray] = None
    in_mean: Optional[np.ndarray] = None
    residual: Optional[str] = None  # the other addend of the Add the layer feeds (residual targets)
    add_output: Optional[str] = None  # that Add's output: the original value the fit aims at

    @property
    def aim(self) -> str:
        """The original tensor the fit's target comes from."""
        return self.add_output or self.output


def _sites(analysis: Analysis, removed: np.ndarray, pruned: onnx.ModelProto, scope: str) -> list[_Site]:
    """Consumer layers to re-fit, in the pruned model's topological order."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    after_drop = _after_dropped_branches(analysis, removed, pruned)
    sites = []
    started = False
    for name in (n.name for n in pruned.graph.node):
        node = nodes.get(name)
        if node is None or node.op not in ("Conv", "Gemm", "MatMul"):
            continue
        if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1:
            continue
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            continue
        x = node.inputs[0].name
        if node.op == "MatMul" and name not in analysis.layers:
            continue
        keep_in = analysis.keep_mask(x, removed)
        changed = (keep_in is not None and not keep_in.all()) or name in after_drop
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
        sites.append(_Site(node=name, op=node.op, attrs=dict(node.attrs), input=x, output=out, keep_in=keep_in,
                           keep_out=keep_out))
    return sites


def _residual_addends(analysis: Analysis, pruned: onnx.ModelProto, sites: list[_Site]) -> None:
    """Mark the sites whose output goes only into an Add with a skip path computed before them.

    The other addend must be a run-time tensor of the same shape (no
    broadcast, no constant) produced earlier in the topological order, so it
    cannot depend on the site's own output and is final when the site is
    fitted.
    """
    nodes = list(pruned.graph.node)
    order = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    outputs = {o.name for o in pruned.graph.output}
    shapes = analysis.probe.shapes
    for s in sites:
        users = readers.get(s.output, [])
        if len(users) != 1 or s.output in outputs or users[0].op_type != "Add" or len(users[0].input) != 2:
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == s.output else add.input[0]
        if other == s.output or other not in order or order[other] > order[s.output]:
            continue
        if shapes.get(other) is None or tuple(shapes.get(other)) != tuple(shapes.get(s.output, ())) \
                or tuple(shapes.get(add.output[0], ())) != tuple(shapes[other]):
            continue
        s.residual, s.add_output = other, add.output[0]


def _after_dropped_branches(analysis: Analysis, removed: np.ndarray, pruned: onnx.ModelProto) -> set[str]:
    """Layers that read a residual stream after a dropped branch (through non-layer ops): they see its error."""
    adds = {a for g in analysis.dropped_groups(removed) for a, _ in analysis.drops[g].adds}
    if not adds:
        return set()
    affected: set[str] = set()
    layers: set[str] = set()
    for node in pruned.graph.node:
        if node.name in adds:
            affected.update(node.output)
        elif any(i in affected for i in node.input):
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                layers.add(node.name)
            else:
                affected.update(node.output)
    return layers


def _weights(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[np.ndarray, Optional[np.ndarray]]:
    inits = {t.name: t for t in model.graph.initializer}
    W = numpy_helper.to_array(inits[node.input[1]])
    B = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
    return W, B


def _set_weights(model: onnx.ModelProto, node: onnx.NodeProto, W: np.ndarray, B: np.ndarray) -> None:
    """Store the re-fitted weights in the layer's own dtype (the fit is float32/64; a float16 model stays float16)."""
    inits = {t.name: t for t in model.graph.initializer}
    dtype = helper.tensor_dtype_to_np_dtype(inits[node.input[1]].data_type)
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(W.astype(dtype), node.input[1]))
    if node.op_type == "MatMul":
        return
    if len(node.input) > 2 and node.input[2] in inits:
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(B.astype(dtype), node.input[2]))
    else:
        name = f"{node.name}__bias"
        model.graph.initializer.append(numpy_helper.from_array(B.astype(dtype), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name


def _gather(a: Analysis, sites: list[_Site], batches: list, n_img: int, mode: str, max_rows: int, rng) -> None:
    """One streamed pass of the original model: targets at sampled positions for least squares,
    input means for bias compensation (each input once, however many sites read it)."""
    outputs = sorted({s.aim for s in sites}) if mode == "lsq" else []
    inputs = sorted({s.input for s in sites}) if mode == "bias" else []
    targets: dict[str, list] = {s.node: [] for s in sites}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(inputs, 0)
    channel_axis = {s.input: (1 if s.op != "MatMul" else None) for s in sites}
    for b0, b1, out in stream(a.proto, outputs + inputs, batches):
        if b0 == 0 and outputs:  # output positions each Conv site is fitted on, at most max_rows rows a layer
            for s in sites:
                if s.op == "Conv":
                    s.sample_per_sample(out[s.aim], n_img, max_rows, rng)
        for s in sites if outputs else ():
            targets[s.node].append(s.targets(out[s.aim], b0)[:, s.keep_out])
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


def _bias_shift(a: Analysis, s: _Site, attrs: dict) -> np.ndarray:
    """E[x_j] * sum(W[:, j]) over the removed inputs j, per kept output channel."""
    original = next(t for t in a.graph.nodes if t.name == s.node).inputs[1].values
    m = as_matrix(s.op, attrs, original)[s.keep_out]
    per = m.shape[1] // s.keep_in.shape[0]  # kernel taps of a Conv, 1 for Gemm/MatMul
    removed_in = ~s.keep_in
    return (m.reshape(m.shape[0], s.keep_in.shape[0], per)[:, removed_in, :].sum(2) @ s.in_mean[removed_in]
            ).astype(np.float32)


def _recover(p, removed, pruned: onnx.ModelProto, calibration, mode: str, scope: str, max_rows: int,
             ridge: Optional[float], seed: int, target: str = DEFAULT_TARGET) -> tuple[onnx.ModelProto, str, int]:
    if mode in ("auto", "distill"):  # distillation starts from the least-squares weights
        mode = "lsq"
    if target not in TARGETS:
        raise ValueError(f"unknown least-squares target {target!r}; choose one of {', '.join(TARGETS)}")
    a: Analysis = p.analysis
    rem = np.array(sorted(removed), dtype=np.int64)
    sites = _sites(a, rem, pruned, scope)
    if not sites or not len(rem):
        return pruned, "nothing to recover", 0
    if mode == "lsq" and target == "residual":
        _residual_addends(a, pruned, sites)
    batches = [f for f, _ in calibration.batches()]
    n_img = sum(next(iter(f.values())).shape[0] for f in batches)
    n_train = fit_samples(n_img)
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    pnodes = {n.name: n for n in model.graph.node}
    _gather(a, sites, batches, n_img, mode, max_rows, np.random.default_rng(seed))
    fitted = kept_plain = 0
    for s in sites:
        node = pnodes[s.node]
        attrs = node_attrs(node)
        W, B = _weights(model, node)
        M = as_matrix(s.op, attrs, W)
        b0 = B if B is not None else np.zeros(M.shape[0], np.float32)
        if mode == "bias":
            _set_weights(model, node, W, b0 + _bias_shift(a, s, attrs))
            fitted += 1
            continue
        parts, skip = [], []
        names = [s.input] + ([s.residual] if s.residual else [])
        for i0, _, out in stream(prefix(model, names), names, batches):
            parts.append(s.rows(out[s.input], W.shape, i0))
            if s.residual:  # the pruned model's skip path, already carrying the upstream error
                skip.append(s.targets(out[s.residual], i0))
        rows = np.concatenate(parts, axis=0)
        del parts
        aim = s.target - np.concatenate(skip, axis=0) if skip else s.target
        fit = fit_toward(rows, aim, M, b0, s.rows_before(n_train, 0, n_img, rows.shape[0]), ridge)
        if fit is None or not fit.improves:
            kept_plain += 1
            continue
        _set_weights(model, node, from_matrix(s.op, attrs, fit.weight, W.shape), fit.bias)
        fitted += 1
    what = "bias compensation" if mode == "bias" else "least-squares re-fit"
    summary = (f"{what} of {fitted} layer(s)"
               + (f", {kept_plain} kept plain (fit not better on held-back data)" if kept_plain else "")
               + f", {n_img} calibration samples")
    return model, summary, fitted


def recover(p, removed, pruned: onnx.ModelProto, calibration, mode: str = "lsq", *,
            scope: str = "pruned", max_rows: int = MAX_ROWS, ridge: float | None = None, seed: int = 0,
            target: str = DEFAULT_TARGET):
    """Return (recovered model, one-line summary). ``p`` is the Prepared original.

    ``mode`` is ``lsq`` (or ``auto``) or ``bias``; ``scope="all"`` also
    re-fits the layers after the first changed one, which see its error.
    ``ridge`` fixes the relative ridge strength instead of choosing it.
    ``target``: ``own`` (each layer's original output) or ``residual``
    (layers feeding a residual Add aim at its original output minus the
    pruned skip path).
    """
    model, summary, _ = _recover(p, removed, pruned, calibration, mode, scope, max_rows, ridge, seed, target)
    return model, summary


@dataclass(frozen=True)
class RecoverResult(PassResult):
    """The re-fitted model: how many layers were re-fitted, by which method (``lsq`` or ``bias``), on how many
    calibration rows; the one-line summary is the first note."""

    layers: int = 0
    method: str = "lsq"
    rows: int = 0


class RecoverPass(Pass):
    """Re-fit the layers whose inputs lost channels so that the pruned model's outputs move back."""

    name = "recover"

    def __init__(self, prepared: Any, removed: Iterable[int], calibration: Any, mode: str = "lsq",
                 scope: str = "pruned", target: str = DEFAULT_TARGET) -> None:
        self.prepared = prepared
        self.removed = sorted(int(r) for r in removed)
        self.calibration = calibration
        self.mode = mode
        self.scope = scope
        self.target = target

    def call(self, model: onnx.ModelProto) -> "RecoverResult":
        recovered, summary, fitted = _recover(self.prepared, self.removed, model, self.calibration, self.mode,
                                              self.scope, MAX_ROWS, None, 0, self.target)
        method = "bias" if self.mode == "bias" else "lsq"
        return RecoverResult(recovered, modified=fitted > 0, notes=(summary,), layers=fitted, method=method,
                             rows=len(self.calibration) if self.calibration is not None else 0)

    def ensures(self, before: onnx.ModelProto, result: PassResult) -> PassResult:
        """The re-fitted model is a valid ONNX model whose outputs are finite on real data."""
        if result.modified:
            check_refitted(self, result.model, self.calibration, "the re-fit")
        return result


def check_refitted(step: Pass, model: onnx.ModelProto, calibration: Any, after: str) -> None:
    """Raise ``step``'s PostconditionError unless ``model`` passes the checker and strict shape inference and
    gives finite outputs on the first calibration batch (what an inexact weight change must keep)."""
    try:
        check_structure(model)
    except VerificationError as exc:
        raise step.fail_post(str(exc)) from None
    feeds = next((f for f, _ in calibration.batches()), None)
    if feeds is not None:
        session = make_session(model)
        for out, value in zip(session.get_outputs(), session.run(None, feeds)):
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise step.fail_post(f"output {out.name!r} is not finite on a calibration batch after {after}")
