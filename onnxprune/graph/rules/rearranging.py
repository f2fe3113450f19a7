"""Rearranging rules: ops that move, cut, merge or reduce axes, so channel labels move with them.

Concat/Split/Slice/Pad change which positions of the channel axis exist
(their sizes, bounds and pad amounts are rewritten in surgery); Transpose,
Flatten, Squeeze/Unsqueeze and Reduce* move the channel axis or
merge it with its neighbours (Reshape: :mod:`.reshape`). What cannot be mapped exactly is frozen.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels
from .base import FollowRule, OpRule, _const, _input, _norm_axis
from .context import AnalysisContext, RewriteContext, ShapeContext


def _axes_operand(node: gs.Node) -> Optional[np.ndarray]:
    """The ``axes`` of Squeeze/Unsqueeze/Reduce*: the input (opset 13+/18+) or the attribute.

    None when absent, or when the input is computed at run time.
    """
    if _input(node, 1) is not None:
        return _const(node.inputs[1])
    axes = node.attrs.get("axes")
    return None if axes is None else np.asarray(axes)


class ConcatRule(OpRule):
    """Concat on the channel axis concatenates labels; on another axis it unites them."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        ins = [t for t in node.inputs]
        labels = [a.get(t) for t in ins]
        if all(lt is None for lt in labels):
            return
        rank = len(a.shape(node.outputs[0]))
        axis = _norm_axis(int(node.attrs.get("axis", 0)), rank)
        ch_axes = {lt.axis for lt in labels if lt is not None}
        if len(ch_axes) != 1:
            a.freeze_inputs(node, f"Concat {node.name!r}: inputs have channels on different axes")
            return
        ch = ch_axes.pop()
        if axis == ch:
            parts = []
            for t, lt in zip(ins, labels):
                if lt is not None:
                    parts.append(lt.units)
                else:
                    fresh = a.new_units(node, a.shape(t)[ch])
                    a.freeze(fresh, f"Concat {node.name!r}: input {t.name!r} is not a prunable tensor")
                    parts.append(fresh)
            a.set(node.outputs[0], Labels(ch, np.concatenate(parts)))
            return
        if any(lt is None for lt in labels):
            a.freeze_inputs(node, f"Concat {node.name!r} along axis {axis} joins prunable and fixed tensors")
            return
        units = labels[0].units.copy()
        for lt in labels[1:]:
            if lt.size != units.size:
                a.freeze_inputs(node, f"Concat {node.name!r}: channel counts differ")
                return
            for j in range(units.size):
                a.unite(int(units[j]), int(lt.units[j]))
        a.set(node.outputs[0], Labels(ch, units))


