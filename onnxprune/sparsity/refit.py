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
The solve, the im2col and the held-back rule are :mod:`onnxprune.lsq`'s.

Layers are processed front to back. The sparsified model is evaluated in
segments, one per layer, from cached activations (:mod:`.segments`), so a
step costs about one forward pass over the calibration samples instead of
one pass per layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from ..calibration import model_input_shapes
from ..graph.layout import as_matrix, from_matrix, node_attrs, weight_layout
from ..lsq import Site, fit_samples, holdout, masked_fit, sq_error, stream
from ..lsq.segments import SegmentForward
from .config import SparsifyConfig
from .weights import ConstantIndex, WeightRef, constant_ref, read_weight, write_weights

logger = logging.getLogger(__name__)

_CAPTURE_BATCH = 16
_GATHER_BUDGET = 1 << 25  # float32 values of im2col rows held at once (128 MiB)
_KINDS = {"Conv": "conv", "Gemm": "gemm", "MatMul": "matmul"}


@dataclass(kw_only=True)
class _Layer(Site):
    """A layer the re-fit can solve (:class:`onnxprune.lsq.Site`: its rows spread over the samples), its
    weight, its bias and the original outputs at its rows."""

    ref: WeightRef
    bias_name: str | None = None  # fitted bias tensor
    fixed_bias: np.ndarray | None = None  # constant bias that stays
    bias_scale: float = 1.0  # Gemm's beta
    alpha: float = 1.0  # Gemm's alpha
    target: np.ndarray | None = None  # [rows, out channels]

    @property
    def kind(self) -> str:
        return _KINDS[self.op]


