"""Verification of a rewritten model before anything is written (invariant 2).

Checks, in order: the ONNX checker, strict shape inference, an onnxruntime
session, output shapes equal to the original's, and exactness — the
rewritten model's outputs equal those of the *masked reference* (the
original with removed channels zeroed where they are consumed) on random
inputs and, when given, on real ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import onnx

from ..errors import VerificationError
from ..graph.external import check_skeleton, needs_external, skeleton
from ..runtime import make_session

logger = logging.getLogger(__name__)

RTOL = 1e-4
ATOL = 1e-5
HALF_EPS = float(np.finfo(np.float16).eps)
HALF_RTOL = 8 * HALF_EPS
HALF_ATOL = HALF_RTOL * 1e-2


def computes_in_half(model: onnx.ModelProto) -> bool:
    """True when any weight or activation of ``model`` is float16 (a float16 model or a Cast island)."""
    half = onnx.TensorProto.FLOAT16
    g = model.graph
    return (any(t.data_type == half for t in g.initializer)
            or any(v.type.tensor_type.elem_type == half for v in list(g.input) + list(g.value_info) + list(g.output))
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute) for n in g.node))


def tolerance(model: onnx.ModelProto) -> tuple[float, float]:
    """(rtol, atol) for comparing two models that differ only by exact surgery.

    float32: 1e-4 of the output peak (summation order changes with the channel count).
    float16: every op rounds its result to float16 (unit roundoff eps/2 = 2**-11); removing
    channels changes the summation order of each consumer, so any intermediate may land one
    rounding step (eps of its magnitude) away from the reference, and such one-ulp flips pass
    through every later layer, so a deep network can drift by a few eps of the output. 8 eps
    (7.8e-3) of the output peak leaves room over what the shared models and their float16
    versions show (at most 1.1e-3, about 1 eps: PP-OCRv4 det with float32 I/O; see the float16
    section of benchmarks/RESULTS.md), while one wrong channel moves the output by far more
    (tests/test_fp16.py). The absolute floor (1% of that, for a unit peak) keeps outputs near
    zero everywhere (a sigmoid map on noise) from failing on float16 noise.
    """
    return (HALF_RTOL, HALF_ATOL) if computes_in_half(model) else (RTOL, ATOL)


@dataclass
class VerificationResult:
    """What was checked and the largest deviation seen.

    The relative figure divides by the reference's peak, floored where the
    absolute tolerance takes over (ATOL / RTOL): an output that is near zero
    everywhere (a sigmoid map on noise) would otherwise turn float noise into
    a large-looking ratio.

    A result exists only for a model that passed: every failure raises VerificationError.
    """

    checks: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    batches: int = 0

    def summary(self) -> str:
        return (f"verified: {', '.join(self.checks)}; max |diff| {self.max_abs_error:.2e} "
                f"({self.max_rel_error:.2e} of output range) on {self.batches} batch(es)")


def check_structure(model: onnx.ModelProto) -> None:
    big = needs_external(model)
    stubs = skeleton(model, with_arrays=False)[0] if big else model
    try:
        check_skeleton(stubs) if big else onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"pruned model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    try:
        onnx.shape_inference.infer_shapes(stubs, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"pruned model fails shape inference: {str(exc).splitlines()[0]}") from None


def verify_equivalent(model: onnx.ModelProto, reference: onnx.ModelProto,
                      feeds: Iterable[dict[str, np.ndarray]], *, rtol: Optional[float] = None,
                      atol: Optional[float] = None, what: str = "exactness vs masked reference",
                      structure: bool = True,
                      reference_weights: Optional[onnx.ModelProto] = None) -> VerificationResult:
    """Raise VerificationError unless ``model`` computes what ``reference`` computes.

    Tolerances default to :func:`tolerance` of ``reference`` (float32 or float16).
    ``reference_weights``: the model whose weights a skeleton ``reference`` names
    (:func:`onnxprune.runtime.make_session`).
    """
    default_rtol, default_atol = tolerance(reference)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    result = VerificationResult()
    if structure:
        check_structure(model)
        result.checks += ["onnx.checker", "shape inference"]
    # One session at a time: the reference's outputs first, so a big model's weights are held by one
    # session, never two.
    ref = make_session(reference, weights=reference_weights)
    names = [o.name for o in ref.get_outputs()]
    feeds = list(feeds)
    wants = [ref.run(names, feed) for feed in feeds]
    del ref
    try:
        sess = make_session(model)
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"onnxruntime cannot load the pruned model: {str(exc).splitlines()[0]}") from None
    result.checks.append("onnxruntime session")
    for feed, want in zip(feeds, wants):
        try:
            got = sess.run(names, feed)
        except Exception as exc:  # noqa: BLE001
            raise VerificationError(f"pruned model fails at run time: {str(exc).splitlines()[0]}") from None
        for name, g, w in zip(names, got, want):
            if g.shape != w.shape:
                raise VerificationError(f"output {name!r} has shape {g.shape}, expected {w.shape}")
            if not np.issubdtype(w.dtype, np.floating):
                if not np.array_equal(g, w):
                    raise VerificationError(f"output {name!r} differs from the reference")
                continue
            diff = float(np.abs(g.astype(np.float64) - w).max()) if w.size else 0.0
            peak = float(np.abs(w).max()) if w.size else 0.0
            result.max_abs_error = max(result.max_abs_error, diff)
            floor = atol / rtol if rtol > 0 else 0.0
            result.max_rel_error = max(result.max_rel_error, diff / max(peak, floor, 1e-30))
            if not np.isfinite(diff) or diff > atol + rtol * peak:
                raise VerificationError(
                    f"output {name!r} differs from the reference by {diff:.3g} (peak {peak:.3g}, "
                    f"tolerance {atol + rtol * peak:.3g}): {what} failed, nothing written")
        result.batches += 1
    result.checks.append(what)
    return result


def uniform_inputs(shapes: dict[str, tuple[int, ...]], n: int = 2, seed: int = 0,
                   dtypes: Optional[dict[str, np.dtype]] = None) -> list[dict[str, np.ndarray]]:
    """Image-like random inputs in [-1, 1): random normals blow up deep nets and hide real errors.

    Inputs whose ``dtypes`` entry is not a float type (masks, ids) get zeros of that type.
    """
    rng = np.random.default_rng(seed)
    dtypes = dtypes or {}
    out = []
    for _ in range(n):
        feed = {}
        for k, s in shapes.items():
            dt = np.dtype(dtypes.get(k, np.float32))
            feed[k] = rng.uniform(-1, 1, size=s).astype(dt) if dt.kind == "f" else np.zeros(s, dtype=dt)
        out.append(feed)
    return out
