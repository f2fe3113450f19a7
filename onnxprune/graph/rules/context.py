"""What a channel rule may see: the two narrow contexts it is handed.

Rules used to reach into the analysis (its union-find, its probe) and into
the surgery's analysis; every such reach tied a rule to an implementation.
These Protocols are the whole interface: :class:`~onnxprune.graph.analysis.Analysis`
implements :class:`AnalysisContext`, :class:`~onnxprune.graph.surgery.Surgery`
implements :class:`RewriteContext`.
"""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels


class ShapeContext(Protocol):
    """Anything that knows the probed shape of a tensor."""

    def shape(self, t: gs.Tensor) -> tuple[int, ...]:
        """Concrete shape at the probe batch; raises ShapeUnknownError when the probe saw none."""
        ...


class AnalysisContext(ShapeContext, Protocol):
    """What ``OpRule.propagate`` may read and record during the analysis walk."""

    def get(self, t: gs.Tensor) -> Optional[Labels]:
        """Labels of an activation, or None when it carries no prunable channels."""
        ...

    def set(self, t: gs.Tensor, labels: Labels) -> None:
        ...

    def new_units(self, node: gs.Node, n: int, zero: bool = False) -> np.ndarray:
        """``n`` fresh unit ids born at ``node`` (``zero``: inserted zero channels)."""
        ...

    def unite(self, u: int, v: int) -> int:
        """Couple two units (they are removed together); returns the root of the merged class."""
        ...

    def known_ints(self, tensor_name: str) -> Optional[np.ndarray]:
        """Values of a small integer tensor seen by the probe (e.g. a run-time Reshape target)."""
        ...

    def freeze(self, units: np.ndarray, reason: str) -> None:
        ...

    def freeze_inputs(self, node: gs.Node, reason: str) -> None:
        """Freeze every unit reaching ``node``."""
        ...

    def shared_const(self, t: gs.Tensor, node: gs.Node) -> bool:
        """True when ``t`` is a constant that other nodes use too (it cannot be sliced for one)."""
        ...

    def add_consumer(self, node: gs.Node, index: int, t: gs.Tensor) -> None:
        """Record that input ``index`` of ``node`` multiplies the channels of ``t`` by weights."""
        ...

    def add_producer(self, node: gs.Node, out: gs.Tensor, grouped: bool = False) -> None:
        """Record ``node`` as a layer whose output channels (of ``out``) are prunable kernels."""
        ...

    def mark_heads(self, units: np.ndarray, block: str) -> None:
        """Record ``units`` as the attention heads of ``block`` (what inspect calls them)."""
        ...


class RewriteContext(ShapeContext, Protocol):
    """What ``OpRule.rewrite`` may read and change during surgery."""

    def keep(self, t: gs.Tensor) -> Optional[np.ndarray]:
        """Boolean mask of the kept channels of ``t``; None when nothing of it changes."""
        ...

    def labels(self, t: gs.Tensor) -> Optional[Labels]:
        """The labels the analysis gave ``t`` (before removal)."""
        ...

    def set_const(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Replace constant input ``index`` of ``node`` (a shared constant is copied first)."""
        ...