class SplitRule(FollowRule):
    """Split on the channel axis slices labels; split sizes are rewritten."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        rank = len(a.shape(node.inputs[0]))
        axis = _norm_axis(int(node.attrs.get("axis", 0)), rank)
        if axis != lx.axis:
            for o in node.outputs:
                a.set(o, Labels(lx.axis, lx.units))
            return
        if _input(node, 1) is not None and _const(node.inputs[1]) is None:
            a.freeze_inputs(node, f"Split {node.name!r}: sizes computed at run time")
            return
        start = 0
        for o in node.outputs:
            n = a.shape(o)[axis]
            a.set(o, Labels(axis, lx.units[start:start + n]))
            start += n

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        lx = s.labels(node.inputs[0])
        if lx is None or s.keep(node.inputs[0]) is None:
            return
        rank = len(s.shape(node.inputs[0]))
        if _norm_axis(int(node.attrs.get("axis", 0)), rank) != lx.axis:
            return
        sizes = np.array([int(s.keep(o).sum()) if s.keep(o) is not None else s.shape(o)[lx.axis]
                          for o in node.outputs], dtype=np.int64)
        if _input(node, 1) is not None:
            s.set_const(node, 1, sizes)
        else:
            node.attrs["split"] = [int(v) for v in sizes]
            node.attrs.pop("num_outputs", None)


class SliceRule(FollowRule):
    """Slice: other axes pass; a contiguous step-1 slice of the channel axis shifts labels."""

    def _params(self, a: ShapeContext, node: gs.Node) -> Optional[tuple]:
        starts, ends, axes, steps = (_const(_input(node, i)) for i in range(1, 5))
        rank = len(a.shape(node.inputs[0]))
        if starts is None or ends is None:
            return None
        if axes is None:
            axes = np.arange(len(starts))
        if steps is None:
            steps = np.ones(len(starts), dtype=np.int64)
        return starts, ends, [_norm_axis(int(x), rank) for x in axes], steps

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        params = self._params(a, node)
        if params is None:
            a.freeze_inputs(node, f"Slice {node.name!r}: bounds computed at run time")
            return
        starts, ends, axes, steps = params
        if lx.axis not in axes:
            a.set(node.outputs[0], Labels(lx.axis, lx.units))
            return
        k = axes.index(lx.axis)
        if int(steps[k]) != 1:
            a.freeze_inputs(node, f"Slice {node.name!r} takes every {int(steps[k])}th channel")
            return
        begin, stop, _ = slice(int(starts[k]), int(ends[k])).indices(lx.size)
        a.set(node.outputs[0], Labels(lx.axis, lx.units[begin:max(begin, stop)]))

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        lx = s.labels(node.inputs[0])
        keep = s.keep(node.inputs[0])
        if lx is None or keep is None:
            return
        starts, ends, axes, _ = self._params(s, node)
        if lx.axis not in axes:
            return
        k = axes.index(lx.axis)
        begin, stop, _ = slice(int(starts[k]), int(ends[k])).indices(lx.size)
        new_begin = int(keep[:begin].sum())
        new_end = new_begin + int(keep[begin:max(begin, stop)].sum())
        st, en = starts.copy(), ends.copy()
        st[k], en[k] = new_begin, new_end
        s.set_const(node, 1, st.astype(starts.dtype))
        s.set_const(node, 2, en.astype(ends.dtype))


class PadRule(FollowRule):
    """Pad: spatial pads pass; zero pads on the channel axis add zero units.

    ResNet's option-A shortcut pads the channel axis with zeros; the added
    channels are born as *zero units* that the residual Add then unites with
    the real channels of the other branch. Removing such a unit shrinks the
    pad amount, so the shortcut stays exact.
    """

    def _pads(self, a: ShapeContext, node: gs.Node) -> tuple[Optional[np.ndarray], Optional[list[int]]]:
        rank = len(a.shape(node.inputs[0]))
        if _input(node, 1) is not None:
            pads = _const(node.inputs[1])
        else:
            pads = np.asarray(node.attrs.get("pads", [0] * 2 * rank), dtype=np.int64)
        if pads is None:
            return None, None
        axes = list(range(rank))
        if _input(node, 3) is not None:
            ax = _const(node.inputs[3])
            if ax is None:
                return None, None
            axes = [_norm_axis(int(x), rank) for x in ax]
        n = len(axes)
        full = np.zeros(2 * rank, dtype=np.int64)
        for i, axis in enumerate(axes):
            full[axis], full[rank + axis] = pads[i], pads[n + i]
        return full, axes

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        full, _ = self._pads(a, node)
        if full is None:
            a.freeze_inputs(node, f"Pad {node.name!r}: pad amounts computed at run time")
            return
        rank = len(a.shape(node.inputs[0]))
        before, after = int(full[lx.axis]), int(full[rank + lx.axis])
        if before == 0 and after == 0:
            a.set(node.outputs[0], Labels(lx.axis, lx.units))
            return
        mode = node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        value = _const(node.inputs[2]) if _input(node, 2) is not None else np.zeros(1)
        if mode != "constant" or value is None or float(np.asarray(value).reshape(-1)[0]) != 0.0 or before < 0 or after < 0:
            a.freeze_inputs(node, f"Pad {node.name!r} on the channel axis is not a zero pad")
            return
        zb = a.new_units(node, before, zero=True)
        za = a.new_units(node, after, zero=True)
        a.set(node.outputs[0], Labels(lx.axis, np.concatenate([zb, lx.units, za])))

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        lx = s.labels(node.inputs[0])
        keep_out = s.keep(node.outputs[0])
        if lx is None or keep_out is None:
            return
        full, axes = self._pads(s, node)
        rank = len(s.shape(node.inputs[0]))
        before, after = int(full[lx.axis]), int(full[rank + lx.axis])
        if before == 0 and after == 0:
            return
        new_before = int(keep_out[:before].sum())
        new_after = int(keep_out[keep_out.shape[0] - after:].sum()) if after else 0
        full = full.copy()
        full[lx.axis], full[rank + lx.axis] = new_before, new_after
        if _input(node, 1) is not None:
            n = len(axes)
            pads = np.array([full[ax] for ax in axes] + [full[rank + ax] for ax in axes], dtype=np.int64)
            assert len(pads) == 2 * n
            s.set_const(node, 1, pads)
        else:
            node.attrs["pads"] = [int(v) for v in full]


class TransposeRule(FollowRule):
    """Transpose moves the channel axis to where ``perm`` sends it."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        rank = len(a.shape(node.inputs[0]))
        perm = list(node.attrs.get("perm", list(range(rank))[::-1]))
        a.set(node.outputs[0], Labels(perm.index(lx.axis), lx.units))


