"""The one fidelity measure: how a model's outputs agree with the dense model's, in its user's terms.

Classifiers: top-1 agreement (and top-1 accuracy of both when labels come
with the data); detectors: precision / recall / F1 of the detections and
mAP50-95 with the dense detections as truth; OCR: exact match of the
greedy CTC strings (blank 0) and per-position arg-max agreement;
probability maps: IoU of the maps thresholded at 0.5; embeddings: mean
cosine similarity and agreement of each row's nearest neighbour among the
measured rows; anything else: 1 - relative L2 after normalising each
feature by its spread (so pixels and probabilities both count). Every
command (prune, sweep, the latency target, quantize, the HALCON handle)
reports this, measured on rows held back from scoring and fitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .detection import agreement
from .distortion import argmax_agreement, relative_l2
from .tasks import DEFAULT_FLOORS, OutputSpec, TaskSpec

MAP_THRESHOLD = 0.5

LABELS = {"top1_agreement": "top-1 agreement", "top1": "top-1", "dense_top1": "dense top-1",
          "detection_f1": "detection F1", "precision": "precision", "recall": "recall", "map50_95": "mAP50-95",
          "exact_match": "exact-match strings", "argmax_agreement": "arg-max agreement", "map_iou": "map IoU",
          "cosine": "cosine similarity", "neighbour_agreement": "nearest-neighbour agreement",
          "similarity": "1 - rel. L2 (per feature)", "rel_l2": "rel. L2"}


LOWER_IS_BETTER = {"rel_l2"}


@dataclass
class Fidelity:
    """Fidelity to the dense model: the task's headline figure, every other figure, and on what it was measured."""

    task: str
    headline: str
    values: dict[str, float]
    samples: int
    data: str  # "held-back calibration rows" | "evaluation data" | "random inputs (no data given)" | ...
    floor: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    @property
    def value(self) -> float:
        return self.values[self.headline]

    @property
    def quality(self) -> float:
        """Top-1 accuracy where labels gave it, else the headline fidelity to the dense model (a sweep's y axis)."""
        return self.values.get("top1", self.value)

    @property
    def below_floor(self) -> bool:
        return self.floor is not None and self.value < self.floor

    def text(self) -> str:
        parts = [f"{LABELS.get(self.headline, self.headline)} {_fmt(self.headline, self.value)}"]
        parts += [f"{LABELS.get(k, k)} {_fmt(k, v)}" for k, v in self.values.items()
                  if k != self.headline and k != "reference_detections"]
        floor = f"; floor {self.floor:g}" + (" NOT MET" if self.below_floor else " met") if self.floor is not None \
            else ""
        return f"{', '.join(parts)} ({self.task}, {self.samples} {self.data}{floor})"

    def to_dict(self) -> dict:
        return {"task": self.task, "headline": self.headline, "value": self.value, "values": dict(self.values),
                "samples": self.samples, "data": self.data, "floor": self.floor, "below_floor": self.below_floor}


def _fmt(key: str, v: float) -> str:
    return f"{v:.4g}" if key == "rel_l2" else f"{v:.1%}" if key not in ("similarity", "cosine") else f"{v:.4f}"


def _cat(batches: Sequence[list[np.ndarray]], i: int) -> np.ndarray:
    return np.concatenate([np.asarray(b[i], dtype=np.float64) for b in batches])


def _ctc(seq: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC strings of [N, T, C] scores: arg-max per step, repeats collapsed, blank (0) dropped."""
    out = []
    for row in seq.argmax(-1):
        keep = [int(c) for k, c in enumerate(row) if c != 0 and (k == 0 or c != row[k - 1])]
        out.append(tuple(keep))
    return out


def _nearest(x: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row by cosine similarity."""
    u = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(-1)


def _neighbours(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Retrieval as the user of an embedding reads it: is each row's nearest neighbour among the others the same?"""
    if len(ref) < 3:
        return {}
    return {"neighbour_agreement": float(np.mean(_nearest(ref) == _nearest(out)))}


def _output_values(spec: OutputSpec, ref: np.ndarray, out: np.ndarray, labels: Optional[np.ndarray],
                   conf: float, ref_batches, out_batches, index: int) -> dict[str, float]:
    if spec.kind in ("logits", "prob"):
        v = {"top1_agreement": float(np.mean(out.argmax(-1) == ref.argmax(-1)))}
        if labels is not None and len(labels) == len(out):
            v["top1"] = float(np.mean(out.argmax(-1) == labels))
            v["dense_top1"] = float(np.mean(ref.argmax(-1) == labels))
        return v
    if spec.kind == "detect":
        return agreement([b[index] for b in ref_batches], [b[index] for b in out_batches], spec.head, conf)
    if spec.kind == "sequence":
        return {"exact_match": float(np.mean([a == b for a, b in zip(_ctc(ref), _ctc(out))])),
                "argmax_agreement": argmax_agreement([ref], [out])}
    if spec.kind == "probmap":
        a, b = ref > MAP_THRESHOLD, out > MAP_THRESHOLD
        inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
        union = np.logical_or(a, b).reshape(len(a), -1).sum(1)
        return {"map_iou": float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))}
    if spec.kind == "embed":
        num = (ref * out).sum(-1)
        den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(out, axis=-1)
        return {"cosine": float(np.mean(num / np.maximum(den, 1e-12))), **_neighbours(ref, out)}
    scales = np.asarray(spec.scales, dtype=np.float64)
    shape = [1] * ref.ndim
    shape[spec.feature_axis] = len(scales)
    rel = relative_l2([ref], [out], scales.reshape(shape))
    return {"similarity": max(0.0, 1.0 - rel), "rel_l2": rel}


def measure_fidelity(spec: TaskSpec, ref_batches: Sequence[list[np.ndarray]], out_batches: Sequence[list[np.ndarray]],
                     labels: Optional[np.ndarray] = None, *, data: str = "held-back calibration rows",
                     floor: Optional[float] = None) -> Fidelity:
    """Fidelity of ``out_batches`` (lists of output arrays per batch) to ``ref_batches`` under ``spec``.

    The headline is the worst over the outputs of the task's kind; other
    outputs add their own figures under ``<output name>: <figure>``.
    """
    values: dict[str, float] = {}
    headline_values: list[float] = []
    n = sum(int(np.shape(b[0])[0]) for b in ref_batches)
    for i, o in enumerate(spec.outputs):
        if o.kind == "ignored":
            continue
        v = _output_values(o, _cat(ref_batches, i), _cat(out_batches, i), labels, spec.conf, ref_batches,
                           out_batches, i)
        if spec.headline in v:
            headline_values.append(v[spec.headline])
            for k, x in v.items():  # the worst output counts: the largest error, the smallest agreement
                worst = max if k in LOWER_IS_BETTER else min
                values[k] = worst(values[k], x) if k in values else x
        else:
            values.update({f"{o.name}: {k}": x for k, x in v.items()})
    values = {spec.headline: min(headline_values) if headline_values else 1.0, **values}
    return Fidelity(spec.task, spec.headline, values, n, data, floor)


def default_floor(task: str) -> float:
    return DEFAULT_FLOORS[task]
