"""onnxprune.lsq: im2col against onnxruntime's Conv, the ridge path, held-back selection, the masked solve."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.lsq import RIDGES, Patches, conv_geometry, fit_toward, holdout, im2col, masked_fit, ridge_path
from onnxprune.runtime import make_session


def _conv_output(x: np.ndarray, w: np.ndarray, b: np.ndarray, **attrs) -> np.ndarray:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return make_session(model).run(None, {"x": x})[0]


# onnxruntime refuses dilations with SAME_* padding, so SAME cases vary the strides only.
CASES = [
    dict(pads=[1, 2, 0, 1]),
    dict(pads=[2, 1, 2, 1], strides=[2, 1], dilations=[1, 2]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 3]),
    dict(auto_pad="SAME_UPPER"),
    dict(auto_pad="SAME_LOWER"),
    dict(auto_pad="VALID", strides=[2, 2], dilations=[1, 2]),
    dict(auto_pad="SAME_LOWER", strides=[3, 2], group=2),
]


@pytest.mark.parametrize("attrs", CASES, ids=[str(sorted(c.items())) for c in CASES])
def test_im2col_reproduces_onnxruntime_conv_at_every_position(attrs: dict) -> None:
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 4 // group, 3, 4)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y = _conv_output(x, w, b, **attrs)
    geometry = conv_geometry(attrs, w.shape, x.shape)
    n, oy, ox = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(y.shape[2]), np.arange(y.shape[3]),
                                               indexing="ij"))
    patches = Patches(x, geometry, n, oy, ox)
    per_in, per_out = 4 // group, 6 // group
    for g in range(group):
        rows = patches.rows(g * per_in, (g + 1) * per_in).astype(np.float64)
        wg = w[g * per_out:(g + 1) * per_out].reshape(per_out, -1).astype(np.float64)
        got = rows @ wg.T + b[g * per_out:(g + 1) * per_out]
        want = y[n, g * per_out:(g + 1) * per_out, oy, ox]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if group == 1:
        np.testing.assert_array_equal(im2col(x, geometry, n, oy, ox), patches.rows())


def test_same_pads_put_the_odd_pixel_where_onnx_says() -> None:
    upper = conv_geometry({"auto_pad": "SAME_UPPER"}, (1, 1, 4, 4), (1, 1, 8, 8))
    lower = conv_geometry({"auto_pad": b"SAME_LOWER"}, (1, 1, 4, 4), (1, 1, 8, 8))
    assert upper.pads == (1, 1, 2, 2) and lower.pads == (2, 2, 1, 1)
    assert conv_geometry({"auto_pad": "VALID", "pads": [5, 5, 5, 5]}, (1, 1, 3, 3), (1, 1, 8, 8)).pads == (0, 0, 0, 0)


def test_holdout_judges_on_the_fit_rows_when_nothing_is_held_back() -> None:
    fit, hold = holdout(10, 8)
    assert (fit, hold) == (slice(0, 8), slice(8, None))
    fit, hold = holdout(10, 10)
    assert hold is fit


def _linear_problem(noise: float, n: int, seed: int = 0):
    """Rows, targets and starting weights of a linear fit, plus fresh rows to judge it on."""
    rng = np.random.default_rng(seed)
    f, c = 40, 6
    w_true = rng.normal(size=(c, f))
    b_true = rng.normal(size=c)
    w0 = w_true + rng.normal(scale=0.3, size=(c, f))  # the plain weights: close, not exact
    x, x_new = rng.normal(size=(n, f)), rng.normal(size=(2000, f))
    y = x @ w_true.T + b_true + rng.normal(scale=noise, size=(n, c))
    return x, y, w0, np.zeros(c), x_new, x_new @ w_true.T + b_true, w_true, b_true


def _fresh_error(fit, x_new, y_new) -> float:
    return float(((x_new @ fit.weight.T + fit.bias - y_new) ** 2).mean())


def test_ridge_path_recovers_a_known_linear_map() -> None:
    x, y, w0, b0, *_, w_true, b_true = _linear_problem(noise=0.0, n=300)
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    prior = np.concatenate([w0, b0[:, None]], axis=1)
    sol, err, ridge = ridge_path(a.T @ a, a.T @ y, prior, (1e-9, 1e-1), a, y)
    assert ridge == 1e-9 and err < 1e-12
    np.testing.assert_allclose(sol[:-1].T, w_true, atol=1e-6)
    np.testing.assert_allclose(sol[-1], b_true, atol=1e-6)


def test_held_back_selection_guards_against_over_fitting() -> None:
    """Few noisy rows: the weakest ridge over-fits; the held-back choice does better on fresh rows."""
    x, y, w0, b0, x_new, y_new, *_ = _linear_problem(noise=3.0, n=60)
    auto = fit_toward(x, y, w0, b0, 48)
    weakest = fit_toward(x, y, w0, b0, 48, ridge=RIDGES[0])
    assert auto.ridge > RIDGES[0]
    assert _fresh_error(auto, x_new, y_new) < 0.7 * _fresh_error(weakest, x_new, y_new)


def test_held_back_selection_fits_clean_data_closely_and_beats_the_plain_weights() -> None:
    x, y, w0, b0, x_new, y_new, *_ = _linear_problem(noise=0.0, n=400)
    fit = fit_toward(x, y, w0, b0, 320)
    strongest = fit_toward(x, y, w0, b0, 320, ridge=RIDGES[-1])
    assert _fresh_error(fit, x_new, y_new) < 0.01 * _fresh_error(strongest, x_new, y_new)
    assert fit.improves and fit.err_fit < fit.err_plain


def test_a_fit_that_cannot_beat_the_plain_weights_is_not_kept() -> None:
    x, y, w0, b0, *_ = _linear_problem(noise=0.0, n=200)
    exact = np.concatenate([x, np.ones((len(x), 1))], axis=1) @ np.concatenate([w0, b0[:, None]], axis=1).T
    fit = fit_toward(x, exact, w0, b0, 160)  # the plain weights are already perfect
    assert not fit.improves


def test_masked_fit_keeps_zeros_and_solves_the_unmasked_problem_exactly() -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((1, 500, 20)).astype(np.float32)
    w_true = rng.standard_normal((1, 4, 20))
    mask = rng.random((1, 4, 20)) < 0.5
    y = np.matmul(rows.astype(np.float64), (w_true * mask).transpose(0, 2, 1)) + 0.5
    w, b = masked_fit(rows, y, mask, np.zeros_like(w_true), np.zeros((1, 4)), 1e-8)
    assert np.all(w[~mask] == 0)
    np.testing.assert_allclose(w, w_true * mask, atol=1e-4)
    np.testing.assert_allclose(b, 0.5, atol=1e-4)


@pytest.mark.parametrize("dim,bias", [(12, True), (90, True), (90, False)])
def test_masked_fit_matches_a_direct_constrained_least_squares(dim: int, bias: bool) -> None:
    """The batched (small), support and pruned-set (large) paths all give the ridge solution on the support.

    The reference solves the normal equations on each channel's support directly, from the same
    float32 Gram products the solver uses (their rounding is a documented choice, not under test).
    """
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((2, 400, dim)).astype(np.float32)
    y = rng.standard_normal((2, 400, 3))
    mask = np.stack([rng.random((3, dim)) < p for p in (0.2, 0.9)])  # sparse and dense channels
    w0 = rng.standard_normal((2, 3, dim))
    b0 = rng.standard_normal((2, 3)) if bias else None
    w, b = masked_fit(rows, y, mask, w0 * mask, b0, 1e-3)
    for g in range(2):
        gram = (rows[g].T @ rows[g]).astype(np.float64)
        cross = (rows[g].T @ y[g].astype(np.float32)).astype(np.float64)
        lam = 1e-3 * np.mean(np.diag(gram))
        lam += 1e-9 * (1 + np.mean(np.diag(gram)))
        if bias:
            sums = rows[g].sum(axis=0, dtype=np.float64)
            gram = np.block([[gram, sums[:, None]], [sums[None, :], np.array([[400.0]])]])
            cross = np.vstack([cross, y[g].sum(axis=0)[None, :]])
        for o in range(3):
            s = np.flatnonzero(mask[g, o])
            if bias:
                s = np.append(s, dim)
            prior = np.append(w0[g, o], b0[g, o]) if bias else w0[g, o]
            x = np.linalg.solve(gram[np.ix_(s, s)] + lam * np.eye(s.size), cross[s, o] + lam * prior[s])
            keep = s[s < dim]
            np.testing.assert_allclose(w[g, o, keep], x[:keep.size], rtol=1e-9, atol=1e-12)
            assert np.all(w[g, o][~mask[g, o]] == 0)
            if bias:
                np.testing.assert_allclose(b[g, o], x[-1], rtol=1e-9, atol=1e-12)
