"""Per-operator channel rules: how labels flow through an op, and how its constants are rewritten.

One class per operator family, looked up from a plain registry. ``propagate``
runs during analysis (in topological order) and must either label the
outputs, freeze what it cannot map (saying why), or both. ``rewrite`` runs
during surgery and slices the op's own constants/attributes to the channels
kept in its input and output tensors. An op that is not in the registry
freezes every unit reaching it: unknown means untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import onnx_graphsurgeon as gs

from .channels import Labels

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import Analysis
    from ..passes.prune_channels import Surgery


def _const(t) -> Optional[np.ndarray]:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _is_empty(t) -> bool:
    return t is None or (isinstance(t, gs.Variable) and t.name == "")


class OpRule:
    """Base rule: freeze whatever reaches the op (the safe default)."""

    def propagate(self, a: "Analysis", node: gs.Node) -> None:
        a.freeze_inputs(node, f"{node.op} node {node.name!r} is not understood by the channel analysis")

    def rewrite(self, s: "Surgery", node: gs.Node) -> None:
        """Nothing of the op depends on the channel count."""


# ---------------------------------------------------------------- producers

class ConvRule(OpRule):
    """Conv: output channels are new units; input channels are consumed.

    Grouped convolution ties each group's input channels to its output
    channels, so one whole group is the smallest removable unit; depthwise
    convolution is the case of one channel per group. ``group`` is updated.
    """

    def propagate(self, a, node):
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 and not _is_empty(node.inputs[2]) else None
        W = _const(w)
        if W is None or (bias is not None and _const(bias) is None):
            a.freeze_inputs(node, f"{node.op} {node.name!r} has weights computed at run time")
            return
        if a.shared_const(w, node) or (bias is not None and a.shared_const(bias, node)):
            a.freeze_inputs(node, f"{node.op} {node.name!r} shares its weights with another node")
            return
        group = int(node.attrs.get("group", 1))
        lx = a.get(x)
        out = node.outputs[0]
        c_out = W.shape[0]
        if lx is not None and lx.axis != 1:
            a.freeze(lx.units, f"{node.name!r}: input channel axis is {lx.axis}, not 1")
            lx = None
        if group == 1:
            if lx is not None:
                a.add_consumer(node, 0, x)
            a.set(out, Labels(1, a.new_units(node, c_out)))
            a.add_producer(node, out)
            return
        cin_g, cout_g = W.shape[1], c_out // group
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
                root = a.uf.union(root, int(u))
            units[k * cout_g:(k + 1) * cout_g] = root
        a.set(out, Labels(1, units))
        a.add_producer(node, out, grouped=True)

    def rewrite(self, s, node):
        keep_in, keep_out = s.keep(node.inputs[0]), s.keep(node.outputs[0])
        W = _const(node.inputs[1])
        group = int(node.attrs.get("group", 1))
        new = W
        if keep_out is not None:
            new = new[keep_out]
        if group == 1:
            if keep_in is not None:
                new = new[:, keep_in]
        elif keep_in is not None:
            node.attrs["group"] = int(keep_in.sum()) // W.shape[1]
        if new is not W:
            s.set_const(node, 1, new)
        if len(node.inputs) > 2 and not _is_empty(node.inputs[2]) and keep_out is not None:
            s.set_const(node, 2, _const(node.inputs[2])[keep_out])


class ConvTransposeRule(OpRule):
    """ConvTranspose: weight is [C_in, C_out/group, ...] — the axes are swapped."""

    def propagate(self, a, node):
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 and not _is_empty(node.inputs[2]) else None
        W = _const(w)
        group = int(node.attrs.get("group", 1))
        if W is None or (bias is not None and _const(bias) is None) or group != 1:
            why = "is grouped" if group != 1 else "has weights computed at run time"
            a.freeze_inputs(node, f"ConvTranspose {node.name!r} {why}")
            return
        if a.shared_const(w, node):
            a.freeze_inputs(node, f"ConvTranspose {node.name!r} shares its weights")
            return
        if "output_shape" in node.attrs:
            pass  # spatial only; channel count comes from the weight
        lx = a.get(x)
        if lx is not None:
            if lx.axis != 1:
                a.freeze(lx.units, f"{node.name!r}: input channel axis is not 1")
            else:
                a.add_consumer(node, 0, x)
        out = node.outputs[0]
        a.set(out, Labels(1, a.new_units(node, W.shape[1])))
        a.add_producer(node, out)

    def rewrite(self, s, node):
        keep_in, keep_out = s.keep(node.inputs[0]), s.keep(node.outputs[0])
        W = _const(node.inputs[1])
        new = W
        if keep_in is not None:
            new = new[keep_in]
        if keep_out is not None:
            new = new[:, keep_out]
        if new is not W:
            s.set_const(node, 1, new)
        if len(node.inputs) > 2 and not _is_empty(node.inputs[2]) and keep_out is not None:
            s.set_const(node, 2, _const(node.inputs[2])[keep_out])


class GemmRule(OpRule):
    """Gemm with a constant B: input features consumed, output features are new units."""

    def propagate(self, a, node):
        x, b = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 and not _is_empty(node.inputs[2]) else None
        B = _const(b)
        if B is None or (c is not None and _const(c) is None) or int(node.attrs.get("transA", 0)):
            a.freeze_inputs(node, f"Gemm {node.name!r} has run-time weights or transA=1")
            return
        if a.shared_const(b, node) or (c is not None and a.shared_const(c, node)):
            a.freeze_inputs(node, f"Gemm {node.name!r} shares its weights")
            return
        lx = a.get(x)
        if lx is not None:
            if lx.axis != 1:
                a.freeze(lx.units, f"Gemm {node.name!r}: features are not on axis 1")
            else:
                a.add_consumer(node, 0, x)
        n_out = B.shape[0] if int(node.attrs.get("transB", 0)) else B.shape[1]
        C = _const(c) if c is not None else None
        out = node.outputs[0]
        units = a.new_units(node, n_out)
        if C is not None and C.ndim == 2 and C.shape[0] != 1:
            a.freeze(units, f"Gemm {node.name!r}: bias C varies along the batch axis")
        a.set(out, Labels(1, units))
        a.add_producer(node, out)

    def rewrite(self, s, node):
        keep_in, keep_out = s.keep(node.inputs[0]), s.keep(node.outputs[0])
        B = _const(node.inputs[1])
        trans = int(node.attrs.get("transB", 0))
        in_ax, out_ax = (1, 0) if trans else (0, 1)
        new = B
        if keep_in is not None:
            new = np.compress(keep_in, new, axis=in_ax)
        if keep_out is not None:
            new = np.compress(keep_out, new, axis=out_ax)
        if new is not B:
            s.set_const(node, 1, new)
        if len(node.inputs) > 2 and not _is_empty(node.inputs[2]) and keep_out is not None:
            C = _const(node.inputs[2])
            if C.ndim >= 1 and C.shape[-1] == keep_out.shape[0]:
                s.set_const(node, 2, np.compress(keep_out, C, axis=C.ndim - 1))


class MatMulRule(OpRule):
    """MatMul with a constant 2-D right operand: last axis consumed and produced."""

    def propagate(self, a, node):
        x, w = node.inputs
        W = _const(w)
        if W is None or W.ndim != 2 or _const(x) is not None:
            a.freeze_inputs(node, f"MatMul {node.name!r} multiplies two activations (attention-like)")
            return
        if a.shared_const(w, node):
            a.freeze_inputs(node, f"MatMul {node.name!r} shares its weights")
            return
        rank = len(a.shape(x))
        lx = a.get(x)
        if lx is not None:
            if lx.axis != rank - 1:
                a.freeze(lx.units, f"MatMul {node.name!r}: channels are not on the last axis")
            else:
                a.add_consumer(node, 0, x)
        out = node.outputs[0]
        a.set(out, Labels(len(a.shape(out)) - 1, a.new_units(node, W.shape[1])))
        a.add_producer(node, out)

    def rewrite(self, s, node):
        keep_in, keep_out = s.keep(node.inputs[0]), s.keep(node.outputs[0])
        W = _const(node.inputs[1])
        new = W
        if keep_in is not None:
            new = new[keep_in]
        if keep_out is not None:
            new = new[:, keep_out]
        if new is not W:
            s.set_const(node, 1, new)


# ------------------------------------------------------ channel-wise ops

class PassRule(OpRule):
    """Unary elementwise op (activation, Identity, Dropout, Cast): labels pass through."""

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
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

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        if lx.axis != 1:
            a.freeze_inputs(node, f"{node.op} {node.name!r} works on NCHW but channels are on axis {lx.axis}")
            return
        a.set(node.outputs[0], Labels(1, lx.units))


class NormRule(OpRule):
    """BatchNormalization / InstanceNormalization: per-channel constants are sliced."""

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        params = [t for t in node.inputs[1:] if not _is_empty(t)]
        if lx.axis != 1 or any(_const(t) is None for t in params) or any(a.shared_const(t, node) for t in params):
            a.freeze_inputs(node, f"{node.op} {node.name!r}: channels not on axis 1 or run-time/shared parameters")
            return
        a.set(node.outputs[0], Labels(1, lx.units))

    def rewrite(self, s, node):
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

    def propagate(self, a, node):
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
                a.uf.union(int(units[j]), int(lt.units[j]))
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

    def rewrite(self, s, node):
        out = node.outputs[0]
        keep = s.keep(out)
        if keep is None:
            return
        lab = s.a.get(out)
        out_rank = len(s.a.shape(out))
        for i, t in enumerate(node.inputs):
            v = _const(t)
            if v is None:
                continue
            ax = _const_channel_axis(out_rank, lab.axis, v)
            if ax is not None and v.shape[ax] == keep.shape[0] and keep.shape[0] > 1:
                s.set_const(node, i, np.compress(keep, v, axis=ax))


class ClipRule(PassRule):
    """Clip with scalar min/max (ReLU6, the clip of a written-out hard-swish)."""


# ------------------------------------------------------ rearranging ops

def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


class ConcatRule(OpRule):
    """Concat on the channel axis concatenates labels; on another axis it unites them."""

    def propagate(self, a, node):
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
                a.uf.union(int(units[j]), int(lt.units[j]))
        a.set(node.outputs[0], Labels(ch, units))


class SplitRule(OpRule):
    """Split on the channel axis slices labels; split sizes are rewritten."""

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        rank = len(a.shape(node.inputs[0]))
        axis = _norm_axis(int(node.attrs.get("axis", 0)), rank)
        if axis != lx.axis:
            for o in node.outputs:
                a.set(o, Labels(lx.axis, lx.units))
            return
        if len(node.inputs) > 1 and not _is_empty(node.inputs[1]) and _const(node.inputs[1]) is None:
            a.freeze_inputs(node, f"Split {node.name!r}: sizes computed at run time")
            return
        start = 0
        for o in node.outputs:
            n = a.shape(o)[axis]
            a.set(o, Labels(axis, lx.units[start:start + n]))
            start += n

    def rewrite(self, s, node):
        lx = s.a.get(node.inputs[0])
        if lx is None or s.keep(node.inputs[0]) is None:
            return
        rank = len(s.a.shape(node.inputs[0]))
        if _norm_axis(int(node.attrs.get("axis", 0)), rank) != lx.axis:
            return
        sizes = np.array([int(s.keep(o).sum()) if s.keep(o) is not None else s.a.shape(o)[lx.axis]
                          for o in node.outputs], dtype=np.int64)
        if len(node.inputs) > 1 and not _is_empty(node.inputs[1]):
            s.set_const(node, 1, sizes)
        else:
            node.attrs["split"] = [int(v) for v in sizes]
            node.attrs.pop("num_outputs", None)


class SliceRule(OpRule):
    """Slice: other axes pass; a contiguous step-1 slice of the channel axis shifts labels."""

    def _params(self, a, node):
        vals = [_const(t) if i < len(node.inputs) and not _is_empty(t) else None
                for i, t in enumerate(node.inputs[1:5], start=1)]
        while len(vals) < 4:
            vals.append(None)
        starts, ends, axes, steps = vals
        rank = len(a.shape(node.inputs[0]))
        if starts is None or ends is None:
            return None
        if axes is None:
            axes = np.arange(len(starts))
        if steps is None:
            steps = np.ones(len(starts), dtype=np.int64)
        return starts, ends, [_norm_axis(int(x), rank) for x in axes], steps

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
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

    def rewrite(self, s, node):
        lx = s.a.get(node.inputs[0])
        keep = s.keep(node.inputs[0])
        if lx is None or keep is None:
            return
        starts, ends, axes, _ = self._params(s.a, node)
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


class PadRule(OpRule):
    """Pad: spatial pads pass; zero pads on the channel axis add zero units.

    ResNet's option-A shortcut pads the channel axis with zeros; the added
    channels are born as *zero units* that the residual Add then unites with
    the real channels of the other branch. Removing such a unit shrinks the
    pad amount, so the shortcut stays exact.
    """

    def _pads(self, a, node):
        rank = len(a.shape(node.inputs[0]))
        if len(node.inputs) > 1 and not _is_empty(node.inputs[1]):
            pads = _const(node.inputs[1])
        else:
            pads = np.asarray(node.attrs.get("pads", [0] * 2 * rank), dtype=np.int64)
        if pads is None:
            return None, None
        axes = list(range(rank))
        if len(node.inputs) > 3 and not _is_empty(node.inputs[3]):
            ax = _const(node.inputs[3])
            if ax is None:
                return None, None
            axes = [_norm_axis(int(x), rank) for x in ax]
        n = len(axes)
        full = np.zeros(2 * rank, dtype=np.int64)
        for i, axis in enumerate(axes):
            full[axis], full[rank + axis] = pads[i], pads[n + i]
        return full, axes

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
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
        value = _const(node.inputs[2]) if len(node.inputs) > 2 and not _is_empty(node.inputs[2]) else np.zeros(1)
        if mode != "constant" or value is None or float(np.asarray(value).reshape(-1)[0]) != 0.0 or before < 0 or after < 0:
            a.freeze_inputs(node, f"Pad {node.name!r} on the channel axis is not a zero pad")
            return
        zb = a.new_units(node, before, zero=True)
        za = a.new_units(node, after, zero=True)
        a.set(node.outputs[0], Labels(lx.axis, np.concatenate([zb, lx.units, za])))

    def rewrite(self, s, node):
        lx = s.a.get(node.inputs[0])
        keep_out = s.keep(node.outputs[0])
        if lx is None or keep_out is None:
            return
        full, axes = self._pads(s.a, node)
        rank = len(s.a.shape(node.inputs[0]))
        before, after = int(full[lx.axis]), int(full[rank + lx.axis])
        if before == 0 and after == 0:
            return
        new_before = int(keep_out[:before].sum())
        new_after = int(keep_out[keep_out.shape[0] - after:].sum()) if after else 0
        full = full.copy()
        full[lx.axis], full[rank + lx.axis] = new_before, new_after
        if len(node.inputs) > 1 and not _is_empty(node.inputs[1]):
            n = len(axes)
            pads = np.array([full[ax] for ax in axes] + [full[rank + ax] for ax in axes], dtype=np.int64)
            assert len(pads) == 2 * n
            s.set_const(node, 1, pads)
        else:
            node.attrs["pads"] = [int(v) for v in full]


class TransposeRule(OpRule):
    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        rank = len(a.shape(node.inputs[0]))
        perm = list(node.attrs.get("perm", list(range(rank))[::-1]))
        a.set(node.outputs[0], Labels(perm.index(lx.axis), lx.units))


def _merge_labels(in_shape: tuple, lx: Labels, start: int, stop: int) -> np.ndarray:
    """Labels of the axis made by merging in_shape[start:stop] (C order), channel inside."""
    sub = in_shape[start:stop]
    idx = np.indices(sub)[lx.axis - start].reshape(-1)
    return lx.units[idx]


class FlattenRule(OpRule):
    """Flatten from an axis at or before the channel axis: each channel owns a block of rows."""

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        shape = a.shape(node.inputs[0])
        k = _norm_axis(int(node.attrs.get("axis", 1)), len(shape))
        if k == 0 or lx.axis < k:
            a.freeze_inputs(node, f"Flatten {node.name!r} merges the channel axis with the batch axis")
            return
        a.set(node.outputs[0], Labels(1, _merge_labels(shape, lx, k, len(shape))))


class ReshapeRule(OpRule):
    """Reshape that keeps the channel axis, or merges it with neighbouring axes.

    The mapping is read off the probed shapes; a target shape that hard-codes
    a channel-dependent size is rewritten when it is a constant, and the
    group is frozen when it is computed at run time with an explicit size.
    """

    def _mapping(self, a, node):
        ins, outs = a.shape(node.inputs[0]), a.shape(node.outputs[0])
        lx = a.get(node.inputs[0])
        p = 0
        while p < min(len(ins), len(outs)) and ins[p] == outs[p] and p <= lx.axis:
            if p == lx.axis:
                return ("keep", p, p, p + 1)
            p += 1
        s = 0
        while s < min(len(ins), len(outs)) - p and ins[-1 - s] == outs[-1 - s]:
            if len(ins) - 1 - s == lx.axis:
                return ("keep", len(outs) - 1 - s, len(outs) - 1 - s, len(outs) - s)
            s += 1
        mid_in = ins[p:len(ins) - s]
        mid_out = outs[p:len(outs) - s]
        if len(mid_out) == 1 and p <= lx.axis < len(ins) - s and int(np.prod(mid_in)) == mid_out[0]:
            return ("merge", p, p, len(ins) - s)
        return None

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        m = self._mapping(a, node)
        if m is None:
            a.freeze_inputs(node, f"Reshape {node.name!r} {a.shape(node.inputs[0])}->{a.shape(node.outputs[0])} "
                                  "splits or mixes the channel axis")
            return
        kind, out_axis, start, stop = m
        target = _const(node.inputs[1])
        if target is None:
            value = a.probe.int_values.get(node.inputs[1].name)
            if value is None or int(value[out_axis]) not in (-1,) and not (kind == "keep" and int(value[out_axis]) == 0):
                a.freeze_inputs(node, f"Reshape {node.name!r}: target shape computed at run time "
                                      "with an explicit channel-dependent size")
                return
        elif a.shared_const(node.inputs[1], node) and int(target[out_axis]) not in (0, -1):
            a.freeze_inputs(node, f"Reshape {node.name!r}: shared target shape")
            return
        if kind == "keep":
            a.set(node.outputs[0], Labels(out_axis, lx.units))
        else:
            a.set(node.outputs[0], Labels(out_axis, _merge_labels(a.shape(node.inputs[0]), lx, start, stop)))

    def rewrite(self, s, node):
        keep_out = s.keep(node.outputs[0])
        target = _const(node.inputs[1])
        if keep_out is None or target is None:
            return
        out_axis = s.a.get(node.outputs[0]).axis
        v = int(target[out_axis])
        if v in (0, -1):
            return
        new = target.copy()
        new[out_axis] = v // keep_out.shape[0] * int(keep_out.sum())
        s.set_const(node, 1, new)


class SqueezeRule(OpRule):
    """Squeeze/Unsqueeze of axes other than the channel axis shift the channel axis."""

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        ins, outs = a.shape(node.inputs[0]), a.shape(node.outputs[0])
        if node.op == "Squeeze":
            removed = [i for i in range(len(ins)) if ins[i] == 1]
            axes = node.attrs.get("axes")
            if len(node.inputs) > 1 and not _is_empty(node.inputs[1]):
                axes = _const(node.inputs[1])
            if axes is not None:
                removed = [_norm_axis(int(x), len(ins)) for x in np.asarray(axes).reshape(-1)]
            if lx.axis in removed:
                a.freeze_inputs(node, f"Squeeze {node.name!r} removes the channel axis")
                return
            a.set(node.outputs[0], Labels(lx.axis - sum(1 for r in removed if r < lx.axis), lx.units))
            return
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and not _is_empty(node.inputs[1]):
            axes = _const(node.inputs[1])
        if axes is None:
            a.freeze_inputs(node, f"Unsqueeze {node.name!r}: axes computed at run time")
            return
        added = sorted(_norm_axis(int(x), len(outs)) for x in np.asarray(axes).reshape(-1))
        pos = lx.axis
        for ax in added:
            if ax <= pos:
                pos += 1
        a.set(node.outputs[0], Labels(pos, lx.units))


class ReduceRule(OpRule):
    """Reductions over axes other than the channel axis."""

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        rank = len(a.shape(node.inputs[0]))
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and not _is_empty(node.inputs[1]):
            axes = _const(node.inputs[1])
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


class SoftmaxRule(OpRule):
    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        rank = len(a.shape(node.inputs[0]))
        axis = _norm_axis(int(node.attrs.get("axis", -1)), rank)
        if axis == lx.axis:
            a.freeze_inputs(node, f"{node.op} {node.name!r} normalises over the channel axis")
            return
        a.set(node.outputs[0], Labels(lx.axis, lx.units))


class ResizeRule(OpRule):
    """Resize/Upsample with a scale of 1 (or a constant size) on the channel axis."""

    def propagate(self, a, node):
        lx = a.get(node.inputs[0])
        if lx is None:
            return
        if a.shape(node.outputs[0])[lx.axis] != lx.size:
            a.freeze_inputs(node, f"{node.op} {node.name!r} resizes the channel axis")
            return
        sizes = node.inputs[3] if len(node.inputs) > 3 and not _is_empty(node.inputs[3]) else None
        if sizes is not None and _const(sizes) is None:
            a.freeze_inputs(node, f"{node.op} {node.name!r}: output sizes computed at run time")
            return
        a.set(node.outputs[0], Labels(lx.axis, lx.units))

    def rewrite(self, s, node):
        keep = s.keep(node.inputs[0])
        if keep is None or len(node.inputs) <= 3 or _is_empty(node.inputs[3]):
            return
        sizes = _const(node.inputs[3]).copy()
        sizes[s.a.get(node.inputs[0]).axis] = int(keep.sum())
        s.set_const(node, 3, sizes)


class ShapeRule(OpRule):
    """Shape reads the channel count but carries no channels; its users are checked where they matter."""

    def propagate(self, a, node):
        return


_UNARY = (
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "ThresholdedRelu", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Not", "IsNaN", "Clip",
)
_SPATIAL = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
            "DepthToSpace_never")
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean")

RULES: dict[str, OpRule] = {
    "Conv": ConvRule(),
    "ConvTranspose": ConvTransposeRule(),
    "Gemm": GemmRule(),
    "MatMul": MatMulRule(),
    "BatchNormalization": NormRule(),
    "InstanceNormalization": NormRule(),
    "Concat": ConcatRule(),
    "Split": SplitRule(),
    "Slice": SliceRule(),
    "Pad": PadRule(),
    "Transpose": TransposeRule(),
    "Flatten": FlattenRule(),
    "Reshape": ReshapeRule(),
    "Squeeze": SqueezeRule(),
    "Unsqueeze": SqueezeRule(),
    "ReduceMean": ReduceRule(), "ReduceSum": ReduceRule(), "ReduceMax": ReduceRule(), "ReduceMin": ReduceRule(),
    "Softmax": SoftmaxRule(), "LogSoftmax": SoftmaxRule(),
    "Resize": ResizeRule(), "Upsample": ResizeRule(),
    "Shape": ShapeRule(),
}
for _op in _UNARY:
    RULES[_op] = PassRule()
for _op in _SPATIAL:
    RULES[_op] = SpatialRule()
for _op in _ELEMENTWISE:
    RULES[_op] = ElementwiseRule()

DEFAULT_RULE = OpRule()


def rule_for(op: str) -> OpRule:
    return RULES.get(op, DEFAULT_RULE)
