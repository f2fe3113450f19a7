"""What each model output is to its user, guessed once per run from shapes, values and exporter metadata.

A number that says how far a pruned model drifted is only honest when it
weighs each part of an output as its user reads it: a concatenated YOLO
head holds pixel boxes (0-640) beside class probabilities (0-1), and a
distortion summed over that tensor sees only the boxes. So each output gets
a *kind* — classifier logits or probabilities, a decoded detection head, a
per-position class sequence (OCR), a probability map, an embedding, plain
features with a feature axis — and the cost (:mod:`.cost`) and the fidelity
(:mod:`.measure`) follow the kind. ``task`` (``--task``) overrides the
guess; the report says which was used and why.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import onnx

from ..errors import InvalidArgumentError
from .detection import Head

logger = logging.getLogger(__name__)

TASKS = ("auto", "classify", "detect", "segment", "ocr", "embed", "generic")
# The headline fidelity of each task and the floor a written model must reach by default.
HEADLINES = {"classify": "top1_agreement", "detect": "detection_f1", "segment": "map_iou", "ocr": "exact_match",
             "embed": "cosine", "generic": "similarity"}
DEFAULT_FLOORS = {"classify": 0.9, "detect": 0.9, "segment": 0.9, "ocr": 0.9, "embed": 0.9, "generic": 0.9}
DETECTION_CONF = 0.25


@dataclass(frozen=True)
class OutputSpec:
    """One output: its kind and what the kind needs (feature axis and scales, detection head)."""

    name: str
    kind: str  # logits | prob | sequence | detect | probmap | embed | features | ignored
    feature_axis: int = 1
    head: Optional[Head] = None
    scales: Optional[tuple[float, ...]] = None  # features: per-feature spread on the dense model's outputs


@dataclass(frozen=True)
class TaskSpec:
    """The task of a model (what its user reads from it) and one spec per output, in output order."""

    task: str
    outputs: tuple[OutputSpec, ...]
    reason: str
    conf: float = DETECTION_CONF

    @property
    def headline(self) -> str:
        return HEADLINES[self.task]

    def describe(self) -> str:
        kinds = ", ".join(f"{o.name}: {o.kind}" for o in self.outputs)
        return f"{self.task} ({self.reason}; {kinds})"


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _class_names(meta: dict[str, str]) -> Optional[int]:
    """The class count of Ultralytics' ``names`` metadata ("{0: 'person', ...}"), if it parses."""
    try:
        names = ast.literal_eval(meta.get("names", ""))
    except (ValueError, SyntaxError):
        return None
    return len(names) if isinstance(names, (dict, list)) and names else None


def _is_prob(y: np.ndarray, axis: int = -1) -> bool:
    return bool(y.size and y.min() >= 0 and np.allclose(y.sum(axis), 1.0, atol=1e-3))


def _unit_rows(y: np.ndarray) -> bool:
    """Rows of L2 norm 1: a normalised embedding (sentence encoders end so), never plain logits."""
    norms = np.linalg.norm(y.astype(np.float64), axis=-1)
    return bool(y.size and np.allclose(norms, 1.0, atol=1e-3))


def _in_unit(y: np.ndarray) -> bool:
    return bool(y.size and y.min() >= 0 and y.max() <= 1)


def _detection_head(y: np.ndarray, classes: Optional[int], forced: bool) -> Optional[Head]:
    """A decoded detection head, if ``y`` [N, F, A] or [N, A, F] has the shape and ranges of one."""
    if y.ndim != 3:
        return None
    axis = 1 if y.shape[1] < y.shape[2] else 2
    feats = y.shape[axis]
    layout = "v8" if axis == 1 else "v5"
    offset = 4 if layout == "v8" else 5
    c = classes if classes is not None and classes <= feats - offset else feats - offset
    if c < 1:
        return None
    parts = np.moveaxis(y, axis, -1)
    if not forced and not (_in_unit(parts[..., 4:offset + c]) and parts[..., 2:4].min() >= 0
                           and parts[..., :4].max() > 1):
        return None
    return Head(layout, c)


