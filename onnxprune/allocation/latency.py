"""Selection under a latency budget: a knapsack over the measured table, checked by measuring the result.

Per group, the options are the table's widths (widest first); an option's
loss is the summed scores of the units removed to reach it, lowest-scored
first within the group; its cost the group's part of the predicted time
(:class:`onnxprune.latency.predict.LatencyModel`: each layer's time scaled by
the measured relative speed of the groups on both of its sides). The
knapsack (:func:`.knapsack.solve`, its budget searched so that the full,
non-separable prediction fits, then a few rounds with the costs linearised
around the choice while that lowers the loss within the budget) keeps the
most importance whose predicted time fits ``fraction`` of the dense model's
measured time.

The prediction takes a layer's share of the time from its MACs, which
per-op overhead (most of the time at batch 1) breaks, and whole models fuse
ops the pieces run apart. So the chosen model is built and *measured*
(interleaved with the dense model), and the budget handed to the knapsack is
corrected from the measured ratio for a few rounds; the widest choice whose
measured time meets the target wins (none meeting it: the fastest measured).

Depth: with ``allow_drop`` (``--allow-block-removal``), a group the analysis
proves ``droppable`` (a residual branch whose removal leaves the identity,
:mod:`onnxprune.graph.depth`) gets one more option, width 0: its layers cost
nothing, all of its units' scores are lost, and the per-tensor limits do not
apply to it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..graph.analysis import Analysis
from ..latency.timing import Speed, feeds_for, time_against_dense
from ..latency.predict import LatencyModel
from ..latency.table import LatencyTable
from .selection import Constraints, _Budget
from .knapsack import Option, solve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyChoice:
    """Units to remove, the kept width per group, the predicted and (when measured) the measured time."""

    removed: list[int]
    widths: dict[int, int]
    predicted_ms: float
    speed: Optional[Speed] = None  # measured against the dense model

    @property
    def measured_fraction(self) -> Optional[float]:
        """Pruned over dense time from the fastest round of each (:attr:`Speed.fastest_fraction`)."""
        return None if self.speed is None else self.speed.fastest_fraction


def min_width(n: int, constraints: Constraints) -> int:
    """The narrowest width a group of ``n`` units may keep under the per-layer limits."""
    return max(constraints.min_kernels, math.ceil(n * (1 - constraints.max_layer_ratio) - 1e-9), 1)


def group_options(analysis: Analysis, model: LatencyModel, scores: dict[int, float], gid: int,
                  constraints: Constraints, current: Optional[dict[int, int]] = None) -> list[Option]:
    """The knapsack options of group ``gid``: payload (gid, width, units removed), widest first."""
    group = analysis.groups[gid]
    units = sorted((r for r in group.units if r in scores), key=lambda r: (scores[r], r))
    n = len(group.units)
    gl = model.table.groups[gid]
    lowest = min_width(n, constraints)
    cum = np.concatenate([[0.0], np.cumsum([scores[r] for r in units])])
    opts = []
    for w in sorted(gl.widths, reverse=True):
        drop = n - w
        if w < lowest or drop > len(units):
            continue
        opts.append(Option(cost=max(model.group_cost(gid, w, current or {}), 0.0), loss=float(cum[drop]),
                           payload=(gid, w, tuple(units[:drop]))))
    if constraints.allow_drop and group.droppable and len(units) == n:  # depth: the branch goes (docstring)
        opts.append(Option(cost=0.0, loss=float(cum[n]), payload=(gid, 0, tuple(units))))
    return opts or [Option(cost=model.group_cost(gid, n), loss=0.0, payload=(gid, n, ()))]


def choose(analysis: Analysis, table: LatencyTable, scores: dict[int, float], fraction: float,
           constraints: Constraints = Constraints(), iterations: int = 4) -> LatencyChoice:
    """The knapsack's choice for a predicted time of ``fraction`` of the dense model."""
    model = LatencyModel(analysis, table)
    gids = sorted(table.groups)
    budget = fraction * model.dense_ms - model.constant_ms

    def widths_of(options, pick):
        return {g: opts[i].payload[1] for g, opts, i in zip(gids, options, pick)}

    def loss_of(options, pick):
        return sum(opts[i].loss for opts, i in zip(options, pick))

    options = [group_options(analysis, model, scores, g, constraints) for g in gids]
    pick = _largest_fitting(options, budget, lambda pk: model.predict(widths_of(options, pk)) - model.constant_ms)
    for _ in range(iterations if pick is not None else 0):
        # costs linearised around the current choice (LatencyModel.group_cost); kept only when better and within
        # the budget under the full prediction
        current = widths_of(options, pick)
        opts2 = [group_options(analysis, model, scores, g, constraints, current) for g in gids]
        pick2 = solve(opts2, budget)
        if pick2 is None or model.predict(widths_of(opts2, pick2)) - model.constant_ms > budget \
                or loss_of(opts2, pick2) >= loss_of(options, pick) - 1e-12:
            break
        options, pick = opts2, pick2
    if pick is None:
        logger.info("latency %.0f%% cannot be reached by narrowing within the per-layer limits (predicted); "
                       "taking the fastest widths", fraction * 100)
        pick = [int(np.argmin([o.cost for o in opts])) for opts in options]
    chosen = [opts[i].payload for opts, i in zip(options, pick)]
    budget_check = _Budget(analysis, constraints)  # per-tensor limits; a dropped branch (width 0) is exempt
    removed = [r for _, w, units in chosen if w == 0 for r in units]
    removed += [r for _, w, units in chosen if w > 0 for r in units if budget_check.take(r)]
    widths = {g: w for g, w, _ in chosen}
    return LatencyChoice(sorted(removed), widths, model.predict(widths))


