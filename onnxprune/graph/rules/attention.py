"""Attention heads as prunable units, decomposed or fused.

Decomposed multi-head attention (what PyTorch, Paddle and hand-written
exports give)::

    x -> MatMul(Wq)(+b) -> Reshape(B,T,H,hd) -> Transpose -> MatMul(Q, K^T) -> scale/mask -> Softmax
      -> MatMul(., V) -> Transpose -> Reshape(B,T,H*hd) -> MatMul(Wo)

A head is one unit: the Reshape that splits the projected channels into
(heads, head_dim) — proved by :func:`prove_head_split` to feed only
attention MatMuls with the heads on a batch axis — unites each head's
head_dim columns (of Q, K and V, and of a merged QKV projection's three
parts) into one unit labelled on the head axis. From there the generic rules
carry it: :func:`activation_matmul` unites the heads of its two operands,
Softmax and the scale/mask ops pass it, the merging Reshape spreads it back
over head_dim channels and the output projection consumes it, so the masked
reference zeroes exactly that head's output. Fused ``MultiHeadAttention``
(com.microsoft) and ai.onnx ``Attention`` (opset 23, also grouped-query)
label their inputs and output per head (per KV group) and rewrite their head
counts; com.microsoft ``Attention`` (merged QKV weight inside) is frozen.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels
from .base import FollowRule, _const, _input, _norm_axis
from .context import AnalysisContext, ShapeContext

# ops a split head axis may pass on its way to the attention MatMuls without changing what a head is
_TRACE_UNARY = frozenset(("Softmax", "Cast", "Identity", "Dropout"))
_TRACE_BROADCAST = frozenset(("Add", "Sub", "Mul", "Div", "Where"))  # ranks align on the right
_MAX_TRACE = 64  # nodes a proof may visit from one Reshape (a block has about 12)


class _Trace:
    """Where each axis of a head split sits along one path (None once selected away)."""

    def __init__(self, pos: list[Optional[int]], rank: int, selected: frozenset[int] = frozenset()) -> None:
        self.pos, self.rank, self.selected = pos, rank, selected

    def moved(self, mapping, rank: int, selected: frozenset[int] = frozenset()) -> "_Trace":
        return _Trace([None if p is None else mapping(p) for p in self.pos], rank, self.selected | selected)

    def at(self, axis: int) -> Optional[int]:
        return next((i for i, p in enumerate(self.pos) if p == axis), None)


def _ints(node: gs.Node, index: int, attr: str) -> Optional[list[int]]:
    """Axes/indices from input ``index`` (newer opsets) or attribute ``attr``; None when computed at run time."""
    if _input(node, index) is not None:
        v = _const(node.inputs[index])
        return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]
    v = node.attrs.get(attr)
    return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]


def _step(a: ShapeContext, node: gs.Node, t: gs.Tensor, tr: _Trace) -> tuple[Optional[_Trace], str]:
    """The trace after ``node`` (reading ``t``), or (None, why the heads cannot be followed through it)."""
    out = node.outputs[0]
    rank_out = len(a.shape(out)) if node.op not in ("Split",) else len(a.shape(t))
    if node.op == "Transpose":
        perm = list(node.attrs.get("perm", list(range(tr.rank))[::-1]))
        return tr.moved(perm.index, tr.rank), ""
    if node.op in _TRACE_UNARY:
        if node.op == "Softmax" and tr.at(_norm_axis(int(node.attrs.get("axis", -1)), tr.rank)) is not None:
            return None, f"Softmax {node.name!r} normalises over a split axis"
        return tr.moved(lambda p: p, rank_out), ""
    if node.op in _TRACE_BROADCAST:
        return tr.moved(lambda p: p + rank_out - tr.rank, rank_out), ""
    if node.op in ("Slice", "Split"):
        shape_in = a.shape(t)
        axes = _slice_axes(a, node, tr.rank)
        if axes is None:
            return None, f"{node.op} {node.name!r} has bounds computed at run time"
        picked = set()
        for ax in axes:
            k = tr.at(ax)
            if k is None:
                continue
            if any(a.shape(o)[ax] != 1 for o in node.outputs) or shape_in[ax] == 1:
                return None, f"{node.op} {node.name!r} cuts a split axis other than into single entries"
            picked.add(k)
        return tr.moved(lambda p: p, tr.rank, frozenset(picked)), ""
    if node.op == "Squeeze":
        axes = _ints(node, 1, "axes")
        if axes is None:
            return None, f"Squeeze {node.name!r} has run-time axes"
        gone = sorted(_norm_axis(x, tr.rank) for x in axes)
        if any(tr.at(x) is not None and tr.at(x) not in tr.selected for x in gone):
            return None, f"Squeeze {node.name!r} removes a split axis that was not selected"
        pos = [None if p is None or p in gone else p - sum(1 for g in gone if g < p) for p in tr.pos]
        return _Trace(pos, tr.rank - len(gone), tr.selected), ""
    if node.op == "Unsqueeze":
        axes = _ints(node, 1, "axes")
        if axes is None:
            return None, f"Unsqueeze {node.name!r} has run-time axes"
        added = sorted(_norm_axis(x, rank_out) for x in axes)

        def shift(p: int) -> int:
            for ax in added:
                if ax <= p:
                    p += 1
            return p
        return tr.moved(shift, rank_out), ""
    if node.op == "Gather":
        axis = _norm_axis(int(node.attrs.get("axis", 0)), tr.rank)
        idx = _const(node.inputs[1])
        k = tr.at(axis)
        if idx is None or (k is not None and idx.ndim != 0):
            return None, f"Gather {node.name!r} picks along a split axis with run-time or several indices"
        if idx.ndim != 0:
            return tr.moved(lambda p: p if p < axis else p + idx.ndim - 1, rank_out), ""
        pos = [None if p is None or p == axis else p - (p > axis) for p in tr.pos]
        return _Trace(pos, rank_out, tr.selected | ({k} if k is not None else set())), ""
    return None, f"{node.op} {node.name!r} uses the split channels before any attention MatMul"


def _slice_axes(a: ShapeContext, node: gs.Node, rank: int) -> Optional[list[int]]:
    """Axes a Slice cuts or a Split splits (None when they are computed at run time)."""
    if node.op == "Split":
        return [_norm_axis(int(node.attrs.get("axis", 0)), rank)]
    if _input(node, 1) is None or _const(node.inputs[1]) is None or (
            _input(node, 3) is not None and _const(node.inputs[3]) is None):
        return None
    if _input(node, 3) is None:
        return list(range(len(_const(node.inputs[1]))))
    return [_norm_axis(int(x), rank) for x in _const(node.inputs[3])]


def _endpoint(a: ShapeContext, node: gs.Node, t: gs.Tensor, tr: _Trace) -> tuple[Optional[int], str]:
    """At a MatMul of two activations: the split axis that lies on a batch axis (the heads), or why none does."""
    if any(_const(x) is not None for x in node.inputs):
        return None, f"MatMul {node.name!r} multiplies the split channels by weights"
    rank = len(a.shape(t))
    live = [(k, p) for k, p in enumerate(tr.pos) if p is not None and k not in tr.selected]
    batch = [k for k, p in live if p < rank - 2]
    if len(batch) != 1 or rank < 3:
        return None, f"MatMul {node.name!r} does not see exactly one split axis on a batch axis"
    return batch[0], ""


def prove_head_split(a: ShapeContext, node: gs.Node, split: tuple[int, ...], first: int) -> tuple[Optional[int], str]:
    """Which of the Reshape's split axes (``split`` sizes, starting at output axis ``first``) holds the heads.

    Every path from the Reshape's output must reach a MatMul of two
    activations through Transpose, selection of a split axis (Slice or Split
    to width 1, then Squeeze; scalar Gather), scalar or broadcast
    elementwise ops and Softmax, and arrive with exactly one unselected split
    axis on a batch axis of that MatMul — the same one on every path.
    Returns (index into ``split``, "") or (None, why not).
    """
    rank = len(a.shape(node.outputs[0]))
    stack = [(node.outputs[0], _Trace([first + i for i in range(len(split))], rank))]
    heads: set[int] = set()
    visited = 0
    while stack:
        t, tr = stack.pop()
        for user in t.outputs:
            visited += 1
            if visited > _MAX_TRACE:
                return None, f"no attention MatMul within {_MAX_TRACE} nodes"
            if user.op == "MatMul":
                k, why = _endpoint(a, user, t, tr)
                if k is None:
                    return None, why
                heads.add(k)
                continue
            nxt, why = _step(a, user, t, tr)
            if nxt is None:
                return None, why
            stack.extend((o, nxt) for o in user.outputs if o.outputs)  # a graph output freezes on its own
    if len(heads) != 1:
        return None, ("it reaches no attention MatMul" if not heads
                      else "its paths put different split axes on the attention batch axis")
    return heads.pop(), ""


def head_units(a: AnalysisContext, lx: Labels, split: tuple[int, ...], head: int) -> np.ndarray:
    """Unite every channel of each head (all other split axes, e.g. head_dim and Q/K/V) into one unit per head."""
    coord = np.indices(split)[head].reshape(-1)
    units = np.empty(split[head], dtype=np.int64)
    for h in range(split[head]):
        members = lx.units[coord == h]
        root = int(members[0])
        for u in members[1:]:
            root = a.unite(root, int(u))
        units[h] = root
    return units


def activation_matmul(a: AnalysisContext, node: gs.Node) -> None:
    """MatMul of two activations (attention scores, context): heads on a batch axis unite, nothing else prunes.

    Batch axes are independent matrix products, so removing a slice of one
    removes it from both operands and the output. Channels on the two matrix
    axes are mixed (frozen), and so are heads meeting a run-time operand that
    carries that axis without labels.
    """
    out_rank = len(a.shape(node.outputs[0]))
    labelled = []
    for t in node.inputs:
        lt = a.get(t)
        if lt is None:
            continue
        rank = len(a.shape(t))
        if lt.axis >= rank - 2:
            a.freeze_inputs(node, f"MatMul {node.name!r} multiplies two activations over the channel axis")
            return
        labelled.append((lt.axis + out_rank - rank, lt))
    if not labelled:
        return
    if len({ax for ax, _ in labelled}) != 1 or len({lt.size for _, lt in labelled}) != 1:
        a.freeze_inputs(node, f"MatMul {node.name!r}: its operands carry heads on different axes or counts")
        return
    axis, units = labelled[0][0], labelled[0][1].units.copy()
    for _, lt in labelled[1:]:
        for j in range(units.size):
            a.unite(int(units[j]), int(lt.units[j]))
    for t in node.inputs:
        if a.get(t) is None:
            shape = a.shape(t)
            ax = axis - (out_rank - len(shape))
            if ax >= 0 and shape[ax] != 1:
                a.freeze_inputs(node, f"MatMul {node.name!r} combines heads with the unlabelled tensor {t.name!r}")
                return
    a.set(node.outputs[0], Labels(axis, units))


class GatherRule(FollowRule):
    """Gather with constant indices on an axis other than the channel axis (``qkv[0]``)."""

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        rank = len(a.shape(node.inputs[0]))
        axis = _norm_axis(int(node.attrs.get("axis", 0)), rank)
        idx = _const(node.inputs[1])
        if axis == lx.axis or idx is None:
            a.freeze_inputs(node, f"Gather {node.name!r} picks along the channel axis or by run-time indices")
            return
        new_axis = lx.axis if lx.axis < axis else lx.axis + idx.ndim - 1
        a.set(node.outputs[0], Labels(new_axis, lx.units))


class LayerNormRule(FollowRule):
    """LayerNormalization / RMSNormalization: every channel's output depends on all the normalised channels.

    Frozen with that reason: removing a hidden channel changes the mean and
    variance every other channel is normalised by, so no removal is exact.
    """

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        rank = len(a.shape(node.inputs[0]))
        axis = _norm_axis(int(node.attrs.get("axis", -1)), rank)
        where = "over the channel axis" if lx.axis >= axis else f"over axes {axis}.. after the channel axis"
        a.freeze_inputs(node, f"{node.op} {node.name!r} normalises {where} (the hidden size of a transformer "
                              "stays: each channel's output depends on every normalised channel)")
