"""Producer rules: ops whose constant weights create output channels and consume input channels.

Each producer's output channels are born as new units; its input channels
are recorded as a consumer edge (removing a unit zeroes them there). Where
C_out and C_in live in the weight comes from :mod:`onnxprune.graph.layout`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels
from ..layout import WeightLayout, weight_layout
from .attention import activation_matmul
from .base import OpRule, _const, _input
from .context import AnalysisContext, RewriteContext


def _slice_weight(w: np.ndarray, layout: WeightLayout, keep_in: Optional[np.ndarray],
                  keep_out: Optional[np.ndarray]) -> np.ndarray:
    """``w`` restricted to the kept input and output channels (``w`` itself when neither changes)."""
    new = w
    if keep_in is not None:
        new = np.compress(keep_in, new, axis=layout.in_axis)
    if keep_out is not None:
        new = np.compress(keep_out, new, axis=layout.out_axis)
    return new


def _consume(a: AnalysisContext, node: gs.Node, axis: int, reason: str) -> None:
    """Record input 0 as consumed when its channels lie on ``axis``; freeze them with ``reason`` otherwise."""
    x = node.inputs[0]
    lx = a.get(x)
    if lx is None:
        return
    if lx.axis != axis:
        a.freeze(lx.units, reason)
    else:
        a.add_consumer(node, 0, x)


def _rewrite_weights(s: RewriteContext, node: gs.Node, keep_in: Optional[np.ndarray],
                     keep_out: Optional[np.ndarray]) -> None:
    """Slice the weight (input 1) and the per-output-channel bias (input 2, if any)."""
    w = _const(node.inputs[1])
    new = _slice_weight(w, weight_layout(node.op, node.attrs), keep_in, keep_out)
    if new is not w:
        s.set_const(node, 1, new)
    bias = _input(node, 2)
    if bias is not None and keep_out is not None:
        c = _const(bias)
        if c.ndim >= 1 and c.shape[-1] == keep_out.shape[0]:
            s.set_const(node, 2, np.compress(keep_out, c, axis=c.ndim - 1))


class ConvRule(OpRule):
    """Conv: output channels are new units; input channels are consumed.

    Grouped convolution ties each group's input channels to its output
    channels, so one whole group is the smallest removable unit; depthwise
    convolution is the case of one channel per group. ``group`` is updated.
    """

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        bias = _input(node, 2)
        W = _const(w)
        if W is None or (bias is not None and _const(bias) is None):
            a.freeze_inputs(node, f"{node.op} {node.name!r} has weights computed at run time")
            return
        if a.shared_const(w, node) or (bias is not None and a.shared_const(bias, node)):
            a.freeze_inputs(node, f"{node.op} {node.name!r} shares its weights with another node")
            return
        layout = weight_layout(node.op, node.attrs)
        group = int(node.attrs.get("group", 1))
        lx = a.get(x)
        out = node.outputs[0]
        c_out = W.shape[layout.out_axis]
        if lx is not None and lx.axis != 1:
            a.freeze(lx.units, f"{node.name!r}: input channel axis is {lx.axis}, not 1")
            lx = None
        if group == 1:
            if lx is not None:
                a.add_consumer(node, 0, x)
            a.set(out, Labels(1, a.new_units(node, c_out)))
            a.add_producer(node, out)
            return
        cin_g, cout_g = W.shape[layout.in_axis], c_out // group
        if lx is None:
            units = a.new_units(node, c_out)
            a.freeze(units, f"grouped {node.op} {node.name!r}: its input channels are not prunable, "
                            "so its groups cannot be removed")
            a.set(out, Labels(1, units))
            a.add_producer(node, out)
            return
        a.add_consumer(node, 0, x)
        units = np.empty(c_out, dtype=np.int64)
        for k in range(group):
            ins = lx.units[k * cin_g:(k + 1) * cin_g]
            root = int(ins[0])
            for u in ins[1:]:
                root = a.unite(root, int(u))
            units[k * cout_g:(k + 1) * cout_g] = root
        a.set(out, Labels(1, units))
        a.add_producer(node, out, grouped=True)

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        keep_in, keep_out = s.keep(node.inputs[0]), s.keep(node.outputs[0])
        group = int(node.attrs.get("group", 1))
        if group != 1 and keep_in is not None:
            cin_g = _const(node.inputs[1]).shape[weight_layout(node.op, node.attrs).in_axis]
            node.attrs["group"] = int(keep_in.sum()) // cin_g
        # a grouped weight's input axis holds C_in/group: removing whole groups shrinks only C_out
        _rewrite_weights(s, node, keep_in if group == 1 else None, keep_out)


class ConvTransposeRule(OpRule):
    """ConvTranspose: weight is [C_in, C_out/group, ...] — the axes are swapped."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        w = node.inputs[1]
        bias = _input(node, 2)
        W = _const(w)
        group = int(node.attrs.get("group", 1))
        if W is None or (bias is not None and _const(bias) is None) or group != 1:
            why = "is grouped" if group != 1 else "has weights computed at run time"
            a.freeze_inputs(node, f"ConvTranspose {node.name!r} {why}")
            return
        if a.shared_const(w, node):
            a.freeze_inputs(node, f"ConvTranspose {node.name!r} shares its weights")
            return
        # an ``output_shape`` attribute is spatial only; the channel count comes from the weight
        _consume(a, node, 1, f"{node.name!r}: input channel axis is not 1")
        out = node.outputs[0]
        a.set(out, Labels(1, a.new_units(node, W.shape[weight_layout(node.op, node.attrs).out_axis])))
        a.add_producer(node, out)

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        _rewrite_weights(s, node, s.keep(node.inputs[0]), s.keep(node.outputs[0]))


