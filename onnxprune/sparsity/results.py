"""What ``sparsify`` and ``sparsity_info`` return: per-weight statistics, storage, verification.

``WeightInfo`` is one weight tensor, possibly shared by several nodes
(``onnxprune.pruning.api.LayerInfo`` is a pruning layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx


@dataclass(frozen=True)
class _Weight:
    """A weight tensor and the nodes that consume it."""

    name: str
    op_types: tuple[str, ...]
    nodes: tuple[str, ...]
    shape: tuple[int, ...]
    size: int


class _Totals:
    """Totals over ``layers``; ``_ZEROS`` names each layer's count of zeros."""

    _ZEROS = "zeros"

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)  # type: ignore[attr-defined]

    @property
    def total_zeros(self) -> int:
        return sum(getattr(layer, self._ZEROS) for layer in self.layers)  # type: ignore[attr-defined]

    @property
    def sparsity(self) -> float:
        return self.total_zeros / self.total_size if self.total_size else 0.0


@dataclass(frozen=True)
class LayerStats(_Weight):
    """One weight before and after the pass."""

    zeros_before: int
    zeros_after: int
    zero_channels: int  # all-zero output channels (structured zeros) after the pass
    channels: int
    storage: str  # sparse | dense
    source: str  # initializer | constant
    refit: str

    @property
    def sparsity_before(self) -> float:
        return self.zeros_before / self.size

    @property
    def sparsity_after(self) -> float:
        return self.zeros_after / self.size


@dataclass(frozen=True)
class StorageDecision:
    """How the weights were stored and why."""

    format: str  # sparse | dense
    reason: str
    dense_bytes: int
    sparse_bytes: int | None
    sparse_tensors: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerificationReport:
    """What was checked on the written model."""

    ok: bool
    message: str
    inputs: str
    output_change: float  # relative L2 change of the outputs against the input model


@dataclass(frozen=True)
class SparsifyResult(_Totals):
    """The sparsified model and everything the CLI reports."""

    model: onnx.ModelProto
    layers: tuple[LayerStats, ...]
    storage: StorageDecision
    verification: VerificationReport
    masks: Mapping[str, np.ndarray]
    history: tuple[dict[str, Any], ...]
    steps: tuple[float, ...]
    notes: tuple[str, ...] = ()
    output_path: Path | None = None

    _ZEROS = "zeros_after"


@dataclass(frozen=True)
class WeightInfo(_Weight):
    """Sparsity of one weight of a model as it is, with its recorded history."""

    zeros: int
    zero_channels: int
    channels: int
    storage: str
    history: tuple[float | None, ...]  # sparsity after each recorded pass (None: not in that pass)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size


@dataclass(frozen=True)
class SparsityInfo(_Totals):
    """Per-layer sparsity of a model and the passes that produced it."""

    layers: tuple[WeightInfo, ...]
    history: tuple[dict[str, Any], ...]
    other_metadata: Mapping[str, str] = field(default_factory=dict)
