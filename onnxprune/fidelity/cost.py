"""Damage as the user reads it, per sample: the cost the oracle, the sensitivity curves and the allocation use.

Classifier outputs keep the oracle's KL divergence, OCR sequences the KL per
position, probability maps and small outputs the normalised squared error
(:func:`onnxprune.scoring.oracle_cost.oracle_cost`). What changes is where a
summed distortion is blind to what the user reads:

* a decoded detection head: the squared change of the class scores where
  either model is near a detection (anchor-class pairs weighed by how close
  their score is to the confidence threshold), per confident reference pair,
  plus the box change relative to the box size where the dense model
  detects — so the class branch, invisible beside pixel boxes in a summed
  error, counts as much as the boxes;
* plain features with a feature axis: the squared change of each feature
  relative to its spread on the dense model's outputs, averaged over
  features — pixel coordinates and probabilities in one tensor both count.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .tasks import OutputSpec, TaskSpec


def detection_cost(spec: OutputSpec, base: np.ndarray, pert: np.ndarray, conf: float) -> np.ndarray:
    """Per-sample cost of a decoded detection head (class scores near detections + relative box change)."""
    bb, bs = spec.head.split(base)
    pb, ps = spec.head.split(pert)
    relevance = np.clip(np.maximum(bs, ps) / conf, 0.0, 1.0)
    n_conf = np.maximum((bs >= conf).sum(axis=(1, 2)), 1)
    score = (relevance * (ps - bs) ** 2).sum(axis=(1, 2)) / n_conf
    weight = np.clip(bs.max(-1) / conf, 0.0, 1.0)  # [N, A]: where the dense model detects
    size = np.maximum(bb[..., 2:4], 1.0)  # w, h in pixels
    rel = np.concatenate([(pb[..., :2] - bb[..., :2]) / size, (pb[..., 2:4] - bb[..., 2:4]) / size], axis=-1)
    box = (weight * (rel ** 2).sum(-1)).sum(1) / np.maximum(weight.sum(1), 1.0)
    return score + box


def feature_cost(spec: OutputSpec, base: np.ndarray, pert: np.ndarray) -> np.ndarray:
    """Per-sample squared change of each feature relative to its dense spread, averaged over features."""
    scales = np.asarray(spec.scales, dtype=np.float64)
    shape = [1] * base.ndim
    shape[spec.feature_axis] = len(scales)
    d = ((pert.astype(np.float64) - base) / scales.reshape(shape)) ** 2
    return d.reshape(d.shape[0], -1).mean(1)


class TaskCost:
    """The oracle's per-sample cost for a model whose outputs are described by a :class:`TaskSpec`.

    A plain picklable object, so the Ray executor ships it like a name.
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def __call__(self, base: list, pert: list, labels: Optional[np.ndarray]) -> np.ndarray:
        from ..scoring.oracle_cost import oracle_cost
        total = np.zeros(np.shape(base[0])[0], dtype=np.float64)
        for o, b, q in zip(self.spec.outputs, base, pert):
            if o.kind == "detect":
                total += detection_cost(o, np.asarray(b, np.float64), np.asarray(q, np.float64), self.spec.conf)
            elif o.kind == "features":
                total += feature_cost(o, np.asarray(b, np.float64), q)
            elif o.kind == "embed":
                b64, q64 = np.asarray(b, np.float64), np.asarray(q, np.float64)
                cos = (b64 * q64).sum(-1) / np.maximum(np.linalg.norm(b64, axis=-1) * np.linalg.norm(q64, axis=-1),
                                                       1e-12)
                total += 1.0 - cos
            elif o.kind != "ignored":
                total += oracle_cost("auto", [b], [q], labels)
        return total

    def __repr__(self) -> str:
        return f"TaskCost({self.spec.task})"


def needs_task_cost(spec: TaskSpec) -> bool:
    """Whether the task cost differs from the label-free default on this model's outputs."""
    return any(o.kind in ("detect", "features", "embed") for o in spec.outputs)
