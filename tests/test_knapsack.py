"""The shared multiple-choice knapsack against brute force."""

import itertools

import numpy as np
import pytest

from onnxprune.allocation import Option, solve, solve_exact
from onnxprune.errors import InvalidArgumentError


def _brute(options, budget):
    best, arg = np.inf, None
    for combo in itertools.product(*[range(len(o)) for o in options]):
        cost = sum(options[g][i].cost for g, i in enumerate(combo))
        loss = sum(options[g][i].loss for g, i in enumerate(combo))
        if cost <= budget + 1e-12 and loss < best - 1e-12:
            best, arg = loss, list(combo)
    return best, arg


@pytest.mark.parametrize("seed", range(25))
def test_matches_brute_force_on_integer_costs(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.integers(1, 5))
    options = [[Option(float(rng.integers(0, 20)), float(rng.random())) for _ in range(int(rng.integers(1, 5)))]
               for _ in range(groups)]
    budget = float(rng.integers(0, 60))
    want, _ = _brute(options, budget)
    got = solve(options, budget, resolution=int(budget) if budget else 1)
    if not np.isfinite(want):
        assert got is None
    else:
        assert got is not None
        assert sum(options[g][i].cost for g, i in enumerate(got)) <= budget
        assert sum(options[g][i].loss for g, i in enumerate(got)) == pytest.approx(want)


def test_rounding_up_keeps_real_costs_within_budget():
    rng = np.random.default_rng(7)
    options = [[Option(float(c), float(l)) for c, l in zip(rng.random(6) * 10, rng.random(6))] for _ in range(8)]
    for budget in (5.0, 20.0, 41.3):
        got = solve(options, budget, resolution=64)
        if got is not None:
            assert sum(options[g][i].cost for g, i in enumerate(got)) <= budget


def test_prefers_the_first_listed_option_on_ties():
    options = [[Option(10, 0.0), Option(5, 0.0)], [Option(3, 1.0), Option(1, 1.0)]]
    assert solve(options, 13, resolution=13) == [0, 0]


def test_exact_cost_search_meets_a_non_separable_budget():
    # two groups whose kept fractions multiply in a shared layer: cost = 50*a + 50*b + 100*a*b
    fr = [1.0, 0.75, 0.5, 0.25]
    options = [[Option(100 * f, (1 - f) ** 2 * (g + 1)) for f in fr] for g in range(2)]

    def exact(choice):
        a, b = fr[choice[0]], fr[choice[1]]
        return 50 * a + 50 * b + 100 * a * b

    got = solve_exact(options, 120.0, exact)
    assert got is not None and exact(got) <= 120.0
    feasible = [(c, (1 - fr[c[0]]) ** 2 + 2 * (1 - fr[c[1]]) ** 2) for c in itertools.product(range(4), range(4))
                if exact(list(c)) <= 120.0]
    best = min(l for _, l in feasible)
    assert (1 - fr[got[0]]) ** 2 + 2 * (1 - fr[got[1]]) ** 2 == pytest.approx(best)


def test_rejects_bad_options():
    with pytest.raises(InvalidArgumentError):
        solve([[]], 1.0)
    with pytest.raises(InvalidArgumentError):
        solve([[Option(-1.0, 0.0)]], 1.0)
