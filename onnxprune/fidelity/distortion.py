"""Raw distortion of outputs: relative L2 and arg-max agreement, blind to what the outputs mean.

Not a fidelity in the user's terms (that is :func:`.measure.measure_fidelity`):
these are the checks that a model still computes nearly the same numbers —
the bound a quantized model must stay within, how far sparsity's masks
moved the outputs, the variants table's columns — and the per-feature
relative L2 that the generic task's fidelity is built from. One copy of each,
here.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def relative_l2(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                scale: Optional[np.ndarray] = None) -> float:
    """||y - y0|| / ||y0|| over every float array of ``reference`` and its partner in ``outputs``.

    ``scale`` (broadcast against each array) divides both first: the
    per-feature form, where pixels and probabilities in one tensor both count.
    Non-float references (indices, labels) are skipped.
    """
    num = den = 0.0
    for a, b in zip(reference, outputs):
        a = np.asarray(a)
        if a.dtype.kind != "f":
            continue
        d = np.asarray(b, dtype=np.float64) - a.astype(np.float64)
        r = a.astype(np.float64)
        if scale is not None:
            d, r = d / scale, r / scale
        num += float(np.sum(d * d))
        den += float(np.sum(r * r))
    return float(np.sqrt(num / max(den, 1e-30)))


def argmax_agreement(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Optional[float]:
    """Share of positions whose arg-max over the last axis agrees (None when no array has a class axis)."""
    agree = total = 0
    for a, b in zip(reference, outputs):
        a = np.asarray(a)
        if a.ndim >= 2 and a.shape[-1] > 1:
            agree += int((np.asarray(b).argmax(-1) == a.argmax(-1)).sum())
            total += int(np.prod(a.shape[:-1]))
    return agree / total if total else None


def distortion(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> dict[str, float]:
    """``{"rel_l2": ..., "argmax_agreement": ...}`` of paired output arrays (the agreement where it applies)."""
    out = {"rel_l2": relative_l2(reference, outputs)}
    agree = argmax_agreement(reference, outputs)
    if agree is not None:
        out["argmax_agreement"] = agree
    return out
