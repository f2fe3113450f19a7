"""Before/after figures of a pruning run: parameters, MACs, file size, latency, per-layer channels."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import onnx

from .graph.external import serialized_size

if TYPE_CHECKING:  # pragma: no cover
    from .fidelity.measure import Fidelity
    from .plan import PruningPlan
    from .prepare import Prepared
    from .verify import VerificationResult

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

    def table(self, per_layer: bool = True) -> str:
        b, a = self.before, self.after
        rows = [("", "before", "after", "kept"),
                ("params", f"{b.params:,}", f"{a.params:,}", _pct(a.params, b.params)),
                ("MACs", f"{b.macs:,}", f"{a.macs:,}", _pct(a.macs, b.macs)),
                ("file size", _mb(b.size_bytes), _mb(a.size_bytes), _pct(a.size_bytes, b.size_bytes))]
        if b.latency_ms is not None and a.latency_ms is not None:
            lat = self.extra.get("latency")
            bt, at = (_ms(lat["dense_ms"]), _ms(lat["pruned_ms"])) if lat else (f"{b.latency_ms:.2f} ms",
                                                                                 f"{a.latency_ms:.2f} ms")
            rows.append(("latency (median)", bt, at, self._speedup_text()))
        lat = self.extra.get("latency")
        if lat:
            rows.append(("latency target", "", f"{lat['measured_fraction']:.1%} measured", _target_text(lat)))
        if b.accuracy is not None and a.accuracy is not None:
            rows.append(("accuracy", f"{b.accuracy:.2%}", f"{a.accuracy:.2%}", f"{(a.accuracy - b.accuracy) * 100:+.2f} pt"))
        out = [_fmt(rows)]
        out += self._fidelity_lines()
        out.append(f"pruned kernels: {self.removed_kernels} of {self.prunable_kernels} prunable "
                   f"({self.pruned_percentage:.1f}%)")
        if self.variants:
            from .compare import variants_table
            out.append(variants_table(self.variants).rstrip())
        if per_layer and self.layers:
            lrows = [("layer", "op", "kernels before", "after")]
            lrows += [(lc.name, lc.op, str(lc.before), str(lc.after)) for lc in self.layers if lc.before != lc.after]
            if len(lrows) > 1:
                out.append(_fmt(lrows))
        if self.verification:
            out.append(self.verification)
        return "\n".join(out)

    def markdown(self) -> str:
        b, a = self.before, self.after
        lines = ["| | before | after | kept |", "|---|---|---|---|",
                 f"| params | {b.params:,} | {a.params:,} | {_pct(a.params, b.params)} |",
                 f"| MACs | {b.macs:,} | {a.macs:,} | {_pct(a.macs, b.macs)} |",
                 f"| file size | {_mb(b.size_bytes)} | {_mb(a.size_bytes)} | {_pct(a.size_bytes, b.size_bytes)} |"]
        lat = self.extra.get("latency")
        if b.latency_ms is not None and a.latency_ms is not None and not lat:
            lines.append(f"| latency | {b.latency_ms:.2f} ms | {a.latency_ms:.2f} ms | |")
        if lat:
            lines.append(f"| latency ({lat['where']}) | {_ms(lat['dense_ms'])} | {_ms(lat['pruned_ms'])} | "
                         f"{lat['measured_fraction']:.1%}: {_target_text(lat)} |")
        if b.accuracy is not None and a.accuracy is not None:
            lines.append(f"| accuracy | {b.accuracy:.2%} | {a.accuracy:.2%} | |")
        fid = self._fidelity_lines()
        if fid:
            lines += [""] + [f"* {f}" for f in fid]
        if self.variants:
            from .compare import variants_table
            lines += ["", variants_table(self.variants).rstrip()]
        lines.append("")
        lines.append(f"Pruned kernels: {self.removed_kernels} of {self.prunable_kernels} ({self.pruned_percentage:.1f}%).")
        if self.verification:
            lines.append("")
            lines.append(self.verification)
        return "\n".join(lines) + "\n"


    def _speedup_text(self) -> str:
        """'speed-up 1.53x', or that the difference is inside the timing noise (the ranges overlap)."""
        b, a = self.before.latency_ms, self.after.latency_ms
        text = f"speed-up {b / max(a, 1e-9):.2f}x"
        lat = self.extra.get("latency")
        rng = self.extra.get("latency_range_ms")
        if lat is not None and not lat.get("outside_noise", True):
            return text + " (inside the timing noise)"
        if rng is not None and not (rng["after"][2] < rng["before"][1] or rng["after"][1] > rng["before"][2]):
            return text + " (inside the timing noise)"
        return text

    def _fidelity_lines(self) -> list[str]:
        """Fidelity to the dense model in the user's terms: after recovery, before it, quantized; the floor."""
        out = []
        for key, label in (("", "fidelity to dense"), ("fidelity_before_recovery", "  before recovery"),
                           ("fidelity_before_distillation", "  before distillation"),
                           ("fidelity_quantized", "  quantized")):
            fid = self.after.fidelity if not key else self.extra.get(key)
            if fid is not None:
                out.append(f"{label}: {fid.text() if hasattr(fid, 'text') else _fidelity_text(fid)}")
        for key in ("fidelity_note", "task", "back_off", "floor"):
            if key in self.extra:
                out.append(f"{key.replace('_', '-').replace('-note', '')}: {self.extra[key]}")
        return out


def _ms(t: list) -> str:
    """'2.21 ms (2.13-2.27)': median and the range over timing rounds."""
    return f"{t[0]:.2f} ms ({t[1]:.2f}-{t[2]:.2f})"


def _target_text(lat: dict) -> str:
    if lat["missed_by"] > 0:
        return f"target {lat['target']:.0%} MISSED by {100 * lat['missed_by']:.1f} points"
    if not lat.get("outside_noise", True):
        return f"target {lat['target']:.0%}: could not tell (timing ranges overlap)"
    return f"target {lat['target']:.0%} met"


def _pct(a: float, b: float) -> str:
    return f"{a / b:.1%}" if b else "-"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _fmt(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


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


def _fidelity_text(fid: dict) -> str:
    """'rel. L2 0.149, arg-max agreement 100.0%' (keys stay machine-friendly in the JSON report)."""
    names = {"rel_l2": "rel. L2", "argmax_agreement": "arg-max agreement"}
    return ", ".join(f"{names.get(k, k)} {v:.1%}" if k == "argmax_agreement" else f"{names.get(k, k)} {v:.4g}"
                     for k, v in fid.items())


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and the before/after report."""

    model: onnx.ModelProto
    plan: "PruningPlan"
    report: Report
    verification: Optional["VerificationResult"]
    output_path: Optional[Path] = None
    removed_units: list[int] = field(default_factory=list)


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
    for layer in a.layers.values():
        keep = a.keep_mask(layer.output, rem)
        kept = int(keep.sum()) if keep is not None else layer.kernels
        layers.append(LayerChange(layer.name, layer.op, layer.kernels, kept if layer.name in present else 0))
    removed_kernels = sum(len(a.unit_kernels[r]) for r in removed)
    prunable = sum(len(a.unit_kernels[r]) for r in a.prunable_units)
    return Report(before, after, layers, removed_kernels, prunable,
                  verification.summary() if verification else "verification skipped")