class GemmRule(OpRule):
    """Gemm with a constant B: input features consumed, output features are new units."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        b = node.inputs[1]
        c = _input(node, 2)
        B = _const(b)
        if B is None or (c is not None and _const(c) is None) or int(node.attrs.get("transA", 0)):
            a.freeze_inputs(node, f"Gemm {node.name!r} has run-time weights or transA=1")
            return
        if a.shared_const(b, node) or (c is not None and a.shared_const(c, node)):
            a.freeze_inputs(node, f"Gemm {node.name!r} shares its weights")
            return
        _consume(a, node, 1, f"Gemm {node.name!r}: features are not on axis 1")
        n_out = B.shape[weight_layout(node.op, node.attrs).out_axis]
        C = _const(c) if c is not None else None
        out = node.outputs[0]
        units = a.new_units(node, n_out)
        if C is not None and C.ndim == 2 and C.shape[0] != 1:
            a.freeze(units, f"Gemm {node.name!r}: bias C varies along the batch axis")
        a.set(out, Labels(1, units))
        a.add_producer(node, out)

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        _rewrite_weights(s, node, s.keep(node.inputs[0]), s.keep(node.outputs[0]))


class MatMulRule(OpRule):
    """MatMul with a constant 2-D right operand: last axis consumed and produced."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        x, w = node.inputs
        W = _const(w)
        if W is None and _const(x) is None:
            activation_matmul(a, node)  # attention scores and context: heads on a batch axis
            return
        if W is None or W.ndim != 2 or _const(x) is not None:
            a.freeze_inputs(node, f"MatMul {node.name!r} has a constant left operand or a weight that is not 2-D")
            return
        if a.shared_const(w, node):
            a.freeze_inputs(node, f"MatMul {node.name!r} shares its weights")
            return
        _consume(a, node, len(a.shape(x)) - 1, f"MatMul {node.name!r}: channels are not on the last axis")
        out = node.outputs[0]
        n_out = W.shape[weight_layout(node.op, node.attrs).out_axis]
        a.set(out, Labels(len(a.shape(out)) - 1, a.new_units(node, n_out)))
        a.add_producer(node, out)

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        if _const(node.inputs[1]) is not None:  # a MatMul of two activations has nothing to slice
            _rewrite_weights(s, node, s.keep(node.inputs[0]), s.keep(node.outputs[0]))
