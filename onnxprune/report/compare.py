"""Side-by-side figures of model variants (dense / pruned, fp32 / int8): size, latency, raw distortion.

Latency of variants is timed interleaved by the one timer
(:func:`onnxprune.latency.timing.time_models`), so a slow spell of a
shared machine hits every row alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx

from ..fidelity.distortion import distortion
from ..latency.timing import LatencySettings, time_models
from ..runtime import make_session


@dataclass
class Variant:
    """One row of the comparison; latencies in ms (median over rounds, with the min and max of the rounds)."""

    name: str
    size_bytes: int
    latency_ms: dict[int, tuple[float, float, float]]
    fidelity: Optional[dict[str, float]] = None
    accuracy: Optional[float] = None


def output_fidelity(model: onnx.ModelProto, reference_outputs: Sequence[np.ndarray],
                    feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Raw distortion of the first output against the reference outputs (relative L2, arg-max agreement).

    Label- and task-free on purpose: the variants table compares fp32 and
    int8 rows on one calibration batch as numbers; the fidelity in the user's
    terms of the written model is the judge's (:mod:`onnxprune.fidelity`).
    """
    sess = make_session(model)
    return distortion(reference_outputs, [sess.run(None, f)[0] for f in feeds])


def compare_variants(models: dict[str, onnx.ModelProto], feeds: Sequence[dict[str, np.ndarray]],
                     batches: Sequence[int] = (1,), reference: Optional[str] = None,
                     rounds: int = 10, runs: int = 5) -> list[Variant]:
    """Size, interleaved latency at each batch size, and fidelity to ``reference`` (default: the first model)."""
    reference = reference or next(iter(models))
    ref_sess = make_session(models[reference])
    ref_out = [ref_sess.run(None, f)[0] for f in feeds]
    first = feeds[0]
    lat: dict[str, dict[int, tuple[float, float, float]]] = {k: {} for k in models}
    for b in batches:
        n = next(iter(first.values())).shape[0]
        reps = -(-b // n)
        feed = {k: np.concatenate([v] * reps)[:b] for k, v in first.items()}
        for k, t in time_models(models, feed, LatencySettings(rounds=rounds, runs=runs)).items():
            lat[k][b] = (t.median, t.low, t.high)
    return [Variant(k, int(m.ByteSize()), lat[k], None if k == reference else output_fidelity(m, ref_out, feeds))
            for k, m in models.items()]


def variants_table(variants: Sequence[Variant], what: str = "fidelity to dense fp32") -> str:
    """A Markdown table of the variants."""
    batches = sorted({b for v in variants for b in v.latency_ms})
    head = ["model", "size"] + [f"latency batch {b} (ms, min-max)" for b in batches] + [what]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense = variants[0].latency_ms if variants else {}
    for v in variants:
        cells = [v.name, f"{v.size_bytes / 1e6:.2f} MB"]
        for b in batches:
            med, lo, hi = v.latency_ms[b]
            speed = f", {dense[b][0] / med:.2f}x" if v is not variants[0] and b in dense else ""
            cells.append(f"{med:.2f} ({lo:.2f}-{hi:.2f}){speed}")
        if v.accuracy is not None:
            cells.append(f"top-1 {v.accuracy:.1%}")
        elif v.fidelity:
            fid = v.fidelity
            cells.append(f"rel. L2 {fid['rel_l2']:.4f}" + (f", arg-max {fid['argmax_agreement']:.1%}"
                                                          if "argmax_agreement" in fid else ""))
        else:
            cells.append("reference")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
