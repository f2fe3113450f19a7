"""Least-squares re-fit of the surviving weights, the training-free stand-in for fine-tuning.

After a pruning step, each layer's surviving weights (and its bias) are
solved again so that the layer, fed with the *sparsified* model's own
activations, reproduces the *original* model's layer output:

    min_w  || A_S w + b - y ||^2 + lam * || [w; b] - [w0_S; b0] ||^2

per output channel, where S is the channel's mask support, A the layer input
(im2col patches for Conv, at a bounded sample of positions), y the original
output and w0 the original weights: the ridge pulls toward them, not toward
zero, so a badly conditioned fit cannot wreck a layer. A layer keeps its
plain masked weights when the fit is worse on images held back from it.

Layers are processed front to back. The sparsified model is evaluated in
segments, one per layer, from cached activations, so a step costs about one
forward pass over the calibration samples instead of one pass per layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import onnx
from onnx import helper

from ..calibration import model_input_shapes, open_calibration
from ..errors import CalibrationError
from ..runtime import make_session
from .config import SparsifyConfig
from .weights import ConstantIndex, WeightRef, read_weight, write_weights

logger = logging.getLogger(__name__)

# Arrays, a dict of arrays, an .npz/.npy path or image folder, a reader with get_next(), an iterable of dicts.
CalibrationData = Union[np.ndarray, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]], str, os.PathLike, Any]

_CAPTURE_BATCH = 16
_GATHER_BUDGET = 1 << 25  # float32 values of im2col rows held at once (128 MiB)
_BATCHED_SOLVE_MAX = 64  # systems up to this size are solved in one batched call


def collect_calibration(data: CalibrationData, model: onnx.ModelProto, max_samples: int) -> dict[str, np.ndarray]:
    """Up to ``max_samples`` samples per model input, read once and concatenated.

    Anything ``open_calibration`` accepts works (arrays, an ``.npz``, a folder
    of images, an onnxruntime ``CalibrationDataReader``, an iterable of feed
    dicts); its reader checks every batch against the model's inputs.
    """
    reader = open_calibration(data, model_input_shapes(model), limit=max_samples)
    parts: dict[str, list[np.ndarray]] = {}
    while True:
        batch = reader.get_next()
        if batch is None:
            break
        for name, value in batch.items():
            parts.setdefault(name, []).append(np.asarray(value))
    if not parts:
        raise CalibrationError("calibration data is empty: give at least one sample per model input")
    return {name: np.concatenate(values) for name, values in parts.items()}


@dataclass
class _Layer:
    """A layer the re-fit can solve, and its sampled rows and original outputs."""

    ref: WeightRef
    node_index: int
    kind: str  # conv | gemm | matmul
    x_name: str
    y_name: str
    bias_name: str | None = None  # fitted bias tensor
    fixed_bias: np.ndarray | None = None  # constant bias that stays
    bias_scale: float = 1.0  # Gemm's beta
    alpha: float = 1.0  # Gemm's alpha
    trans_b: bool = False
    rows_n: np.ndarray | None = None  # sample index of each sampled row
    rows_p: np.ndarray | None = None  # position index within the sample
    out_hw: tuple[int, int] = (1, 1)
    conv_attrs: dict[str, Any] | None = None
    targets: np.ndarray | None = None  # [rows, out channels]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class Refitter:
    """Re-fits layers of a sparsified model against the outputs of the original."""

    def __init__(self, original: onnx.ModelProto, refs: list[WeightRef], calibration: Mapping[str, np.ndarray],
                 config: SparsifyConfig) -> None:
        self.config = config
        self.calibration = dict(calibration)
        self.samples = len(next(iter(self.calibration.values())))
        self.hold_from = self.samples - int(round(config.refit_holdout * self.samples))
        if self.hold_from <= 0:
            self.hold_from = self.samples
        self.rng = np.random.default_rng(config.seed + 7919)
        self.skipped: dict[str, str] = {}
        self.layers: list[_Layer] = []
        self.original_weights: dict[str, np.ndarray] = {}
        self.original_bias: dict[str, np.ndarray] = {}
        consts = ConstantIndex(original)
        use_count: dict[str, int] = {}
        for node in original.graph.node:
            for name in node.input:
                use_count[name] = use_count.get(name, 0) + 1
        for ref in refs:
            layer = self._plan(original, ref, consts, use_count)
            if layer is not None:
                self.layers.append(layer)
                self.original_weights[ref.name] = read_weight(original, ref)
        self._capture_targets(original)

    # -- planning -------------------------------------------------------------
    def _plan(self, model: onnx.ModelProto, ref: WeightRef, consts: ConstantIndex,
              use_count: Mapping[str, int]) -> _Layer | None:
        if ref.shared or use_count.get(ref.name, 0) > 1:
            self.skipped[ref.name] = "weight shared by several nodes"
            return None
        index, slot = ref.consumers[0]
        node = model.graph.node[index]
        attrs = _attrs(node)
        kind = {"Conv": "conv", "Gemm": "gemm", "MatMul": "matmul"}.get(node.op_type)
        if kind is None:
            self.skipped[ref.name] = f"no re-fit for {node.op_type}"
            return None
        if kind == "conv" and len(ref.shape) != 4:
            self.skipped[ref.name] = "only 2-D convolutions are re-fitted"
            return None
        if slot != 1 or (kind == "matmul" and len(ref.shape) != 2):
            self.skipped[ref.name] = "weight is not the right-hand 2-D operand"
            return None
        if kind == "gemm" and attrs.get("transA", 0):
            self.skipped[ref.name] = "Gemm with transA"
            return None
        layer = _Layer(ref=ref, node_index=index, kind=kind, x_name=node.input[0], y_name=node.output[0],
                       conv_attrs=attrs if kind == "conv" else None)
        if kind == "gemm":
            layer.alpha = float(attrs.get("alpha", 1.0))
            layer.bias_scale = float(attrs.get("beta", 1.0))
            layer.trans_b = bool(attrs.get("transB", 0))
        bias_slot = 2
        if len(node.input) > bias_slot and node.input[bias_slot]:
            bias = node.input[bias_slot]
            out_channels = ref.shape[0] if kind == "conv" else (ref.shape[0] if layer.trans_b else ref.shape[1])
            if bias not in consts:
                self.skipped[ref.name] = "bias is not a constant"
                return None
            bias_ref = _constant_ref(model, bias, consts)
            value = read_weight(model, bias_ref)
            if value.size != out_channels:
                self.skipped[ref.name] = "bias is not one value per output channel"
                return None
            if use_count.get(bias, 0) > 1 or value.dtype != np.float32:
                layer.fixed_bias = value.reshape(-1).astype(np.float64) * layer.bias_scale
            else:
                layer.bias_name = bias
                self.original_bias[ref.name] = value.reshape(-1).astype(np.float64) * layer.bias_scale
        return layer

    # -- original outputs -----------------------------------------------------
    def _capture_targets(self, original: onnx.ModelProto) -> None:
        if not self.layers:
            return
        probe = onnx.ModelProto()
        probe.CopyFrom(original)
        present = {o.name for o in probe.graph.output}
        for layer in self.layers:
            if layer.y_name not in present:
                probe.graph.output.append(onnx.ValueInfoProto(name=layer.y_name))
                present.add(layer.y_name)
        session = make_session(probe)
        names = [o.name for o in session.get_outputs()]
        batch = _CAPTURE_BATCH
        fixed = [dims[0] for dims in model_input_shapes(original).values()
                 if dims and isinstance(dims[0], int) and dims[0] > 0]
        if fixed:
            batch = min(fixed)
        parts: dict[str, list[np.ndarray]] = {layer.ref.name: [] for layer in self.layers}
        for start in range(0, self.samples, batch):
            feeds = {k: v[start:start + batch] for k, v in self.calibration.items()}
            try:
                outputs = dict(zip(names, session.run(None, feeds)))
            except Exception as exc:  # onnxruntime raises its own exception classes
                raise CalibrationError(f"the model does not run on the calibration data: {str(exc)[:300]}") from None
            fed = len(next(iter(feeds.values())))
            for layer in self.layers:
                if layer.ref.name in self.skipped:
                    continue
                out = outputs[layer.y_name]
                if out.ndim < 2 or out.shape[0] != fed:
                    # Rows must map to samples (a Reshape that folds time into the batch breaks that).
                    self.skipped[layer.ref.name] = f"output {list(out.shape)} does not lead with the batch axis"
                    continue
                if layer.rows_n is None:
                    self._sample_rows(layer, out)
                sel = (layer.rows_n >= start) & (layer.rows_n < start + fed)
                parts[layer.ref.name].append(self._rows_of_output(layer, out, layer.rows_n[sel] - start,
                                                                  layer.rows_p[sel]))
        self.layers = [layer for layer in self.layers if layer.ref.name not in self.skipped]
        for layer in self.layers:
            # float32 keeps the targets of a large model in memory; the solves are in float64.
            layer.targets = np.concatenate(parts[layer.ref.name]).astype(np.float32)

    def _sample_rows(self, layer: _Layer, out: np.ndarray) -> None:
        if layer.kind == "conv":
            layer.out_hw = (int(out.shape[2]), int(out.shape[3]))
            per_sample = layer.out_hw[0] * layer.out_hw[1]
        else:
            per_sample = int(np.prod(out.shape[1:-1], dtype=np.int64)) if out.ndim > 2 else 1
        total = self.samples * per_sample
        count = min(self.config.refit_rows, total)
        flat = np.sort(self.rng.choice(total, size=count, replace=False))
        layer.rows_n = flat // per_sample
        layer.rows_p = flat % per_sample

    @staticmethod
    def _rows_of_output(layer: _Layer, out: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
        if layer.kind == "conv":
            return out.reshape(out.shape[0], out.shape[1], -1)[n, :, p]
        return out.reshape(out.shape[0], -1, out.shape[-1])[n, p, :]

    # -- the fit --------------------------------------------------------------
    def refit(self, model: onnx.ModelProto, masks: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Re-fit every plannable layer of ``model`` (in place); returns a status per weight."""
        status = {name: f"skipped: {why}" for name, why in self.skipped.items()}
        forward = _SegmentForward(model, self.calibration)
        for layer in self.layers:
            if layer.ref.name not in masks:
                continue
            x = forward.compute(layer.x_name)
            if x.shape[0] != self.samples:
                status[layer.ref.name] = f"skipped: input {list(x.shape)} does not lead with the batch axis"
                continue
            ref = layer.ref
            current = read_weight(model, ref)
            mask = np.asarray(masks[layer.ref.name], dtype=bool)
            bias_ref = _constant_ref(model, layer.bias_name, ConstantIndex(model)) if layer.bias_name else None
            bias = (read_weight(model, bias_ref).reshape(-1).astype(np.float64) * layer.bias_scale
                    if bias_ref is not None else None)
            new_w, new_b, err_plain, err_fit = self._fit_layer(layer, x, current, mask, bias)
            if err_fit < err_plain:
                write_weights(model, [ref], {ref.name: new_w.astype(np.float32)})
                if bias_ref is not None and new_b is not None:
                    shape = bias_ref.shape
                    write_weights(model, [bias_ref],
                                  {bias_ref.name: (new_b / layer.bias_scale).astype(np.float32).reshape(shape)})
                status[layer.ref.name] = f"re-fitted (held-back error {_ratio(err_fit, err_plain)} of masked)"
            else:
                status[layer.ref.name] = f"kept masked (fit worse on held-back rows: {_ratio(err_fit, err_plain)})"
        return status

    def _fit_layer(self, layer: _Layer, x: np.ndarray, weight: np.ndarray, mask: np.ndarray,
                   bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, float, float]:
        # Rows are sorted by sample, so the fit rows are a prefix and the held-back ones the rest.
        n_fit = int(np.count_nonzero(layer.rows_n < self.hold_from))
        fit = slice(0, n_fit)
        hold = slice(n_fit, None) if n_fit < len(layer.rows_n) else fit
        targets = layer.targets
        if layer.fixed_bias is not None:
            targets = targets - layer.fixed_bias[None, :]
        orig_w = self.original_weights[layer.ref.name]
        orig_b = self.original_bias.get(layer.ref.name)
        new_w = weight.copy()
        new_b = None if bias is None else bias.copy()
        err_plain = 0.0
        err_fit = 0.0
        for rows, out_ch, w3, m3, w0 in self._groups(layer, x, weight, mask, orig_w):
            y = np.ascontiguousarray(targets[:, out_ch].transpose(1, 0, 2))  # [groups, rows, out per group]
            b = None if bias is None else bias[out_ch]
            b0 = None if orig_b is None else orig_b[out_ch]
            w_fit, b_fit = _ridge_fit(rows[:, fit], y[:, fit], m3, w0 * m3, b0, self.config.refit_ridge)
            err_plain += _sq_error(rows[:, hold], y[:, hold], w3, b)
            err_fit += _sq_error(rows[:, hold], y[:, hold], w_fit, b_fit)
            _put_groups(layer, new_w, out_ch, w_fit)
            if new_b is not None and b_fit is not None:
                new_b[out_ch] = b_fit
        return new_w, new_b, err_plain, err_fit

    def _groups(self, layer: _Layer, x: np.ndarray, weight: np.ndarray, mask: np.ndarray, orig: np.ndarray
                ) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Independent groups of the layer, a batch at a time, as
        (input rows [g, R, D], output channels [g, Mg], weight / mask / original weight [g, Mg, D])."""
        n, p = layer.rows_n, layer.rows_p
        if layer.kind in ("gemm", "matmul"):
            if layer.kind == "gemm":
                rows = x.reshape(x.shape[0], -1)[n].astype(np.float32) * np.float32(layer.alpha)
                flip = not layer.trans_b
            else:
                rows = x.reshape(x.shape[0], -1, x.shape[-1])[n, p, :].astype(np.float32)
                flip = True
            w2d, m2d, o2d = (weight.T, mask.T, orig.T) if flip else (weight, mask, orig)
            yield (rows[None], np.arange(w2d.shape[0])[None], w2d[None].astype(np.float64), m2d[None],
                   o2d[None].astype(np.float64))
            return
        group, strides, dilations, pads = conv_geometry(layer.conv_attrs or {}, layer.ref.shape, x.shape)
        out_ch, in_per_group, kh, kw = weight.shape
        samples, channels, height, width = x.shape
        oh = p // layer.out_hw[1]
        ow = p % layer.out_hw[1]
        # Pixels as rows (channels last) plus one zero row that every tap in the padding reads:
        # each sampled tap is then a single contiguous row read.
        pixels = np.empty((samples * height * width + 1, channels), dtype=np.float32)
        pixels[:-1] = x.transpose(0, 2, 3, 1).reshape(-1, channels)
        pixels[-1] = 0.0
        ii = (oh * strides[0] - pads[0])[:, None] + np.arange(kh) * dilations[0]  # [R, kh]
        jj = (ow * strides[1] - pads[1])[:, None] + np.arange(kw) * dilations[1]  # [R, kw]
        taps = []
        for a in range(kh):
            for b in range(kw):
                i, j = ii[:, a], jj[:, b]
                flat = (n * height + i) * width + j
                flat[(i < 0) | (i >= height) | (j < 0) | (j >= width)] = pixels.shape[0] - 1
                taps.append(flat)
        out_per_group = out_ch // group
        depth = in_per_group * kh * kw
        chunk = max(1, _GATHER_BUDGET // max(len(n) * depth, 1))  # groups gathered at once
        for g0 in range(0, group, chunk):
            g1 = min(group, g0 + chunk)
            cols = np.empty((len(n), (g1 - g0) * in_per_group, kh * kw), dtype=np.float32)
            for t, flat in enumerate(taps):
                cols[:, :, t] = pixels[flat, g0 * in_per_group:g1 * in_per_group]
            rows = np.ascontiguousarray(cols.reshape(len(n), g1 - g0, depth).transpose(1, 0, 2))
            oc = np.arange(g0 * out_per_group, g1 * out_per_group).reshape(g1 - g0, out_per_group)
            shape3 = (g1 - g0, out_per_group, depth)
            yield (rows, oc, weight[oc.ravel()].reshape(shape3).astype(np.float64), mask[oc.ravel()].reshape(shape3),
                   orig[oc.ravel()].reshape(shape3).astype(np.float64))


def conv_geometry(attrs: Mapping[str, Any], w_shape: tuple[int, ...], x_shape: tuple[int, ...]
                  ) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """group, strides, dilations, pads (top, left, bottom, right) of a 2-D Conv on an input of ``x_shape``."""
    group = int(attrs.get("group", 1))
    strides = tuple(attrs.get("strides", [1, 1]))
    dilations = tuple(attrs.get("dilations", [1, 1]))
    _, _, kh, kw = w_shape
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(x_shape[2:], (kh, kw), strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            pads.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        pad4 = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    elif auto_pad == "VALID":
        pad4 = (0, 0, 0, 0)
    else:
        pad4 = tuple(attrs.get("pads", [0, 0, 0, 0]))
    return group, strides, dilations, pad4


def _ridge_fit(rows: np.ndarray, y: np.ndarray, mask: np.ndarray, w0: np.ndarray, b0: np.ndarray | None,
               ridge: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Ridge least squares per output channel on its mask support, pulled toward (w0, b0).

    rows [g, R, D], y [g, R, Mg], mask / w0 [g, Mg, D], b0 [g, Mg]. Per group
    g, H = A'A + lam*I with lam = ridge * mean(diag(A'A)); each channel solves
    H_SS x_S = (A'y + lam*prior)_S on its support S and is 0 elsewhere. Small
    systems (depthwise) go in one batched call; large ones solve on S, or,
    when fewer weights are pruned than kept, through H^-1 and the pruned set
    P only (x = H^-1 r - H^-1[:, P] (H^-1[P, P])^-1 (H^-1 r)[P]), which is
    the same solution at a fraction of the cost at low sparsity.
    """
    groups, _, dim = rows.shape
    with_bias = b0 is not None
    size = dim + int(with_bias)
    rows_t = rows.transpose(0, 2, 1)
    gram = np.zeros((groups, size, size))
    gram[:, :dim, :dim] = np.matmul(rows_t, rows)  # float32 products, the bulk of the cost
    rhs = np.zeros((groups, size, y.shape[2]))
    rhs[:, :dim] = np.matmul(rows_t, y.astype(np.float32))
    keep = mask.astype(np.float64)
    prior = w0
    if with_bias:
        sums = rows.sum(axis=1, dtype=np.float64)
        gram[:, dim, :dim] = sums
        gram[:, :dim, dim] = sums
        gram[:, dim, dim] = rows.shape[1]
        rhs[:, dim] = y.sum(axis=1, dtype=np.float64)
        keep = np.concatenate([keep, np.ones(keep.shape[:2] + (1,))], axis=2)
        prior = np.concatenate([w0, np.asarray(b0, dtype=np.float64)[..., None]], axis=2)
    mean_diag = np.diagonal(gram, axis1=1, axis2=2)[:, :dim].mean(axis=1)  # [g]
    lam = ridge * mean_diag + 1e-9 * (1.0 + mean_diag)
    idx = np.arange(size)
    gram[:, idx, idx] += lam[:, None]  # gram is H from here on
    target = (rhs.transpose(0, 2, 1) + lam[:, None, None] * prior) * keep  # [g, Mg, size]
    if size <= _BATCHED_SOLVE_MAX:
        # Pruned coordinates become identity rows with a zero right-hand side: they solve to 0.
        lhs = gram[:, None] * keep[..., :, None] * keep[..., None, :]
        lhs[..., idx, idx] += 1.0 - keep
        return _split(np.linalg.solve(lhs, target[..., None])[..., 0] * keep, dim, with_bias)
    sol = np.zeros_like(target)
    for g in range(groups):
        inverse = None
        for o in range(keep.shape[1]):
            support = np.flatnonzero(keep[g, o])
            pruned = np.flatnonzero(keep[g, o] == 0)
            if support.size == 0:
                continue
            if pruned.size < support.size:
                if inverse is None:
                    inverse = np.linalg.inv(gram[g])
                    free = inverse @ target[g].T  # unconstrained solutions of every channel, [size, Mg]
                x = free[:, o].copy()
                if pruned.size:
                    x -= inverse[:, pruned] @ np.linalg.solve(inverse[np.ix_(pruned, pruned)], x[pruned])
                    x[pruned] = 0.0
                sol[g, o] = x
            else:
                lhs = gram[g][np.ix_(support, support)]
                try:
                    sol[g, o, support] = np.linalg.solve(lhs, target[g, o, support])
                except np.linalg.LinAlgError:
                    sol[g, o, support] = np.linalg.lstsq(lhs, target[g, o, support], rcond=None)[0]
    return _split(sol, dim, with_bias)


