"""Channel-wise rules: ops that keep every channel where it is (labels pass through).

Unary activations, pools, normalisations, elementwise binaries (which couple
the channels they put on top of each other), Clip, Softmax and Resize. A
per-channel constant operand is sliced in surgery; anything that mixes
channels freezes them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels
from .base import FollowRule, OpRule, _const, _input, _is_empty, _norm_axis
from .context import AnalysisContext, RewriteContext


class PassRule(FollowRule):
    """Unary elementwise op (activation, Identity, Dropout, Cast): labels pass through."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        for extra in node.inputs[1:]:
            if _is_empty(extra):
                continue
            v = _const(extra)
            if v is None or v.size != 1:
                a.freeze_inputs(node, f"{node.op} {node.name!r} has a non-scalar or run-time parameter")
                return
        a.set(node.outputs[0], Labels(lx.axis, lx.units))


class SpatialRule(PassRule):
    """Pools and similar NC... ops that keep axis 1 as channels."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        if lx.axis != 1:
            a.freeze_inputs(node, f"{node.op} {node.name!r} works on NCHW but channels are on axis {lx.axis}")
            return
        a.set(node.outputs[0], Labels(1, lx.units))


class NormRule(FollowRule):
    """BatchNormalization / InstanceNormalization: per-channel constants are sliced."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        params = [t for t in node.inputs[1:] if not _is_empty(t)]
        if lx.axis != 1 or any(_const(t) is None for t in params) or any(a.shared_const(t, node) for t in params):
            a.freeze_inputs(node, f"{node.op} {node.name!r}: channels not on axis 1 or run-time/shared parameters")
            return
        a.set(node.outputs[0], Labels(1, lx.units))

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        keep = s.keep(node.inputs[0])
        if keep is None:
            return
        for i, t in enumerate(node.inputs[1:], start=1):
            if not _is_empty(t):
                s.set_const(node, i, _const(t)[keep])


def _const_channel_axis(out_rank: int, axis: int, const: np.ndarray) -> Optional[int]:
    """Axis of ``const`` that broadcasts against channel ``axis`` of a rank-``out_rank`` tensor."""
    ax = axis - (out_rank - const.ndim)
    return ax if ax >= 0 else None


class ElementwiseRule(OpRule):
    """Add/Sub/Mul/Div/Pow/Max/Min/PRelu/Where-free binary ops.

    Two channel tensors of the same size unite their units (residual Add, SE
    gate Mul); a per-channel constant is sliced; a scalar or size-1 operand
    broadcasts and is left alone. A channel tensor of size 1 broadcast over
    a wider one is not coupled (and cannot lose its only channel).
    """

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        out = node.outputs[0]
        out_rank = len(a.shape(out))
        labelled = []
        for i, t in enumerate(node.inputs):
            lt = a.get(t)
            if lt is not None:
                labelled.append((i, lt.axis + out_rank - len(a.shape(t)), lt))
        if not labelled:
            return
        axes = {ax for _, ax, _ in labelled}
        if len(axes) != 1:
            a.freeze_inputs(node, f"{node.op} {node.name!r} combines tensors with channels on different axes")
            return
        axis = axes.pop()
        width = a.shape(out)[axis]
        wide = [lt for _, _, lt in labelled if lt.size == width]
        for _, _, lt in labelled:
            if lt.size != width:
                a.freeze(lt.units, f"{node.op} {node.name!r} broadcasts a {lt.size}-channel tensor over {width} channels")
        if not wide:
            return
        units = wide[0].units.copy()
        for lt in wide[1:]:
            for j in range(width):
                a.unite(int(units[j]), int(lt.units[j]))
        for i, t in enumerate(node.inputs):
            if a.get(t) is not None:
                continue
            shape = a.shape(t)
            ax = axis - (out_rank - len(shape))
            if ax < 0 or shape[ax] == 1:
                continue
            v = _const(t)
            if v is None:
                a.freeze(units, f"{node.op} {node.name!r} combines the channels with a non-prunable run-time tensor {t.name!r}")
                return
            if a.shared_const(t, node):
                a.freeze(units, f"{node.op} {node.name!r}: per-channel constant {t.name!r} is shared")
                return
        a.set(out, Labels(axis, units))

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        out = node.outputs[0]
        keep = s.keep(out)
        if keep is None:
            return
        lab = s.labels(out)
        out_rank = len(s.shape(out))
        for i, t in enumerate(node.inputs):
            v = _const(t)
            if v is None:
                continue
            ax = _const_channel_axis(out_rank, lab.axis, v)
            if ax is not None and v.shape[ax] == keep.shape[0] and keep.shape[0] > 1:
                s.set_const(node, i, np.compress(keep, v, axis=ax))


class SoftmaxRule(FollowRule):
    """Softmax/LogSoftmax over an axis other than the channel axis."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        rank = len(a.shape(node.inputs[0]))
        axis = _norm_axis(int(node.attrs.get("axis", -1)), rank)
        if axis == lx.axis:
            a.freeze_inputs(node, f"{node.op} {node.name!r} normalises over the channel axis")
            return
        a.set(node.outputs[0], Labels(lx.axis, lx.units))


class ResizeRule(FollowRule):
    """Resize/Upsample with a scale of 1 (or a constant size) on the channel axis."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        if a.shape(node.outputs[0])[lx.axis] != lx.size:
            a.freeze_inputs(node, f"{node.op} {node.name!r} resizes the channel axis")
            return
        sizes = _input(node, 3)
        if sizes is not None and _const(sizes) is None:
            a.freeze_inputs(node, f"{node.op} {node.name!r}: output sizes computed at run time")
            return
        a.set(node.outputs[0], Labels(lx.axis, lx.units))

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        keep = s.keep(node.inputs[0])
        sizes = _input(node, 3)
        if keep is None or sizes is None:
            return
        new = _const(sizes).copy()
        new[s.labels(node.inputs[0]).axis] = int(keep.sum())
        s.set_const(node, 3, new)
