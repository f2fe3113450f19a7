"""The rule contract, its safe default, and the small helpers every rule family shares.

``propagate`` runs during analysis (in topological order) and must either
label the outputs, freeze what it cannot map (saying why), or both.
``rewrite`` runs during surgery and slices the op's own constants and
attributes to the channels kept in its input and output tensors.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels
from .context import AnalysisContext, RewriteContext


def _const(t: Optional[gs.Tensor]) -> Optional[np.ndarray]:
    """Values of a constant input, None for an activation."""
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _is_empty(t: Optional[gs.Tensor]) -> bool:
    """An omitted optional input (absent, or the empty name)."""
    return t is None or (isinstance(t, gs.Variable) and t.name == "")


def _input(node: gs.Node, index: int) -> Optional[gs.Tensor]:
    """Optional input ``index`` of ``node``, None when omitted."""
    if len(node.inputs) > index and not _is_empty(node.inputs[index]):
        return node.inputs[index]
    return None


def _outer_tensors(node: gs.Node) -> list[gs.Tensor]:
    """Tensors the sub-graphs of ``node`` (If/Loop/Scan bodies) read, at any depth: their channels
    are consumed there, where no rule looks, so whatever carries channels into them is frozen."""
    found: list[gs.Tensor] = []
    for value in node.attrs.values():
        for g in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(g, gs.Graph):
                for inner in g.nodes:
                    found.extend(t for t in inner.inputs if t is not None)
                    found.extend(_outer_tensors(inner))
    return found


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


class OpRule:
    """Base rule: freeze whatever reaches the op (the safe default: unknown means untouched)."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        custom = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx", None) else ""
        a.freeze_inputs(node, f"{node.op} node {node.name!r}{custom} is not understood by the channel analysis"
                        + (" (onnxprune.register_channel_rule adds a rule)" if custom else ""))
        for t in _outer_tensors(node):
            lt = a.get(t)
            if lt is not None:
                a.freeze(lt.units, f"used inside a sub-graph of {node.op} node {node.name!r}")

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        """Nothing of the op depends on the channel count."""


class FollowRule(OpRule):
    """A rule with nothing to do unless its first input carries channels: it then ``follow``s them."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        lx = a.get(node.inputs[0])
        if lx is not None:
            self.follow(a, node, lx)

    def follow(self, a: AnalysisContext, node: gs.Node, lx: Labels) -> None:
        raise NotImplementedError