def _features(name: str, y: np.ndarray) -> OutputSpec:
    """Plain features: the channel axis of NCHW-like outputs, the smaller non-batch axis of 3-D ones."""
    axis = 1 if y.ndim != 3 else (1 if y.shape[1] <= y.shape[2] else 2)
    moved = np.moveaxis(y.astype(np.float64), axis, -1).reshape(-1, y.shape[axis])
    spread = moved.std(0)
    floor = max(float(np.abs(moved).mean()), 1e-12) * 1e-3
    return OutputSpec(name, "features", axis, scales=tuple(float(max(s, floor)) for s in spread))


def _guess_output(name: str, y: np.ndarray, task: str, meta: dict[str, str]) -> OutputSpec:
    if not np.issubdtype(y.dtype, np.floating) or y.ndim == 0:
        return OutputSpec(name, "ignored")
    y = np.asarray(y)
    if task == "generic":
        return _features(name, y) if y.ndim >= 2 else OutputSpec(name, "ignored")
    if y.ndim == 2 and y.shape[1] > 1:
        if task == "embed" or (task == "auto" and not _is_prob(y) and _unit_rows(y)):
            return OutputSpec(name, "embed")
        return OutputSpec(name, "prob" if _is_prob(y) else "logits")
    if y.ndim == 3:
        if task in ("auto", "detect") and meta.get("task", "detect") in ("detect", "segment", "pose", "obb"):
            head = _detection_head(y, _class_names(meta), forced=task == "detect")
            if head is not None:
                return OutputSpec(name, "detect", 1 if head.layout == "v8" else 2, head=head)
        if task == "ocr" or (task == "auto" and y.shape[-1] > 1 and _is_prob(y)):
            return OutputSpec(name, "sequence", 2)
    if y.ndim == 4 and y.shape[1] == 1 and task in ("auto", "segment") and _in_unit(y):
        return OutputSpec(name, "probmap")
    if y.ndim >= 2:
        return _features(name, y)
    return OutputSpec(name, "ignored")


_TASK_OF_KIND = {"detect": "detect", "logits": "classify", "prob": "classify", "sequence": "ocr",
                 "probmap": "segment", "embed": "embed"}


def guess_task(model: onnx.ModelProto, outputs: Sequence[np.ndarray], task: str = "auto",
               names: Optional[Sequence[str]] = None) -> TaskSpec:
    """The task of ``model`` from its dense outputs on real (or, without data, random) inputs."""
    if task not in TASKS:
        raise InvalidArgumentError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    meta = metadata(model)
    if names is None:
        names = [o.name for o in model.graph.output]
    names = list(names) if len(names) == len(outputs) else [f"output{i}" for i in range(len(outputs))]
    specs = tuple(_guess_output(n, np.asarray(y), task, meta) for n, y in zip(names, outputs))
    found = [_TASK_OF_KIND[s.kind] for s in specs if s.kind in _TASK_OF_KIND]
    if task != "auto":
        reason = "--task"
        chosen = task if task == "generic" or task in found else "generic"
        if chosen != task:
            logger.warning("--task %s: no output has the shape of one (%s); measuring it as generic",
                           task, ", ".join(f"{n} {tuple(np.shape(y))}" for n, y in zip(names, outputs)))
            reason = f"--task {task} did not fit the outputs"
    else:
        order = ("detect", "ocr", "classify", "segment", "embed")
        chosen = next((t for t in order if t in found), "generic")
        reason = "exporter metadata and output shapes" if meta.get("task") else "output shapes and values"
    if chosen == "generic":
        specs = tuple(s if s.kind in ("features", "ignored") else _features(s.name, np.asarray(y))
                      for s, y in zip(specs, outputs))
    spec = TaskSpec(chosen, specs, reason)
    logger.info("task: %s", spec.describe())
    return spec


def with_conf(spec: TaskSpec, conf: float) -> TaskSpec:
    return replace(spec, conf=conf)
