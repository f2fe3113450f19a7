"""Turn unit scores into a removal set that meets a target under per-layer constraints.

Units are taken in ascending score order (or score per MAC saved when
``cost_aware``); a unit is skipped when it would leave any tensor with fewer
channels than its minimum (at least one, HALCON's rule, and at least
``1 - max_layer_ratio`` of each layer). Percentage targets count kernels as
HALCON does; MAC and parameter budgets are met exactly by a binary search on
the prefix of accepted units, costed by :class:`CostModel`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .cost import CostModel
from .errors import InvalidArgumentError, NothingToPruneError
from .graph.analysis import Analysis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What to reach: ``percentage`` of prunable kernels removed, or a kept fraction of MACs/params."""

    percentage: Optional[float] = None
    macs: Optional[float] = None
    params: Optional[float] = None

    def __post_init__(self) -> None:
        given = [v for v in (self.percentage, self.macs, self.params) if v is not None]
        if len(given) > 1:
            raise InvalidArgumentError("give only one of percentage, target MACs, target params")
        if self.percentage is not None and not 0 <= self.percentage < 100:
            raise InvalidArgumentError(f"percentage must be in [0, 100), got {self.percentage}")
        for name, v in (("target MACs", self.macs), ("target params", self.params)):
            if v is not None and not 0 < v <= 1:
                raise InvalidArgumentError(f"{name} is the kept fraction and must be in (0, 1], got {v}")

    @property
    def effective(self) -> "Target":
        if self.percentage is None and self.macs is None and self.params is None:
            return Target(percentage=10.0)
        return self

    def describe(self) -> str:
        t = self.effective
        if t.percentage is not None:
            return f"{t.percentage:g}% of prunable kernels"
        if t.macs is not None:
            return f"<= {t.macs:.0%} of MACs"
        return f"<= {t.params:.0%} of parameters"


@dataclass(frozen=True)
class Constraints:
    """Per-layer limits: never remove more than ``max_layer_ratio`` of a layer; keep multiples of ``round_to``."""

    max_layer_ratio: float = 0.9
    min_kernels: int = 1
    round_to: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.max_layer_ratio <= 1:
            raise InvalidArgumentError(f"max layer ratio must be in (0, 1], got {self.max_layer_ratio}")
        if self.min_kernels < 1:
            raise InvalidArgumentError("min kernels per layer must be at least 1")
        if self.round_to < 1:
            raise InvalidArgumentError("round-to must be a positive integer")


class _Budget:
    """Remaining removable channels of every distinct labelled tensor."""

    def __init__(self, analysis: Analysis, constraints: Constraints) -> None:
        roots = analysis.root_of
        producer_outputs = {layer.output for layer in analysis.layers.values()}
        seen: dict[bytes, int] = {}
        self.slack: list[int] = []
        self.touch: dict[int, list[tuple[int, int]]] = {}
        for name, lab in analysis.labels.items():
            r = roots[lab.units]
            key = r.tobytes()
            n = r.shape[0]
            minimum = 1
            if name in producer_outputs:
                minimum = max(constraints.min_kernels, math.ceil(n * (1 - constraints.max_layer_ratio) - 1e-9), 1)
            if key in seen:
                idx = seen[key]
                self.slack[idx] = min(self.slack[idx], n - minimum)
                continue
            idx = len(self.slack)
            seen[key] = idx
            self.slack.append(n - minimum)
            u, c = np.unique(r, return_counts=True)
            for root, count in zip(u.tolist(), c.tolist()):
                self.touch.setdefault(root, []).append((idx, count))

    def take(self, root: int) -> bool:
        entries = self.touch.get(root, [])
        if any(self.slack[i] < c for i, c in entries):
            return False
        for i, c in entries:
            self.slack[i] -= c
        return True


def ordered_candidates(analysis: Analysis, scores: dict[int, float], constraints: Constraints,
                       cost_aware: bool = False, cost: Optional[CostModel] = None) -> list[int]:
    """Units in removal order, each admissible given the ones before it."""
    units = [r for r in analysis.prunable_units if r in scores]
    if not units:
        raise NothingToPruneError("the model has no prunable convolution kernel "
                                  "(run `onnxprune inspect` to see why each group is frozen)")
    if cost_aware:
        savings = (cost or CostModel(analysis)).unit_savings()
        key = {r: scores[r] / max(savings.get(r, (0.0, 0.0))[0], 1.0) for r in units}
    else:
        key = scores
    order = sorted(units, key=lambda r: (key[r], r))
    budget = _Budget(analysis, constraints)
    return [r for r in order if budget.take(r)]


def _round_groups(analysis: Analysis, removed: list[int], round_to: int, order_pos: dict[int, int]) -> list[int]:
    """Drop the last-chosen units of each group until its kept count is a multiple of ``round_to``."""
    if round_to <= 1:
        return removed
    by_group: dict[int, list[int]] = {}
    for r in removed:
        by_group.setdefault(analysis.group_of[r], []).append(r)
    keep: list[int] = []
    for gid, rs in by_group.items():
        n = len(analysis.groups[gid].units)
        k = len(rs)
        while k > 0 and (n - k) % round_to:
            k -= 1
        rs.sort(key=lambda r: order_pos[r])
        keep.extend(rs[:k])
    return keep


def select(analysis: Analysis, scores: dict[int, float], target: Target,
           constraints: Constraints = Constraints(), cost_aware: bool = False,
           cost: Optional[CostModel] = None) -> list[int]:
    """Roots of the units to remove."""
    target = target.effective
    order = ordered_candidates(analysis, scores, constraints, cost_aware, cost)
    pos = {r: i for i, r in enumerate(order)}
    if target.percentage is not None:
        total = sum(len(analysis.unit_kernels[r]) for r in analysis.prunable_units)
        want = total * target.percentage / 100.0
        chosen, count = [], 0
        for r in order:
            if count >= want - 1e-9:
                break
            chosen.append(r)
            count += len(analysis.unit_kernels[r])
        return _round_groups(analysis, chosen, constraints.round_to, pos)
    cost = cost or CostModel(analysis)
    is_macs = target.macs is not None
    limit = (target.macs if is_macs else target.params) * (cost.dense_macs if is_macs else cost.dense_params)

    def measure(k: int) -> tuple[int, list[int]]:
        chosen = _round_groups(analysis, order[:k], constraints.round_to, pos)
        m, p = cost.evaluate(np.array(chosen, dtype=np.int64))
        return (m if is_macs else p), chosen

    lo, hi = 0, len(order)
    value, best = measure(hi)
    if value > limit:
        logger.warning("target %s cannot be reached within the per-layer limits; removing every admissible unit",
                       target.describe())
        return best
    while lo < hi:
        mid = (lo + hi) // 2
        value, _ = measure(mid)
        if value <= limit:
            hi = mid
        else:
            lo = mid + 1
    return measure(lo)[1]
