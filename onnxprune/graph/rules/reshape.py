"""Reshape: keep the channel axis, merge it with its neighbours, or split it into attention heads.

The mapping is read off the probed shapes. A target entry that hard-codes a
channel-dependent size is rewritten in surgery where it is a constant: the
target itself, or the constant piece of a ``Concat`` that builds the target
at run time (Paddle's and PyTorch's ``[0, Shape(x)[1], 8, 15]``); anything
else explicit freezes the group. A split of the channel axis is allowed only
as the head split of multi-head attention (:mod:`.attention`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels
from ..shape_targets import shape_source
from .attention import head_units, prove_head_split
from .base import FollowRule, _const
from .context import AnalysisContext, RewriteContext, ShapeContext
from .rearranging import _merge_labels

Slot = tuple[gs.Node, int, int]  # (node, input index, offset in that constant) holding one target entry


def _target_slot(a: ShapeContext, node: gs.Node, out_axis: int) -> Optional[Slot]:
    """Where the target's entry ``out_axis`` is stored as a constant, or None when it is computed at run time."""
    target = node.inputs[1]
    if _const(target) is not None:
        return node, 1, out_axis
    if len(target.inputs) != 1 or target.inputs[0].op != "Concat" or len(target.outputs) != 1:
        return None  # a target built once for several Reshapes would be rewritten for all of them
    concat = target.inputs[0]
    pos = 0
    for k, piece in enumerate(concat.inputs):
        v = _const(piece)
        shape = v.shape if v is not None else a.shape(piece)
        if len(shape) != 1:
            return None
        if pos <= out_axis < pos + shape[0]:
            return (concat, k, out_axis - pos) if v is not None else None
        pos += shape[0]
    return None


def _pieces_independent(a: AnalysisContext, concat: gs.Node) -> bool:
    """Every run-time piece of a target is a dim of Shape(X) on an axis of X that carries no prunable channels,
    so it keeps its value when channels go (only the constant channel entry is rewritten)."""
    for piece in concat.inputs:
        if _const(piece) is not None:
            continue
        found = shape_source(piece, lambda x: len(a.shape(x)))
        if found is None:
            return False
        lab = a.get(found[0])
        if lab is not None and lab.axis in found[1]:
            return False
    return True


def _slot_value(slot: Slot) -> int:
    node, index, offset = slot
    return int(np.asarray(_const(node.inputs[index])).reshape(-1)[offset])


def _segments(ins: tuple[int, ...], outs: tuple[int, ...]) -> Optional[list[tuple[range, range]]]:
    """Runs of input and output axes with equal products, cut wherever both cumulative products meet.

    (B*T, D) -> (B, T, H, hd) is [(0,), (0, 1)] and [(1,), (2, 3)]: each run is
    reshaped on its own, so a channel axis alone in its input run is split
    into the run's output axes, whatever the other runs do.
    """
    i = j = 0
    segs: list[tuple[range, range]] = []
    while i < len(ins) or j < len(outs):
        si, sj, pi, pj = i, j, 1, 1
        if i < len(ins):
            pi, i = pi * ins[i], i + 1
        if j < len(outs):
            pj, j = pj * outs[j], j + 1
        while pi != pj:
            if pi < pj and i < len(ins):
                pi, i = pi * ins[i], i + 1
            elif pj < pi and j < len(outs):
                pj, j = pj * outs[j], j + 1
            else:
                return None
        segs.append((range(si, i), range(sj, j)))
    return segs


class ReshapeRule(FollowRule):
    """Reshape that keeps the channel axis, merges it with neighbouring axes, or splits it into heads."""

    def _mapping(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> Optional[tuple[str, int, int, int]]:
        ins, outs = a.shape(node.inputs[0]), a.shape(node.outputs[0])
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
        for run_in, run_out in _segments(ins, outs) or []:  # the batch axes regrouped too (Gemm projections)
            if lx.axis not in run_in or run_in.start == 0 or run_out.start == 0:  # never into the batch axis
                continue
            if len(run_in) > 1 and len(run_out) == 1:
                return ("merge", run_out[0], run_in.start, run_in.stop)
            if len(run_in) == 1 and len(run_out) > 1:
                return ("split", run_out.start, run_out.start, run_out.stop)
        return None

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        ins, outs = a.shape(node.inputs[0]), a.shape(node.outputs[0])
        m = self._mapping(a, node, lx)
        if m is None:
            a.freeze_inputs(node, f"Reshape {node.name!r} {ins}->{outs} splits or mixes the channel axis")
            return
        kind, out_axis = m[0], m[1]
        if kind == "split":
            split = tuple(outs[m[2]:m[3]])
            head, why = prove_head_split(a, node, split, m[2])
            if head is None:
                a.freeze_inputs(node, f"Reshape {node.name!r} {ins}->{outs} splits the channel axis, "
                                      f"not into attention heads: {why}")
                return
            out_axis += head
        why = self._target_refusal(a, node, out_axis, kind, outs[out_axis])
        if why:
            a.freeze_inputs(node, f"Reshape {node.name!r}: {why}")
            return
        if kind == "keep":
            a.set(node.outputs[0], Labels(out_axis, lx.units))
        elif kind == "merge":
            a.set(node.outputs[0], Labels(out_axis, _merge_labels(ins, lx, m[2], m[3])))
        else:
            units = head_units(a, lx, split, head)
            a.mark_heads(units, node.name)
            a.set(node.outputs[0], Labels(out_axis, units))

    @staticmethod
    def _target_refusal(a: AnalysisContext, node: gs.Node, out_axis: int, kind: str, size: int) -> str:
        """Why the target entry of the channel axis cannot follow a removal ("" when it can)."""
        slot = _target_slot(a, node, out_axis)
        if slot is not None:
            value: Optional[int] = _slot_value(slot)
        else:
            known = a.known_ints(node.inputs[1].name)
            value = None if known is None else int(known[out_axis])
        if value == -1 or (kind == "keep" and value == 0):
            return ""
        if slot is None:
            return "target shape computed at run time with an explicit channel-dependent size"
        if slot[0] is not node and not _pieces_independent(a, slot[0]):
            return "a run-time entry of its target is not a dim read off an unpruned axis"
        if value != size:
            return f"target entry {value} of the channel axis is not its size {size}"
        return ""

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        keep_out = s.keep(node.outputs[0])
        if keep_out is None:
            return
        slot = _target_slot(s, node, s.labels(node.outputs[0]).axis)
        if slot is None:
            return
        v = _slot_value(slot)
        if v in (0, -1):
            return
        owner, index, offset = slot
        new = np.asarray(_const(owner.inputs[index])).copy()
        new.reshape(-1)[offset] = v // keep_out.shape[0] * int(keep_out.sum())
        s.set_const(owner, index, new)