def _split(sol: np.ndarray, dim: int, with_bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    return sol[..., :dim], (sol[..., dim] if with_bias else None)


def _sq_error(rows: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> float:
    pred = np.matmul(rows.astype(np.float64), w.transpose(0, 2, 1))
    if b is not None:
        pred += b[:, None, :]
    return float(np.sum((pred - y) ** 2))


def _put_groups(layer: _Layer, weight: np.ndarray, out_ch: np.ndarray, w3: np.ndarray) -> None:
    if layer.kind == "conv":
        weight[out_ch.ravel()] = w3.reshape((out_ch.size,) + weight.shape[1:])
    elif layer.kind == "gemm" and layer.trans_b:
        weight[out_ch[0]] = w3[0]
    else:  # gemm without transB, matmul: weight is [in, out]
        weight[:, out_ch[0]] = w3[0].T


def _ratio(err_fit: float, err_plain: float) -> str:
    return f"{err_fit / err_plain:.3f}x" if err_plain > 0 else "n/a"


def _constant_ref(model: onnx.ModelProto, name: str, consts: ConstantIndex) -> WeightRef:
    """A WeightRef for any constant (a bias), so the weight readers and writers apply."""
    source = consts.source(name)
    const_node = consts.constants.get(name)
    if source == "constant":
        node = model.graph.node[const_node]
        if any(a.name == "sparse_value" for a in node.attribute):
            source = "constant_sparse"
    ref = WeightRef(name=name, source=source or "initializer", shape=(), consumers=(), op_types=(), node_names=(),
                    order=0, out_axis=0, constant_node=const_node)
    shape = read_weight(model, ref).shape
    return WeightRef(name=name, source=ref.source, shape=tuple(shape), consumers=(), op_types=(), node_names=(),
                     order=0, out_axis=0, constant_node=const_node)


class _SegmentForward:
    """Evaluates a model piece by piece from cached activations.

    ``compute(t)`` runs only the nodes between what is cached and ``t``, and
    keeps every tensor a later node still needs; the weights are read from
    the model at each call, so a layer re-fitted a moment ago is used.
    """

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.values: dict[str, np.ndarray] = dict(feeds)
        self.done: set[int] = set()
        graph = model.graph
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, set[int]] = {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for name in list(node.input) + _implicit_inputs(node):
                if name:
                    self.consumers.setdefault(name, set()).add(i)
        self.graph_outputs = {o.name for o in graph.output}

    def compute(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        graph = self.model.graph
        init_names = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
        nodes: set[int] = set()
        feeds: set[str] = set()
        stack = [name]
        seen: set[str] = set()
        while stack:
            tensor = stack.pop()
            if not tensor or tensor in seen:
                continue
            seen.add(tensor)
            if tensor in self.values:
                feeds.add(tensor)
                continue
            if tensor in init_names:
                continue
            producer = self.producer.get(tensor)
            if producer is None:
                raise CalibrationError(f"tensor {tensor!r} is neither computed nor fed; the graph input is missing")
            if producer in nodes:
                continue
            nodes.add(producer)
            stack.extend(graph.node[producer].input)
            stack.extend(_implicit_inputs(graph.node[producer]))
        order = sorted(nodes)
        produced = [out for i in order for out in graph.node[i].output if out]
        keep = [name] + [
            t for t in produced
            if t != name and graph.node[self.producer[t]].op_type != "Constant"
            and any(c not in nodes and c not in self.done for c in self.consumers.get(t, ()))
        ]
        sub = self._submodel(order, sorted(feeds), keep)
        session = make_session(sub)
        try:
            results = session.run(keep, {f: self.values[f] for f in feeds})
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise CalibrationError(f"cannot evaluate the model on the calibration data: {str(exc)[:300]}") from None
        self.done.update(order)
        for tensor, value in zip(keep, results):
            self.values[tensor] = value
        out = self.values[name]
        for tensor in list(self.values):
            users = self.consumers.get(tensor, set())
            if tensor != name and users and users <= self.done:
                del self.values[tensor]
        return out

    def _submodel(self, order: list[int], feeds: list[str], outputs: list[str]) -> onnx.ModelProto:
        graph = self.model.graph
        needed: set[str] = set()
        for i in order:
            needed.update(graph.node[i].input)
            needed.update(_implicit_inputs(graph.node[i]))
        sub = onnx.GraphProto(name="segment")
        sub.node.extend(graph.node[i] for i in order)
        sub.initializer.extend(t for t in graph.initializer if t.name in needed)
        sub.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in needed)
        for f in feeds:
            sub.input.append(helper.make_tensor_value_info(
                f, helper.np_dtype_to_tensor_dtype(self.values[f].dtype), None))
        for o in outputs:
            sub.output.append(onnx.ValueInfoProto(name=o))
        model = helper.make_model(sub, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        model.functions.extend(self.model.functions)
        return model


def _implicit_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope names read by the subgraphs of If/Loop/Scan nodes."""
    names: list[str] = []
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                names.extend(x for x in list(n.input) + _implicit_inputs(n) if x and x not in local)
    return names
