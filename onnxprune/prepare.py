"""Everything onnxprune knows about one model: normalised proto, probed shapes, analysis, cost model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import onnx

from .cost import CostModel
from .graph.analysis import Analysis
from .graph.io import ModelLike, load_model
from .graph.normalize import normalize
from .graph.probe import Probe, probe, resolve_input_shapes

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    original: onnx.ModelProto
    model: onnx.ModelProto
    probe: Probe
    analysis: Analysis
    cost: CostModel
    source: Optional[str]

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.probe.input_shapes

    def with_batch(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {k: (batch,) + tuple(v[1:]) for k, v in self.probe.input_shapes.items()}


def prepare(model: ModelLike, input_shapes: Optional[dict[str, Sequence[int]]] = None,
            exclude: Iterable[str] = ()) -> Prepared:
    """Load, normalise, probe and analyse ``model`` (a path or a ModelProto)."""
    source = None if isinstance(model, onnx.ModelProto) else str(model)
    original = load_model(model)
    normal = normalize(original)
    shapes = resolve_input_shapes(normal, {k: list(v) for k, v in (input_shapes or {}).items()})
    pr = probe(normal, shapes)
    analysis = Analysis(normal, pr)
    analysis.exclude(exclude)
    return Prepared(original, normal, pr, analysis, CostModel(analysis), source)

