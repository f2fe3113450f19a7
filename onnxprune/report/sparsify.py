"""The report of a ``sparsify`` run, built once as a :class:`Document` like prune's and sweep's.

The terminal, ``--report x.md|x.json|x.html`` and ``--json`` all read this
one object. It takes the run's result as it comes (a
``onnxprune.sparsity.SparsifyResult``) without importing the sparsity
package, so report/ stays below the verbs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from .document import Document, Heading, Items, Para, Table, html_page, markdown, text
from .provenance import Provenance

NAME_WIDTH = 48


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _short(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else "…" + name[-(NAME_WIDTH - 1):]


@dataclass
class SparsifyReport:
    """``result``: what ``sparsify`` returned; ``input_bytes``: the input file's size (None with external data);
    ``record``: the metadata key of the sparsity record the run added to the model, and its bytes."""

    result: Any
    input_bytes: Optional[int] = None
    record: tuple[str, int] = ("", 0)
    provenance: Optional[Provenance] = None

    def size_line(self) -> str:
        """'size: ...' — and why, when the written model is no smaller than its input (zeros stored densely)."""
        storage = self.result.storage
        line = f"size: dense {storage.dense_bytes} bytes"
        if storage.sparse_bytes is not None:
            line += f", sparse {storage.sparse_bytes} bytes"
        written = storage.sparse_bytes if storage.format == "sparse" else storage.dense_bytes
        if self.input_bytes is None or written < self.input_bytes:
            return line
        return (f"{line}; the input was {self.input_bytes} bytes: not smaller, because a zero stored densely takes "
                f"the same bytes as any weight (ONNX's sparse tensors, with int64 indices, pay off only above 67% "
                f"sparsity) and the sparsity record in the model's metadata ({self.record[0]}, {self.record[1]} "
                "bytes) is added; "
                "zeros compress, so zip or gzip the file to ship it smaller")

    def lines(self) -> list[str]:
        """Totals, storage, size, verification and notes: the lines under the table."""
        r = self.result
        before = sum(layer.zeros_before for layer in r.layers)
        steps = f" (steps {', '.join(f'{s:g}' for s in r.steps)})" if len(r.steps) > 1 else ""
        v = r.verification
        out = [f"total: {len(r.layers)} weights, {r.total_size} values, sparsity "
               f"{_pct(before / max(r.total_size, 1))} -> {_pct(r.sparsity)}{steps}",
               f"storage: {r.storage.format} ({r.storage.reason})", self.size_line(),
               f"verification: {'ok' if v.ok else 'FAILED'} on {v.inputs}: {v.message}; outputs moved "
               f"{v.output_change:.3g} (relative L2) from the input model"]
        return out + [f"note: {n}" for n in r.notes]

    def document(self, title: str = "", figures: bool = False) -> Document:
        r = self.result
        rows = [("weight", "op", "shape", "before", "after", "zero ch", "storage", "re-fit")]
        rows += [(_short(w.name), w.op_types[0], "x".join(map(str, w.shape)), _pct(w.sparsity_before),
                  _pct(w.sparsity_after), f"{w.zero_channels}/{w.channels}", w.storage, w.refit) for w in r.layers]
        doc = Document(title)
        doc.add(Table(tuple(rows)), Items(tuple(self.lines())))
        if figures:
            from .plots import NO_PLOTS, bars_figure, pyplot
            if pyplot() is None:
                doc.add(Para(f"Note: {NO_PLOTS}."))
            else:
                doc.add(Heading("Plots"), bars_figure(
                    [(w.name, 100 * w.sparsity_after) for w in r.layers], "zero weights after the run (%)",
                    "Share of each weight's values that are zero after the run (the dashed line: the whole "
                    "model's).", "sparsity.png", values=[_pct(w.sparsity_after) for w in r.layers],
                    reference=(100 * r.sparsity, "whole model")))
        if title and self.provenance is not None:
            doc.add(Heading("Run"), Items(tuple(self.provenance.lines())))
        return doc

    def table(self) -> str:
        return text(self.document())

    def markdown(self, title: str = "") -> str:
        return markdown(self.document(title), figures=False)

    def html(self, title: str = "onnxprune sparsify report") -> str:
        return html_page(self.document(title, figures=True))

    def to_dict(self) -> dict[str, Any]:
        """What ``--json`` prints and a .json report holds."""
        r = self.result
        s, v = r.storage, r.verification
        return {
            "output": str(r.output_path) if r.output_path else None,
            "sparsity": {"before": sum(w.zeros_before for w in r.layers) / max(r.total_size, 1), "after": r.sparsity},
            "values": r.total_size, "steps": list(r.steps),
            "size_bytes": {"input": self.input_bytes, "dense": s.dense_bytes, "sparse": s.sparse_bytes},
            "storage": {"format": s.format, "reason": s.reason},
            "verification": {"ok": v.ok, "message": v.message, "inputs": v.inputs, "output_change": v.output_change},
            "layers": [{"weight": w.name, "op": w.op_types[0], "shape": list(w.shape),
                        "sparsity_before": w.sparsity_before, "sparsity_after": w.sparsity_after,
                        "zero_channels": w.zero_channels, "channels": w.channels, "storage": w.storage,
                        "refit": w.refit} for w in r.layers],
            "notes": list(r.notes),
            "provenance": asdict(self.provenance) if self.provenance is not None else None,
        }


def info_document(info: Any) -> Document:
    """``sparsify --info``: per-weight sparsity, structured zeros and the recorded passes of a model (a
    ``onnxprune.sparsity.SparsityInfo``)."""
    rows = [("weight", "op", "shape", "sparsity", "zero ch", "storage", "history")]
    rows += [(_short(w.name), w.op_types[0], "x".join(map(str, w.shape)), _pct(w.sparsity),
              f"{w.zero_channels}/{w.channels}", w.storage,
              " -> ".join("-" if s is None else _pct(s) for s in w.history)) for w in info.layers]
    zero_ch = sum(w.zero_channels for w in info.layers)
    channels = sum(w.channels for w in info.layers)
    lines = [f"total: {len(info.layers)} weights, {info.total_size} values, sparsity {_pct(info.sparsity)}; "
             f"structured: {zero_ch}/{channels} output channels all zero"]
    if not info.history:
        lines.append("history: none recorded (never sparsified by onnxprune)")
    for i, record in enumerate(info.history, start=1):
        layers = record.get("layers", {})
        size = sum(v[2] for v in layers.values() if isinstance(v, list) and len(v) >= 3)
        after = sum(v[1] for v in layers.values() if isinstance(v, list) and len(v) >= 3)
        what = record.get("filler", "?") + (f" threshold {record['threshold']:g}" if "threshold" in record else "")
        lines.append(f"pass {i}: {what}, {record.get('scope', '?')}, {record.get('mode', '?')}"
                     + (" (relative)" if record.get("relative") else "")
                     + (", importance scores" if record.get("importance_scores") else "")
                     + (", re-fit" if record.get("refit") else "")
                     + (f" -> {_pct(after / size)} of {size} values in {len(layers)} weights" if size else ""))
    lines += [f"{key}: {value if len(value) <= 200 else value[:200] + '…'}" for key, value in info.other_metadata.items()]
    return Document("").add(Table(tuple(rows)), Items(tuple(lines)))
