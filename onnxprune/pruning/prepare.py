"""Everything onnxprune knows about one model: normalised proto, probed shapes, analysis, cost model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import onnx

from ..graph.macs import CostModel
from ..graph.analysis import Analysis
from ..graph.external import needs_external
from ..graph.io import ModelLike, load_model
from ..graph.probe import Probe, graph_input_dims, probe
from ..passes.normalize import NormalizePass

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    kept_original: Optional[onnx.ModelProto]
    model: onnx.ModelProto
    probe: Probe
    analysis: Analysis
    cost: CostModel
    source: Optional[str]
    memo: dict = field(default_factory=dict)
    """Results a run may need again (scores, sensitivity curves): a back-off re-plans without re-measuring."""

    @property
    def original(self) -> onnx.ModelProto:
        """The model as given. A model over 2 GB read from a file is not kept beside its normalised
        copy (that would hold its weights twice for the whole run): it is read again where needed."""
        return self.kept_original if self.kept_original is not None else load_model(self.source)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.probe.input_shapes

    def with_batch(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Input shapes at ``batch`` rows; an input that fixes its batch (a static export) keeps its own."""
        dims = graph_input_dims(self.model)
        return {k: (dims[k][0] if dims.get(k) and isinstance(dims[k][0], int) else batch,) + tuple(v[1:])
                for k, v in self.probe.input_shapes.items()}


def prepare(model: ModelLike, input_shapes: Optional[dict[str, Sequence[int]]] = None,
            exclude: Iterable[str] = (), *, verify: bool = True, loaded: Optional[onnx.ModelProto] = None) -> Prepared:
    """Load, normalise (a verified pass), probe and analyse ``model`` (a path or a ModelProto).

    ``verify=False`` skips the normalisation check, for models onnxprune wrote
    itself (the steps of an iterative schedule). ``loaded``: ``model`` as
    :func:`load_model` already read and checked it (a run reads its model once).
    """
    source = None if isinstance(model, onnx.ModelProto) else str(model)
    original = loaded if loaded is not None else load_model(model)
    normalized = NormalizePass(input_shapes, verify=verify)(original)
    normal, shapes = normalized.model, normalized.input_shapes
    kept = None if source is not None and needs_external(original) else original
    del original
    pr = probe(normal, shapes)
    analysis = Analysis(normal, pr)
    analysis.exclude(exclude)
    return Prepared(kept, normal, pr, analysis, CostModel(analysis), source)

