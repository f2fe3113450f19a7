"""Recovery: verified exact before, closer to the original after."""

from __future__ import annotations

import numpy as np

from onnxprune.api import build_pruned
from onnxprune.passes.recover import recover
from onnxprune.pipeline import load_calibration
from onnxprune.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.selection import Target, select
from onnxprune.scoring import magnitude_scores

from builders import chain_flatten_gemm, inverted_residual, se_block


def distortion(model, ref, feeds):
    a = make_session(model).run(None, feeds)[0]
    b = make_session(ref).run(None, feeds)[0]
    return float(((a - b) ** 2).mean() / (b ** 2).mean())


def test_lsq_and_bias_reduce_distortion():
    for builder in (chain_flatten_gemm, inverted_residual, se_block):
        model = builder()
        p = prepare(model)
        rng = np.random.default_rng(0)
        # structured inputs (smooth, positive mean) so channel means and correlations matter
        data = rng.uniform(0, 1, (64, 3, 8, 8)).astype(np.float32) + np.linspace(0, 1, 8, dtype=np.float32)
        cal = load_calibration({"x": data[:48]}, model, batch_size=16)
        test = {"x": data[48:]}
        removed = select(p.analysis, magnitude_scores(p.analysis), Target(percentage=30))
        pruned, ver = build_pruned(p, removed)
        assert ver.max_rel_error < 1e-5
        d0 = distortion(pruned, p.model, test)
        lsq, note = recover(p, removed, pruned, cal, "lsq")
        bias, _ = recover(p, removed, pruned, cal, "bias")
        assert "least-squares" in note
        assert distortion(lsq, p.model, test) < d0
        assert distortion(bias, p.model, test) < d0


def test_recovery_streams_batches_without_changing_the_fit():
    """Activations are gathered batch by batch (big models do not fit whole); the batch size must not matter."""
    from onnx import numpy_helper
    model = inverted_residual()
    p = prepare(model)
    data = np.random.default_rng(1).uniform(-1, 1, (40, 3, 8, 8)).astype(np.float32)
    removed = select(p.analysis, magnitude_scores(p.analysis), Target(percentage=30))
    pruned, _ = build_pruned(p, removed)
    for mode in ("lsq", "bias"):
        one, _ = recover(p, removed, pruned, load_calibration({"x": data}, model, batch_size=40), mode)
        many, _ = recover(p, removed, pruned, load_calibration({"x": data}, model, batch_size=7), mode)
        for a, b in zip(one.graph.initializer, many.graph.initializer):
            np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-5, atol=1e-6)
        assert any(not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
                   for a, b in zip(one.graph.initializer, pruned.graph.initializer))


def _ridge_problem(noise: float, n: int, seed: int = 0):
    """Rows, targets and starting weights of a linear fit, plus fresh rows to judge it on."""
    rng = np.random.default_rng(seed)
    f, c = 40, 6
    w_true = rng.normal(size=(c, f))
    w0 = w_true + rng.normal(scale=0.3, size=(c, f))  # the plain sliced weights: close, not exact
    b0 = np.zeros(c)
    x, x_new = rng.normal(size=(n, f)), rng.normal(size=(2000, f))
    y = x @ w_true.T + rng.normal(scale=noise, size=(n, c))
    return x, y, w0, b0, x_new, x_new @ w_true.T


def _fresh_error(res, x_new, y_new) -> float:
    w, b = res[0], res[1]
    return float(((x_new @ w.T + b - y_new) ** 2).mean())


def test_ridge_chosen_on_held_back_rows_guards_against_over_fitting():
    """Few noisy rows: the weakest ridge over-fits; the held-out choice does better on fresh rows."""
    from onnxprune.passes.recover import RIDGES, _fit

    x, y, w0, b0, x_new, y_new = _ridge_problem(noise=3.0, n=60)
    auto = _fresh_error(_fit(x, y, w0, b0, 48), x_new, y_new)
    weakest = _fresh_error(_fit(x, y, w0, b0, 48, ridge=RIDGES[0]), x_new, y_new)
    assert auto < 0.7 * weakest


def test_ridge_chosen_on_held_back_rows_fits_clean_data_closely():
    """Plenty of clean rows: the choice goes weak and recovers the true weights, which the strongest ridge cannot."""
    from onnxprune.passes.recover import RIDGES, _fit

    x, y, w0, b0, x_new, y_new = _ridge_problem(noise=0.0, n=400)
    res = _fit(x, y, w0, b0, 320)
    strongest = _fresh_error(_fit(x, y, w0, b0, 320, ridge=RIDGES[-1]), x_new, y_new)
    assert _fresh_error(res, x_new, y_new) < 0.01 * strongest
    assert res[2] < res[3]  # held-out error of the fit beats the plain weights