def select_latency(analysis: Analysis, scores: dict[int, float], fraction: float, table: LatencyTable,
                   constraints: Constraints = Constraints(), measure: bool = True,
                   rounds: int = 6) -> LatencyChoice:
    """Units to remove for a *measured* time of at most ``fraction`` of the dense model's (see module docstring)."""
    choice = choose(analysis, table, scores, fraction, constraints)
    if not measure:
        return choice
    from ..passes.prune import PruneChannelsPass  # each candidate built by the surgery pass (timed, not verified)
    settings = table.settings
    shapes = {k: (settings.batch,) + tuple(v[1:]) for k, v in analysis.probe.input_shapes.items()}
    feed = feeds_for(analysis.proto, shapes)
    aim, points = fraction, []
    seen: dict[tuple, LatencyChoice] = {}
    for i in range(rounds):
        key = tuple(choice.removed)
        if key not in seen:
            pruned = PruneChannelsPass(analysis, choice.removed, verify=False)(analysis.proto).model
            speed = time_against_dense(analysis.proto, pruned, feed, settings)
            seen[key] = LatencyChoice(choice.removed, choice.widths, choice.predicted_ms, speed)
        ratio = seen[key].measured_fraction
        logger.info("latency round %d: aimed at %.3f, predicted %.3f, measured %.3f of dense (target %.3f)",
                    i + 1, aim, choice.predicted_ms / table.dense.median, ratio, fraction)
        points.append((aim, ratio, key))
        if fraction * 0.97 <= ratio <= fraction:
            break
        aim = _next_aim(points, fraction)
        if aim is None:
            break
        choice = choose(analysis, table, scores, aim, constraints)
    met = [(a, seen[k]) for a, r, k in points if r <= fraction]
    if met:
        return max(met, key=lambda m: m[0])[1]
    return min(seen.values(), key=lambda c: c.measured_fraction)


def _largest_fitting(options: list[list[Option]], budget: float, exact) -> Optional[list[int]]:
    """The knapsack's choice for the largest separable budget whose choice meets ``budget`` under ``exact``.

    The separable costs over-state a layer between two narrowed groups
    ((a + b) / 2 against a * b), so the separable budget searched for can be
    far above the true one (beyond :func:`solve_exact`'s range): bisect it
    between the cheapest and the dense choice.
    """
    lo = sum(min(o.cost for o in opts) for opts in options)
    hi = sum(max(o.cost for o in opts) for opts in options)
    best = None
    if budget < 0:
        return None
    for _ in range(20):
        mid = (lo + hi) / 2
        pick = solve(options, mid)
        if pick is not None and exact(pick) <= budget:
            best, lo = pick, mid
        else:
            hi = mid
        if hi - lo < 1e-4 * max(hi, 1e-9):
            break
    if best is None:
        cheapest = [int(np.argmin([o.cost for o in opts])) for opts in options]
        best = cheapest if exact(cheapest) <= budget else None
    return best


def _next_aim(points: list[tuple[float, float, tuple]], fraction: float) -> Optional[float]:
    """The next predicted fraction to ask the knapsack for: interpolate between the closest measured
    points on either side of the target, else step by the measured/predicted ratio."""
    below = [(a, r) for a, r, _ in points if r <= fraction]
    above = [(a, r) for a, r, _ in points if r > fraction]
    if below and above:
        (a0, r0), (a1, r1) = max(below), min(above)
        if abs(a1 - a0) < 1e-3 or r1 <= r0:
            return None
        return a0 + (fraction - r0) * (a1 - a0) / (r1 - r0)
    a, r, _ = points[-1]
    step = min(max(fraction / max(r, 1e-6), 0.67), 1.5)  # one noisy measurement must not throw the aim far
    return float(min(1.0, max(a * step, 1e-3)))
