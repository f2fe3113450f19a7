"""Allocation by sensitivity: Gram-based fits, curves measured in one session, the knapsack's choice."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.allocation.by_sensitivity import allocate
from onnxprune.allocation.sensitivity import Curve, group_orders, measure_curves
from onnxprune.config import PruneConfig
from onnxprune.errors import InvalidArgumentError
from onnxprune.graph.surgery import prune_channels
from onnxprune.lsq import GramSystem, fit_gram, fit_toward
from onnxprune.pruning.pipeline import load_calibration, plan_units, run_pruning
from onnxprune.pruning.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.scoring import magnitude_scores
from onnxprune.scoring.oracle_cost import oracle_cost
from onnxprune.allocation.selection import Constraints, Target

from builders import chain_flatten_gemm, inverted_residual, level_heads, option_a_shortcut


def _data(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 3, 8, 8)).astype(np.float32) + np.linspace(0, 1, 8, dtype=np.float32)


def test_fit_from_gram_equals_fit_on_the_rows_of_a_column_subset():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((300, 12))
    y = rows @ rng.standard_normal((12, 5)) + 0.1 * rng.standard_normal((300, 5))
    w0, b0 = rng.standard_normal((5, 12)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    system = GramSystem(12, 5)
    system.add(rows[:150], y[:150], held=False)
    system.add(rows[150:240], y[150:240], held=False)  # sums add up batch by batch
    system.add(rows[240:], y[240:], held=True)
    cols = np.array([0, 2, 3, 7, 8, 11])
    a = fit_gram(system, cols, w0, b0)
    b = fit_toward(rows[:, cols], y, w0[:, cols], b0, 240)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.bias, b.bias, rtol=1e-4, atol=1e-5)
    assert a.ridge == b.ridge
    assert a.err_fit == pytest.approx(b.err_fit, rel=1e-6)
    assert a.err_plain == pytest.approx(b.err_plain, rel=1e-6)


@pytest.mark.parametrize("builder", [inverted_residual, option_a_shortcut, chain_flatten_gemm, level_heads])
def test_curves_without_refit_equal_the_distortion_of_the_pruned_model(builder):
    """Zeroing the consuming columns in one session is the surgery: same outputs on the held-back samples."""
    model = builder()
    p = prepare(model)
    data = _data()
    scores = magnitude_scores(p.analysis)
    feeds = [{"x": data[i:i + 16]} for i in range(0, 40, 16)]
    curves = measure_curves(p.analysis, p.model, scores, Constraints(round_to=1), feeds, cost="mse", refit=False)
    assert curves and all(c.loss[0] == 0.0 and not c.removed[0] for c in curves)
    held = {"x": data[32:]}
    base = make_session(p.model).run(None, held)
    for c in curves:
        for removed, loss in zip(c.removed[1:], c.loss[1:]):
            pruned = make_session(prune_channels(p.analysis, removed)).run(None, held)
            assert loss == pytest.approx(float(oracle_cost("mse", base, pruned, None).mean()), rel=1e-4, abs=1e-9)


def test_default_path_on_a_model_whose_groups_reach_only_some_outputs():
    """Per-level heads: energy + sensitivity allocation + least squares, and the oracle, complete and stay exact.

    A group of level 2 does not reach level 1's outputs; its curve still compares every output (level 1's
    unchanged), so the loss equals the distortion of the pruned model over all four outputs.
    """
    model = level_heads()
    data = _data(48)
    for criterion in ("energy", "oracle"):
        config = PruneConfig(criterion=criterion, target_macs=0.7, min_fidelity=0)
        assert config.allocation_for(True) == ("sensitivity" if criterion == "energy" else "greedy")
        result = run_pruning(model, None, {"x": data}, config)
        assert result.report.after.macs <= 0.7 * result.report.before.macs
        outs = make_session(result.model).run(None, {"x": data[:4]})
        assert len(outs) == 4 and all(np.isfinite(o).all() for o in outs)
        assert result.report.extra["recovery"].startswith("least-squares re-fit of ")
        assert result.report.verification.startswith("verified:")


def test_refit_lowers_the_measured_distortion():
    p = prepare(inverted_residual())
    feeds = [{"x": _data(64)}]
    scores = magnitude_scores(p.analysis)
    plain = measure_curves(p.analysis, p.model, scores, Constraints(round_to=1), feeds, cost="mse", refit=False)
    fitted = measure_curves(p.analysis, p.model, scores, Constraints(round_to=1), feeds, cost="mse")
    assert sum(map(sum, (c.loss for c in fitted))) < sum(map(sum, (c.loss for c in plain)))
    assert all(v >= 0 for c in fitted for v in c.proxy)


def test_options_keep_round_to_multiples_and_the_layer_limit():
    p = prepare(inverted_residual())
    scores = magnitude_scores(p.analysis)
    for rt, ratio in ((4, 0.9), (1, 0.5)):
        orders = group_orders(p.analysis, scores, Constraints(max_layer_ratio=ratio, round_to=rt))
        for gid, sets in orders.items():
            n = len(p.analysis.groups[gid].units)
            widths = [n - len(s) for s in sets]
            assert widths[0] == n and len(set(widths)) == len(widths)
            assert all(w % rt == 0 or w == n for w in widths)
            assert min(widths) >= n * (1 - ratio) - 1e-9
            for s in sets:  # prefixes of the group in score order
                assert sorted(scores[r] for r in s) == sorted(scores[r] for r in sets[-1][:len(s)])


def test_knapsack_spares_the_sensitive_group_and_meets_the_budget():
    p = prepare(inverted_residual())
    scores = magnitude_scores(p.analysis)
    orders = group_orders(p.analysis, scores, Constraints(round_to=1))
    gids = sorted(orders)
    sensitive = max(gids, key=lambda g: len(p.analysis.groups[g].units))
    curves = []
    for g in gids:
        c = Curve(g, removed=orders[g])
        c.widths = [len(p.analysis.groups[g].units) - len(r) for r in orders[g]]
        c.loss = [len(r) * (100.0 if g == sensitive else 1.0) for r in orders[g]]
        c.proxy = list(c.loss)
        curves.append(c)
    removed = allocate(curves, p.cost, Target(macs=0.8))
    kept = p.cost.evaluate(np.array(removed))[0]
    assert kept <= 0.8 * p.cost.dense_macs
    assert not set(removed) & set(p.analysis.groups[sensitive].units) or len(gids) == 1
    assert allocate(curves, p.cost, Target(macs=0.001)) is None  # beyond every group's narrowest width


def test_plan_units_by_sensitivity_meets_the_target():
    model = inverted_residual()
    p = prepare(model)
    cal = load_calibration({"x": _data(48)}, model, batch_size=16)
    for allocation in ("sensitivity", "spdy", "block"):
        config = PruneConfig(criterion="energy", target_macs=0.6, allocation=allocation, round_to=1)
        removed = plan_units(p, config, cal)
        assert removed and p.cost.evaluate(np.array(removed))[0] <= 0.6 * p.cost.dense_macs


def test_allocation_setting():
    with pytest.raises(InvalidArgumentError, match="allocation"):
        PruneConfig(allocation="nope")
    assert PruneConfig(criterion="energy", target_macs=0.5).allocation_for(True) == "sensitivity"
    assert PruneConfig(target_macs=0.5).allocation_for(False) == "greedy"
    assert PruneConfig(percentage=20).allocation_for(True) == "greedy"
    assert PruneConfig(target_macs=0.5, steps=3).allocation_for(True) == "greedy"
    assert PruneConfig(target_params=0.5, allocation="greedy").allocation_for(True) == "greedy"


def test_joint_distortion_of_one_group_is_its_curve_and_grows_with_more():
    from onnxprune.allocation.sensitivity import Sensitivity
    p = prepare(inverted_residual())
    sens = Sensitivity(p.analysis, p.model, magnitude_scores(p.analysis), Constraints(round_to=1),
                       [{"x": _data(48)}], cost="mse")
    curves = sens.curves()
    assert len(curves) == 2
    for k, c in enumerate(curves):
        for i in range(len(c.removed)):
            choice = [0, 0]
            choice[k] = i
            assert sens.joint_loss(curves, choice) == pytest.approx(c.loss[i], rel=1e-4, abs=1e-9)
    deepest = [len(c.removed) - 1 for c in curves]
    assert sens.joint_loss(curves, deepest) > max(c.loss[-1] for c in curves)
