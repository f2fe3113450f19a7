"""Allocation of a MAC or parameter budget across groups by their measured sensitivity curves.

Each group offers its measured widths (:mod:`.sensitivity`); the knapsack
(:mod:`.knapsack`) picks one per group so that the summed distortion is
least while the model meets the budget under the exact cost
(:meth:`onnxprune.graph.macs.CostModel.evaluate`: a layer between two pruned
groups keeps ``f_in * f_out`` of its MACs, which the per-group costs of the
grid problem only approximate). Which units of a group go is left to the
criterion: the curve's options are prefixes of the group in score order.

Distortions do not add up: on EfficientNet-Lite0 the hidden channels of
each residual block are nearly free one block at a time (the block can
almost be skipped), but not all at once. As SPDY does, the knapsack is
therefore re-run with per-group weights on the curves, found by a local
random search that judges each candidate by its joint distortion (every
group's re-fit applied together, on the held-back samples).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np

from ..graph.macs import CostModel
from .selection import Target
from .knapsack import Option, solve_exact
from .sensitivity import Curve, Sensitivity

logger = logging.getLogger(__name__)

SEARCH_ROUNDS = 40


def _resource(cost: CostModel, removed: list[int], is_macs: bool) -> float:
    m, p = cost.evaluate(np.array(sorted(removed), dtype=np.int64))
    return float(m if is_macs else p)


class _Problem:
    """The knapsack of one budget over the curves; ``choose(weights)`` re-weights each group's losses."""

    def __init__(self, curves: list[Curve], cost: CostModel, target: Target, loss: str) -> None:
        self.curves, self.cost = curves, cost
        self.is_macs = target.macs is not None
        dense = float(cost.dense_macs if self.is_macs else cost.dense_params)
        limit = (target.macs if self.is_macs else target.params) * dense
        self.floor = dense
        self.saved, self.values = [], []
        for c in curves:
            saved = [dense - _resource(cost, r, self.is_macs) for r in c.removed]
            self.floor -= max(saved)
            self.saved.append(saved)
            self.values.append(c.loss if loss == "output" else c.proxy)
        # costs are kept resources above the cheapest choice of every group: the grid budget is what is left
        self.budget = limit - self.floor

    def exact(self, choice: list[int]) -> float:
        return _resource(self.cost, removed_units(self.curves, choice), self.is_macs) - self.floor

    def choose(self, weights: Optional[Sequence[float]] = None) -> Optional[list[int]]:
        if self.budget < 0:
            return None
        weights = np.ones(len(self.curves)) if weights is None else weights
        options = [[Option(max(saved) - s, float(v) * float(w), i) for i, (s, v) in enumerate(zip(saved, values))]
                   for saved, values, w in zip(self.saved, self.values, weights)]
        return solve_exact(options, self.budget, self.exact)


def allocate(curves: list[Curve], cost: CostModel, target: Target, loss: str = "output",
             joint: Optional[Callable[[list[int]], float]] = None, rounds: int = SEARCH_ROUNDS,
             seed: int = 0) -> Optional[list[int]]:
    """Units to remove: one option per curve, least summed ``loss`` within ``target`` (MACs or params).

    With ``joint`` (the distortion of a whole choice), per-group weights on
    the losses are searched for ``rounds`` candidates and the choice of least
    joint distortion is kept. None when no choice meets the budget (the
    caller falls back to the greedy selection).
    """
    problem = _Problem(curves, cost, target, loss)
    choice = problem.choose()
    if choice is None:
        return None
    if joint is not None:
        choice = _search(problem, choice, joint, rounds, np.random.default_rng(seed))
    logger.info("allocation by sensitivity: %s", ", ".join(f"{c.group}:{c.widths[i]}" for c, i in zip(curves, choice)))
    return removed_units(curves, choice)


def _search(problem: _Problem, choice: list[int], joint: Callable[[list[int]], float], rounds: int,
            rng: np.random.Generator) -> list[int]:
    """SPDY's search, small: perturb the log-weights of a few groups, keep what lowers the joint distortion."""
    n = len(problem.curves)
    log_w = np.zeros(n)
    best = joint(choice)
    seen = {tuple(choice): best}
    start = best
    for _ in range(rounds):
        step = rng.normal(0.0, 1.0, n) * (rng.random(n) < max(2.0 / n, 0.2))
        cand_w = log_w + step
        cand = problem.choose(np.exp(cand_w))
        if cand is None:
            continue
        key = tuple(cand)
        if key not in seen:
            seen[key] = joint(cand)
        if seen[key] < best:
            best, choice, log_w = seen[key], cand, cand_w
    logger.info("allocation search: joint distortion %.4g -> %.4g over %d distinct choices", start, best, len(seen))
    return choice


def removed_units(curves: list[Curve], choice: list[int]) -> list[int]:
    return sorted(r for c, i in zip(curves, choice) for r in c.removed[i])


def plan_by_sensitivity(p, config, calibration, scores: dict[int, float]) -> Optional[list[int]]:
    """Roots to remove from the Prepared model ``p``: curves measured on ``calibration``, then the knapsack
    (with the joint search for ``allocation="spdy"``)."""
    key = ("sensitivity", repr(config.oracle_cost), id(calibration), config.recover, config.seed,
           config.constraints, tuple(sorted(scores.items())))
    if key not in p.memo:  # a back-off toward dense re-plans on the same curves
        sens = Sensitivity(p.analysis, p.model, scores, config.constraints, calibration.feeds(),
                           cost=config.oracle_cost, refit=config.recover != "none", seed=config.seed)
        p.memo[key] = (sens, sens.curves())
    sens, curves = p.memo[key]
    if not curves:
        return None
    if config.allocation == "block":
        return allocate(curves, p.cost, config.target, "proxy")
    if config.allocation == "spdy":
        return allocate(curves, p.cost, config.target, "output", joint=lambda ch: sens.joint_loss(curves, ch),
                        seed=config.seed)
    return allocate(curves, p.cost, config.target, "output")
