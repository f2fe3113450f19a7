"""Multiple-choice knapsack: one option per group, least summed loss, summed cost within a budget.

Allocation by measured curves (per-group sensitivity after reconstruction,
as SPDY does by dynamic programming; a latency table per group, as HALP's
knapsack does) reduces to this problem. It is solved exactly on a cost grid:
each option's cost is rounded *up* to the grid, so a solution of the grid
problem always meets the true budget when costs add up; ``resolution`` bins
bound the loss of optimality to about one bin per group.

Real costs do not always add up (a layer between two pruned groups costs
``f_in * f_out`` of its MACs), so :func:`solve_exact` searches for the
largest grid budget whose solution meets the budget under the caller's exact
cost function.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import InvalidArgumentError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    """One choice for a group: ``cost`` of the resource it keeps (>= 0), ``loss`` it is predicted to cause."""

    cost: float
    loss: float
    payload: Any = None


def _check(options: Sequence[Sequence[Option]]) -> None:
    for g, opts in enumerate(options):
        if not opts:
            raise InvalidArgumentError(f"group {g} has no option")
        for o in opts:
            if not (o.cost >= 0 and math.isfinite(o.cost)) or math.isnan(o.loss):
                raise InvalidArgumentError(f"group {g}: option cost must be finite and >= 0, loss not NaN ({o})")


def solve(options: Sequence[Sequence[Option]], budget: float, resolution: int = 4096) -> Optional[list[int]]:
    """Index of the chosen option per group, or None when even the cheapest options exceed ``budget``.

    Dynamic programme over ``resolution`` cost bins: ``best[b]`` is the least
    loss of the groups seen so far with cost at most ``b`` bins; ties go to
    the option listed first (callers list the widest first, so a tie keeps
    more channels).
    """
    _check(options)
    if budget < 0 or not math.isfinite(budget):
        return None
    if not options:
        return []
    unit = budget / resolution if budget > 0 else 1.0
    nb = resolution + 1
    best = np.zeros(nb)
    choices = np.zeros((len(options), nb), dtype=np.int32)
    for g, opts in enumerate(options):
        new = np.full(nb, np.inf)
        pick = np.zeros(nb, dtype=np.int32)
        for i, o in enumerate(opts):
            c = int(math.ceil(o.cost / unit - 1e-9)) if budget > 0 else (0 if o.cost == 0 else nb)
            if c >= nb:
                continue
            cand = np.full(nb, np.inf)
            cand[c:] = best[:nb - c] + o.loss
            better = cand < new
            new[better] = cand[better]
            pick[better] = i
        best, choices[g] = new, pick
    if not np.isfinite(best[-1]):
        return None
    out = [0] * len(options)
    b = resolution
    for g in range(len(options) - 1, -1, -1):
        i = int(choices[g, b])
        out[g] = i
        o = options[g][i]
        b -= int(math.ceil(o.cost / unit - 1e-9)) if budget > 0 else 0
    return out


def solve_exact(options: Sequence[Sequence[Option]], budget: float, exact_cost: Callable[[list[int]], float],
                resolution: int = 4096, rounds: int = 14) -> Optional[list[int]]:
    """Like :func:`solve`, but the choice meets ``exact_cost(choice) <= budget``.

    The grid problem is solved for a scaled budget; a bisection finds the
    largest scale whose solution meets the budget under the exact cost (the
    exact cost need not be separable, only roughly monotone in the grid
    budget). None when no scale in (0, 1.5] gives a feasible choice.
    """
    hi_choice = solve(options, budget * 1.5, resolution)
    if hi_choice is not None and exact_cost(hi_choice) <= budget:
        return hi_choice
    lo, hi, best = 0.0, 1.5, None
    for _ in range(rounds):
        mid = (lo + hi) / 2
        choice = solve(options, budget * mid, resolution)
        if choice is not None and exact_cost(choice) <= budget:
            lo, best = mid, choice
        else:
            hi = mid
    if best is None:
        cheapest = [int(np.argmin([o.cost for o in opts])) for opts in options]
        if exact_cost(cheapest) <= budget:
            best = cheapest
    return best
