"""Checks a sparsified model must pass before it is written.

The reference is the input model with the masks applied to its weights
(and, for re-fitted layers, the re-fitted values). The candidate (dense or
sparse storage) must pass the ONNX checker, load in onnxruntime and give
outputs *identical* to the reference: storage must not change a single bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx

from ..graph.probe import DEFAULT_SPATIAL, PROBE_BATCH, graph_input_dims, random_inputs
from ..runtime import make_session

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckOutcome:
    """Result of checking one candidate model against the reference."""

    ok: bool
    message: str
    max_abs_diff: float


def verification_feeds(model: onnx.ModelProto, calibration: Mapping[str, np.ndarray] | None,
                       seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """A couple of real samples when the user gave some, random ones shaped by the graph otherwise."""
    if calibration:
        n = min(2, min(len(v) for v in calibration.values()))
        return {k: np.ascontiguousarray(v[:n]) for k, v in calibration.items()}, "calibration samples"
    shapes = {}
    for name, dims in graph_input_dims(model).items():
        # Dynamic axes: batch PROBE_BATCH, others DEFAULT_SPATIAL (real samples avoid the guess).
        shapes[name] = tuple(d if isinstance(d, int) else (PROBE_BATCH if i == 0 else DEFAULT_SPATIAL)
                             for i, d in enumerate(dims))
        if any(not isinstance(d, int) for d in dims[1:]):
            logger.info("input %s has dynamic axes; verifying on random inputs of shape %s", name, shapes[name])
    return random_inputs(model, shapes, seed=seed), "random inputs"


def run_model(model: onnx.ModelProto | bytes, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    session = make_session(model)
    return session.run(None, dict(feeds))


def compare(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """Largest absolute difference; inf if shapes differ, 0 only when identical."""
    worst = 0.0
    for a, b in zip(reference, outputs):
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            return float("inf")
        if a.dtype.kind == "f":
            same = np.array_equal(a, b, equal_nan=True)
            if not same:
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
                worst = max(worst, 1e-300)  # differing NaN positions still count as a difference
        elif not np.array_equal(a, b):
            return float("inf")
    return worst


def relative_change(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """||y - y0|| / ||y0|| over the float outputs: how far pruning moved the model."""
    num = 0.0
    den = 0.0
    for a, b in zip(reference, outputs):
        a = np.asarray(a)
        if a.dtype.kind != "f":
            continue
        d = a.astype(np.float64) - np.asarray(b, dtype=np.float64)
        num += float(np.sum(d * d))
        den += float(np.sum(a.astype(np.float64) ** 2))
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def check_candidate(candidate: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                    reference_outputs: list[np.ndarray]) -> CheckOutcome:
    """ONNX checker, onnxruntime load, identical outputs: all three or a reason."""
    try:
        onnx.checker.check_model(candidate)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CheckOutcome(False, f"fails the ONNX checker: {first}", float("inf"))
    try:
        outputs = run_model(candidate, feeds)
    except Exception as exc:  # onnxruntime raises its own exception classes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CheckOutcome(False, f"onnxruntime cannot run it: {first[:300]}", float("inf"))
    worst = compare(reference_outputs, outputs)
    if worst != 0.0:
        return CheckOutcome(False, f"onnxruntime outputs differ from the reference by up to {worst:.3g}", worst)
    return CheckOutcome(True, "checker ok, onnxruntime loads it, outputs identical to the reference", 0.0)
