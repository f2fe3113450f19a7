"""Before/after figures of a pruning run: parameters, MACs, file size, latency, fidelity, per-layer channels.

The data only; :mod:`onnxprune.report.prune` turns it into the one document
the terminal, the Markdown, and the HTML page render.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import onnx

from ..graph.external import serialized_size
from .groups import GroupImportance, group_of_layer
from .provenance import Provenance

if TYPE_CHECKING:  # pragma: no cover
    from ..fidelity.measure import Fidelity
    from ..pruning.plan import PruningPlan
    from ..pruning.prepare import Prepared
    from ..passes.verify import VerificationResult
    from .document import Document

PathLike = Union[str, os.PathLike]


@dataclass
class ModelStats:
    params: int
    macs: int
    size_bytes: int
    latency_ms: Optional[float] = None
    accuracy: Optional[float] = None
    fidelity: Optional["Fidelity"] = None  # onnxprune.fidelity.Fidelity: in the user's terms, on held-back rows


@dataclass
class LayerChange:
    name: str
    op: str
    before: int
    after: int
    group: Optional[int] = None  # its channel group: the layers of a group shrink together


@dataclass
class Report:
    before: ModelStats
    after: ModelStats
    layers: list[LayerChange] = field(default_factory=list)
    removed_kernels: int = 0
    prunable_kernels: int = 0
    verification: str = ""
    extra: dict = field(default_factory=dict)
    variants: list = field(default_factory=list)  # compare.Variant rows: dense/pruned x fp32/int8
    method: str = ""  # how the units were chosen: criterion, ranking, target, rounding (from the plan)
    provenance: Optional[Provenance] = None  # command line, date, machine, calibration set
    importance: list[GroupImportance] = field(default_factory=list)  # per channel group, from the run's scores

    @property
    def pruned_percentage(self) -> float:
        return 100.0 * self.removed_kernels / max(self.prunable_kernels, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pruned_percentage"] = self.pruned_percentage
        if hasattr(self.after.fidelity, "to_dict"):
            d["after"]["fidelity"] = self.after.fidelity.to_dict()
        for k, v in self.extra.items():
            if hasattr(v, "to_dict"):
                d["extra"][k] = v.to_dict()
        return d

    def document(self, title: str = "", figures: bool = False) -> "Document":
        """The report's content, once, for every rendering (:mod:`onnxprune.report.prune`)."""
        from .prune import prune_document
        return prune_document(self, title, figures)

    def table(self) -> str:
        """What the terminal prints: the same content as :meth:`markdown`, laid out as columns."""
        from .document import text
        return text(self.document())

    def markdown(self, title: str = "") -> str:
        from .document import markdown
        return markdown(self.document(title), figures=False)

    def html(self, title: str = "onnxprune report") -> str:
        """One self-contained HTML page with the plots inline (tables only without matplotlib, and it says so)."""
        from .document import html_page
        return html_page(self.document(title, figures=True))


def method_line(meta: dict) -> str:
    """'oracle scores, per_mac ranking, target <= 50% of MACs, widths rounded: auto, 3 steps' from a plan's meta."""
    if not meta.get("criterion"):
        return ""
    parts = [f"{meta['criterion']} scores"]
    if meta.get("ranking"):
        parts.append(f"{meta['ranking']} ranking")
    if meta.get("target"):
        parts.append(f"target {meta['target']}")
    if meta.get("round_to") is not None:
        parts.append(f"widths rounded: {meta['round_to']}")
    if (meta.get("steps") or 1) > 1:
        parts.append(f"{meta['steps']} steps")
    rec = meta.get("recovery") or {}
    if rec.get("recover") not in (None, "none"):
        parts.append(f"recovery {rec['recover']}")
    return ", ".join(parts)


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and the before/after report."""

    model: onnx.ModelProto
    plan: "PruningPlan"
    report: Report
    verification: Optional["VerificationResult"]
    output_path: Optional[Path] = None
    removed_units: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.report.method and self.plan is not None:
            self.report.method = method_line(self.plan.meta)


def count_params(model: onnx.ModelProto) -> int:
    """Float weights stored in the model (initializers and Constant nodes)."""
    total = 0
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for t in model.graph.initializer:
        if t.data_type in floats:
            total += int(np.prod(t.dims))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in floats:
                    total += int(np.prod(attr.t.dims))
    return total


def build_report(p: "Prepared", pruned: onnx.ModelProto, removed: list[int],
                 verification: Optional["VerificationResult"]) -> Report:
    """Before/after parameters, MACs, size and per-layer kernels of removing ``removed`` from ``p``."""
    a = p.analysis
    rem = np.array(sorted(removed), dtype=np.int64)
    macs_after, _ = p.cost.evaluate(rem)
    original = p.original  # read once: a big model's is not kept in memory
    before = ModelStats(count_params(original), p.cost.dense_macs, serialized_size(original))
    after = ModelStats(count_params(pruned), macs_after, serialized_size(pruned))
    layers = []
    present = {n.name for n in pruned.graph.node}
    groups = group_of_layer(a)
    for layer in a.layers.values():
        keep = a.keep_mask(layer.output, rem)
        kept = int(keep.sum()) if keep is not None else layer.kernels
        layers.append(LayerChange(layer.name, layer.op, layer.kernels, kept if layer.name in present else 0,
                                  groups.get(layer.name)))
    removed_kernels = sum(len(a.unit_kernels[r]) for r in removed)
    prunable = sum(len(a.unit_kernels[r]) for r in a.prunable_units)
    return Report(before, after, layers, removed_kernels, prunable,
                  verification.summary() if verification else "verification skipped")
