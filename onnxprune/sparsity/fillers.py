"""Mask fillers: which of the still non-zero weights become zero.

Every filler takes the current mask (1 = weight kept) and returns a new mask
that is a subset of it, so passes compose like torch's PruningContainer: a
weight pruned once stays pruned, and new zeros are chosen among survivors.
``target`` is the total number of zeros (of weights, or of slices for ``ln``)
the unit must hold afterwards; if it already holds that many, nothing changes.

- ``random`` (N2D2): random survivors until the target is reached.
- ``iternonstruct`` (N2D2): zero every |w| <= k*delta for the smallest k >= 1
  that reaches the target (ties at the cut are all zeroed, so it may overshoot).
- ``l1`` (torch's l1_unstructured): the survivors of smallest |w|, exactly.
- ``ln`` (torch's ln_structured): whole slices along ``dim`` of smallest Ln norm.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)


def unstructured_mask(filler: str, importance: np.ndarray, mask: np.ndarray, target: int,
                      rng: np.random.Generator, delta: float) -> np.ndarray:
    """New flat mask with at least ``target`` zeros (exactly, except iternonstruct's ties)."""
    mask = mask.astype(bool, copy=True).reshape(-1)
    need = int(target) - int(mask.size - np.count_nonzero(mask))
    if need <= 0:
        return mask
    survivors = np.flatnonzero(mask)
    need = min(need, survivors.size)
    if filler == "random":
        mask[rng.choice(survivors, size=need, replace=False)] = False
    elif filler == "l1":
        scores = np.abs(importance.reshape(-1)[survivors].astype(np.float64))
        mask[survivors[np.argsort(scores, kind="stable")[:need]]] = False
    elif filler == "iternonstruct":
        k = iternonstruct_k(importance, mask, int(target), delta)
        scores = np.where(mask, np.abs(importance.reshape(-1).astype(np.float64)), 0.0)
        mask &= scores > k * delta
    else:
        raise ValueError(f"not an unstructured filler: {filler}")
    return mask


def iternonstruct_k(importance: np.ndarray, mask: np.ndarray, target: int, delta: float) -> int:
    """Smallest k >= 1 with #{|w| <= k*delta} >= target, pruned weights counting as 0.

    N2D2 raises k one by one; the k is the same when found from the sorted
    magnitudes, which keeps a delta of 1e-3 cheap on weights of magnitude 10.
    """
    scores = np.sort(np.where(mask.reshape(-1), np.abs(importance.reshape(-1).astype(np.float64)), 0.0))
    target = min(int(target), scores.size)
    if target <= 0:
        return 1
    k = max(1, math.ceil(scores[target - 1] / delta))

    def count(kk: int) -> int:
        return int(np.searchsorted(scores, kk * delta, side="right"))

    while count(k) < target:  # guards float rounding of ceil(v / delta)
        k += 1
    while k > 1 and count(k - 1) >= target:
        k -= 1
    return k


def slice_view(array: np.ndarray, dim: int) -> np.ndarray:
    """[slices, rest] view of ``array`` with ``dim`` first."""
    return np.moveaxis(array, dim, 0).reshape(array.shape[dim], -1)


def ln_structured_mask(importance: np.ndarray, mask: np.ndarray, dim: int, n: float,
                       target_slices: int) -> np.ndarray:
    """New mask with at least ``target_slices`` all-zero slices along ``dim``.

    Slices already all zero count as pruned; the others are ranked by the Ln
    norm of their (masked) importance, smallest first, ties by index.
    """
    mask = mask.astype(bool, copy=True)
    slices = slice_view(mask, dim)
    dead = ~slices.any(axis=1)
    need = int(target_slices) - int(np.count_nonzero(dead))
    if need <= 0:
        return mask
    alive = np.flatnonzero(~dead)
    need = min(need, alive.size)
    values = slice_view(np.where(mask, np.abs(importance.astype(np.float64)), 0.0), dim)
    norms = np.linalg.norm(values[alive], ord=n, axis=1)
    chosen = alive[np.argsort(norms, kind="stable")[:need]]
    moved = np.moveaxis(mask, dim, 0)  # a view: writing it writes mask
    moved[chosen] = False
    return mask


def count_slices(mask: np.ndarray, dim: int) -> tuple[int, int]:
    """(all-zero slices, slices) of a mask along ``dim``."""
    slices = slice_view(mask.astype(bool), dim)
    return int(np.count_nonzero(~slices.any(axis=1))), int(slices.shape[0])
