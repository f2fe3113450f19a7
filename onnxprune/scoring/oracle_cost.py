"""Costs of the oracle: how much a perturbed output differs from the unperturbed one, per sample.

Label-free (the default): KL divergence of the outputs for logits or
probabilities, normalised squared error otherwise. With labels: the change
of cross-entropy (``loss`` signed, ``abs`` absolute). Or any callable
``cost(base_outputs, perturbed_outputs, labels) -> per-sample costs``.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from ..errors import CalibrationError

CostFn = Callable[[list, list, Optional[np.ndarray]], np.ndarray]
COSTS = ("auto", "kl", "mse", "loss", "abs")


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _output_kind(y: np.ndarray) -> str:
    if y.ndim >= 2 and y.shape[-1] > 1:
        if y.min() >= 0 and np.allclose(y.sum(-1), 1.0, atol=1e-3):
            return "prob"
        if y.ndim == 2:
            return "logits"
    return "mse"


def _per_sample(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1).sum(1)


def oracle_cost(cost: Union[str, CostFn], base: list[np.ndarray], pert: list[np.ndarray],
                labels: Optional[np.ndarray]) -> np.ndarray:
    """Per-sample cost of ``pert`` against ``base`` (lists of model outputs, rows aligned)."""
    if callable(cost):
        return np.asarray(cost(base, pert, labels), dtype=np.float64).reshape(-1)
    mode = cost
    if mode in ("loss", "abs"):
        if labels is None:
            raise CalibrationError(f"oracle cost {mode!r} needs labels; give labels or use the label-free default")
        y, yb = pert[0], base[0]
        p = y if _output_kind(yb) == "prob" else _softmax(y)
        pb = yb if _output_kind(yb) == "prob" else _softmax(yb)
        idx = np.arange(len(labels))
        d = -np.log(np.clip(p[idx, labels], 1e-12, None)) + np.log(np.clip(pb[idx, labels], 1e-12, None))
        return np.abs(d) if mode == "abs" else d
    total = np.zeros(base[0].shape[0], dtype=np.float64)
    for b, q in zip(base, pert):
        if not np.issubdtype(b.dtype, np.floating):
            continue
        kind = _output_kind(b) if mode == "auto" else ("logits" if mode == "kl" else "mse")
        if kind == "logits" and b.ndim != 2:
            kind = "prob" if _output_kind(b) == "prob" else "mse"
        if kind in ("logits", "prob"):
            pb = _softmax(b.astype(np.float64)) if kind == "logits" else np.clip(b.astype(np.float64), 1e-12, None)
            pq = _softmax(q.astype(np.float64)) if kind == "logits" else np.clip(q.astype(np.float64), 1e-12, None)
            kl = pb * (np.log(pb) - np.log(pq))
            total += _per_sample(kl) / max(1, int(np.prod(b.shape[1:-1])))
        else:
            num = _per_sample((q.astype(np.float64) - b) ** 2)
            den = _per_sample(b.astype(np.float64) ** 2)
            total += num / np.maximum(den, 1e-12)
    return total