class Refitter:
    """Re-fits layers of a sparsified model against the outputs of the original."""

    def __init__(self, original: onnx.ModelProto, refs: list[WeightRef], calibration: Mapping[str, np.ndarray],
                 config: SparsifyConfig) -> None:
        self.config = config
        self.calibration = dict(calibration)
        self.samples = len(next(iter(self.calibration.values())))
        self.hold_from = fit_samples(self.samples, config.refit_holdout, min_samples=1)
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
        attrs = node_attrs(node)
        if node.op_type not in _KINDS:
            self.skipped[ref.name] = f"no re-fit for {node.op_type}"
            return None
        if node.op_type == "Conv" and len(ref.shape) != 4:
            self.skipped[ref.name] = "only 2-D convolutions are re-fitted"
            return None
        if slot != 1 or (node.op_type == "MatMul" and len(ref.shape) != 2):
            self.skipped[ref.name] = "weight is not the right-hand 2-D operand"
            return None
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            self.skipped[ref.name] = "Gemm with transA"
            return None
        layer = _Layer(node=node.name, ref=ref, op=node.op_type, attrs=attrs, input=node.input[0],
                       output=node.output[0])
        if node.op_type == "Gemm":
            layer.alpha = float(attrs.get("alpha", 1.0))
            layer.bias_scale = float(attrs.get("beta", 1.0))
        bias_slot = 2
        if len(node.input) > bias_slot and node.input[bias_slot]:
            bias = node.input[bias_slot]
            out_channels = ref.shape[weight_layout(node.op_type, attrs).out_axis]
            if bias not in consts:
                self.skipped[ref.name] = "bias is not a constant"
                return None
            value = read_weight(model, constant_ref(model, bias, consts))
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
        names = sorted({layer.output for layer in self.layers})
        batch = _CAPTURE_BATCH
        fixed = [dims[0] for dims in model_input_shapes(original).values()
                 if dims and isinstance(dims[0], int) and dims[0] > 0]
        if fixed:
            batch = min(fixed)
        batches = ({k: v[start:start + batch] for k, v in self.calibration.items()}
                   for start in range(0, self.samples, batch))
        parts: dict[str, list[np.ndarray]] = {layer.ref.name: [] for layer in self.layers}
        for start, end, outputs in stream(original, names, batches):
            for layer in self.layers:
                if layer.ref.name in self.skipped:
                    continue
                out = outputs[layer.output]
                if out.ndim < 2 or out.shape[0] != end - start:
                    # Rows must map to samples (a Reshape that folds time into the batch breaks that).
                    self.skipped[layer.ref.name] = f"output {list(out.shape)} does not lead with the batch axis"
                    continue
                if layer.rows_n is None:
                    layer.sample_spread(out, self.samples, self.config.refit_rows, self.rng)
                parts[layer.ref.name].append(layer.targets(out, start))
        self.layers = [layer for layer in self.layers if layer.ref.name not in self.skipped]
        for layer in self.layers:
            # float32 keeps the targets of a large model in memory; the solves are in float64.
            layer.target = np.concatenate(parts[layer.ref.name]).astype(np.float32)

    # -- the fit --------------------------------------------------------------
    def refit(self, model: onnx.ModelProto, masks: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Re-fit every plannable layer of ``model`` (in place); returns a status per weight."""
        status = {name: f"skipped: {why}" for name, why in self.skipped.items()}
        forward = SegmentForward(model, self.calibration)
        for layer in self.layers:
            if layer.ref.name not in masks:
                continue
            x = forward.compute(layer.input)
            if x.shape[0] != self.samples:
                status[layer.ref.name] = f"skipped: input {list(x.shape)} does not lead with the batch axis"
                continue
            ref = layer.ref
            current = read_weight(model, ref)
            mask = np.asarray(masks[layer.ref.name], dtype=bool)
            bias_ref = constant_ref(model, layer.bias_name) if layer.bias_name else None
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
        fit, hold = holdout(len(layer.rows_n), layer.rows_before(self.hold_from, 0, self.samples, len(layer.rows_n)))
        targets = layer.target
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
            w_fit, b_fit = masked_fit(rows[:, fit], y[:, fit], m3, w0 * m3, b0, self.config.refit_ridge)
            err_plain += sq_error(rows[:, hold], y[:, hold], w3, b)
            err_fit += sq_error(rows[:, hold], y[:, hold], w_fit, b_fit)
            if layer.kind == "conv":
                new_w[out_ch.ravel()] = w_fit.reshape((out_ch.size,) + new_w.shape[1:])
            else:  # one group holding every output channel
                new_w = from_matrix(layer.op, layer.attrs, w_fit[0], new_w.shape)
            if new_b is not None and b_fit is not None:
                new_b[out_ch] = b_fit
        return new_w, new_b, err_plain, err_fit

    def _groups(self, layer: _Layer, x: np.ndarray, weight: np.ndarray, mask: np.ndarray, orig: np.ndarray
                ) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Independent groups of the layer, a batch at a time, as
        (input rows [g, R, D], output channels [g, Mg], weight / mask / original weight [g, Mg, D])."""
        if layer.kind != "conv":
            if layer.kind == "gemm":
                rows = x.reshape(x.shape[0], -1)[layer.rows_n].astype(np.float32) * np.float32(layer.alpha)
            else:
                rows = layer.rows(x).astype(np.float32)
            w2d, m2d, o2d = (as_matrix(layer.op, layer.attrs, a) for a in (weight, mask, orig))
            yield (rows[None], np.arange(w2d.shape[0])[None], w2d[None].astype(np.float64), m2d[None],
                   o2d[None].astype(np.float64))
            return
        patches = layer.patches(x.astype(np.float32, copy=False), layer.ref.shape)
        group = int(layer.attrs.get("group", 1))
        n = layer.rows_n
        out_ch, in_per_group, kh, kw = weight.shape
        out_per_group = out_ch // group
        depth = in_per_group * kh * kw
        chunk = max(1, _GATHER_BUDGET // max(len(n) * depth, 1))  # groups gathered at once
        for g0 in range(0, group, chunk):
            g1 = min(group, g0 + chunk)
            cols = patches.rows(g0 * in_per_group, g1 * in_per_group)
            rows = np.ascontiguousarray(cols.reshape(len(n), g1 - g0, depth).transpose(1, 0, 2))
            oc = np.arange(g0 * out_per_group, g1 * out_per_group).reshape(g1 - g0, out_per_group)
            shape3 = (g1 - g0, out_per_group, depth)
            yield (rows, oc, weight[oc.ravel()].reshape(shape3).astype(np.float64), mask[oc.ravel()].reshape(shape3),
                   orig[oc.ravel()].reshape(shape3).astype(np.float64))


def _ratio(err_fit: float, err_plain: float) -> str:
    return f"{err_fit / err_plain:.3f}x" if err_plain > 0 else "n/a"