def _merge_labels(in_shape: tuple, lx: Labels, start: int, stop: int) -> np.ndarray:
    """Labels of the axis made by merging in_shape[start:stop] (C order), channel inside."""
    sub = in_shape[start:stop]
    idx = np.indices(sub)[lx.axis - start].reshape(-1)
    return lx.units[idx]


class FlattenRule(FollowRule):
    """Flatten from an axis at or before the channel axis: each channel owns a block of rows."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        shape = a.shape(node.inputs[0])
        k = _norm_axis(int(node.attrs.get("axis", 1)), len(shape))
        if k == 0 or lx.axis < k:
            a.freeze_inputs(node, f"Flatten {node.name!r} merges the channel axis with the batch axis")
            return
        a.set(node.outputs[0], Labels(1, _merge_labels(shape, lx, k, len(shape))))


class SqueezeRule(FollowRule):
    """Squeeze/Unsqueeze of axes other than the channel axis shift the channel axis."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        ins, outs = a.shape(node.inputs[0]), a.shape(node.outputs[0])
        if node.op == "Squeeze":
            removed = [i for i in range(len(ins)) if ins[i] == 1]
            axes = _axes_operand(node)
            if axes is not None:
                removed = [_norm_axis(int(x), len(ins)) for x in np.asarray(axes).reshape(-1)]
            if lx.axis in removed:
                a.freeze_inputs(node, f"Squeeze {node.name!r} removes the channel axis")
                return
            a.set(node.outputs[0], Labels(lx.axis - sum(1 for r in removed if r < lx.axis), lx.units))
            return
        axes = _axes_operand(node)
        if axes is None:
            a.freeze_inputs(node, f"Unsqueeze {node.name!r}: axes computed at run time")
            return
        added = sorted(_norm_axis(int(x), len(outs)) for x in np.asarray(axes).reshape(-1))
        pos = lx.axis
        for ax in added:
            if ax <= pos:
                pos += 1
        a.set(node.outputs[0], Labels(pos, lx.units))


class ReduceRule(FollowRule):
    """Reductions over axes other than the channel axis."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        rank = len(a.shape(node.inputs[0]))
        axes = _axes_operand(node)
        if axes is None:
            a.freeze_inputs(node, f"{node.op} {node.name!r} reduces over all axes")
            return
        axes = [_norm_axis(int(x), rank) for x in np.asarray(axes).reshape(-1)]
        if lx.axis in axes:
            a.freeze_inputs(node, f"{node.op} {node.name!r} reduces over the channel axis")
            return
        keepdims = int(node.attrs.get("keepdims", 1))
        new_axis = lx.axis if keepdims else lx.axis - sum(1 for x in axes if x < lx.axis)
        a.set(node.outputs[0], Labels(new_axis, lx.units))


class ShapeRule(OpRule):
    """Shape reads the channel count but carries no channels; its users are checked where they matter."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        return
