"""What only sparsity measures about a verified model: how far the masks moved its outputs.

Exactness itself (checker, shape inference, onnxruntime, identical outputs)
is :func:`onnxprune.verify.verify_equivalent`, the check channel pruning
uses; the sparsify passes call it with zero tolerance.
"""

from __future__ import annotations

import numpy as np


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
