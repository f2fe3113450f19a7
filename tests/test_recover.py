"""Recovery: verified exact before, closer to the original after."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.pruning.api import build_pruned
from onnxprune.passes.recover import recover
from onnxprune.pruning.pipeline import load_calibration
from onnxprune.pruning.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.allocation.selection import Target, select
from onnxprune.scoring import magnitude_scores

from builders import Builder, chain_flatten_gemm, inverted_residual, se_block


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


def auto_pad_chain():
    """x -> Conv(4x4, stride 2, SAME_UPPER) -> Relu -> Conv(3x2, SAME_LOWER) -> Relu -> Conv(2x2, VALID)"""
    b = Builder()

    def conv(x, cin, cout, kernel, **attrs):
        w = b.const((b.rng.standard_normal((cout, cin, *kernel)) * 0.3).astype(np.float32))
        bias = b.const(b.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")
        return b.op("Conv", [x, w, bias], kernel_shape=list(kernel), **attrs)

    h = b.op("Relu", [conv("x", 3, 8, (4, 4), strides=[2, 2], auto_pad="SAME_UPPER")])
    h = b.op("Relu", [conv(h, 8, 6, (3, 2), auto_pad="SAME_LOWER")])
    b.output(conv(h, 6, 4, (2, 2), auto_pad="VALID"))
    return b.build()


def test_auto_pad_consumers_are_re_fitted():
    """Convs with auto_pad used to be skipped; their im2col now uses the pads onnxruntime applies."""
    model = auto_pad_chain()
    p = prepare(model)
    data = np.random.default_rng(0).uniform(0, 1, (64, 3, 8, 8)).astype(np.float32) + np.linspace(0, 1, 8,
                                                                                                 dtype=np.float32)
    cal = load_calibration({"x": data[:48]}, model, batch_size=16)
    test = {"x": data[48:]}
    removed = select(p.analysis, magnitude_scores(p.analysis), Target(percentage=30))
    pruned, _ = build_pruned(p, removed)
    lsq, note = recover(p, removed, pruned, cal, "lsq")
    assert note.startswith("least-squares re-fit of 2 layer(s)")
    assert distortion(lsq, p.model, test) < 0.5 * distortion(pruned, p.model, test)


def test_recover_pass_reports_what_it_fitted_and_refuses_non_finite_outputs(monkeypatch):
    import onnxprune.passes.recover as rec
    from onnx import numpy_helper
    from onnxprune.passes.base import PostconditionError

    model = chain_flatten_gemm()
    p = prepare(model)
    data = np.random.default_rng(2).uniform(0, 1, (32, 3, 8, 8)).astype(np.float32)
    cal = load_calibration({"x": data}, model, batch_size=16)
    removed = select(p.analysis, magnitude_scores(p.analysis), Target(percentage=30))
    pruned, _ = build_pruned(p, removed)
    result = rec.RecoverPass(p, removed, cal)(pruned)
    assert result.modified and result.notes[0].startswith("least-squares re-fit of")
    unchanged = rec.RecoverPass(p, [], cal)(pruned)
    assert not unchanged.modified and unchanged.notes == ("nothing to recover",)

    def broken(*args):
        bad, note, fitted = real(*args)
        init = bad.graph.initializer[-1]
        init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
        return bad, note, fitted

    real = rec._recover
    monkeypatch.setattr(rec, "_recover", broken)
    with pytest.raises(PostconditionError, match="recover: output .* is not finite"):
        rec.RecoverPass(p, removed, cal)(pruned)


def linear_residual():
    """x -> a (1x1, 3->6) -> s (1x1, 6->4) ----------------.
       x -> h (1x1, 3->12) -> p (1x1, 12->4) -> Add(p, s) -> out

    Everything is affine, so a layer whose input still spans x (3 channels)
    can reproduce any affine function of x exactly.
    """
    b = Builder()
    s = b.conv(b.conv("x", 3, 6, k=1), 6, 4, k=1)
    p = b.conv(b.conv("x", 3, 12, k=1), 12, 4, k=1)
    b.output(b.op("Add", [p, s]))
    return b.build()


def _residual_case():
    model = linear_residual()
    p = prepare(model)
    widths = {t.name: t.dims[0] for t in p.model.graph.initializer if len(t.dims) == 4}
    convs = {widths[n.input[1]]: n.name for n in p.model.graph.node if n.op_type == "Conv"}
    a_node, h_node = convs[6], convs[12]
    # a keeps 2 of 6 channels: s cannot be repaired (rank 2 < 3); h keeps 9 of 12: p still sees all of x
    removed = sorted([p.analysis.unit_of_kernel(a_node, c) for c in range(4)]
                     + [p.analysis.unit_of_kernel(h_node, c) for c in range(3)])
    data = np.random.default_rng(3).standard_normal((40, 3, 8, 8)).astype(np.float32)
    cal = load_calibration({"x": data[:30]}, model, batch_size=8)
    pruned, ver = build_pruned(p, removed)
    assert ver.max_rel_error < 1e-5
    return p, removed, pruned, cal, {"x": data[30:]}


def test_residual_target_absorbs_the_skip_path_error_exactly():
    """Fitted to Add_orig - s_pruned, p makes the Add output exact although s stays wrong;
    fitted to its own output it leaves the Add off by exactly the error of s."""
    p, removed, pruned, cal, test = _residual_case()
    residual, note = recover(p, removed, pruned, cal, "lsq", ridge=1e-12, target="residual")
    own, _ = recover(p, removed, pruned, cal, "lsq", ridge=1e-12, target="own")
    assert note.startswith("least-squares re-fit of 2 layer(s)")
    ref = make_session(p.model).run(None, test)[0]
    scale = float(np.abs(ref).max())
    err_residual = float(np.abs(make_session(residual).run(None, test)[0] - ref).max()) / scale
    err_own = float(np.abs(make_session(own).run(None, test)[0] - ref).max()) / scale
    assert err_residual < 1e-4
    assert err_own > 1e-2
    # own target: p is exact, so the Add's error is exactly the error s carries
    add = next(n for n in p.model.graph.node if n.op_type == "Add")
    skip = add.input[1]
    from onnxprune.graph.subgraph import expose
    got = make_session(expose(own, [skip])).run(None, test)
    want = make_session(expose(p.model, [skip])).run(None, test)
    np.testing.assert_allclose(got[0] - want[0], got[1] - want[1], rtol=1e-3, atol=1e-4 * scale)


def test_residual_target_only_where_the_skip_path_comes_first():
    """Sites feeding no Add, or an Add whose other addend is computed after them, keep their own target."""
    import onnxprune.passes.recover as rec
    p, removed, pruned, _, _ = _residual_case()
    sites = rec._sites(p.analysis, np.array(removed), pruned, "pruned")
    rec._residual_addends(p.analysis, pruned, sites)
    add = next(n for n in pruned.graph.node if n.op_type == "Add")
    marked = {s.node: (s.residual, s.add_output) for s in sites}
    assert len(sites) == 2
    # topological order a, s, h, p: s's other addend p comes later, p's other addend s comes first
    s_site, p_site = sites
    assert marked[s_site.node] == (None, None)
    assert marked[p_site.node] == (s_site.output, add.output[0])
    with pytest.raises(ValueError, match="unknown least-squares target"):
        recover(p, removed, pruned, load_calibration({"x": np.zeros((4, 3, 8, 8), np.float32)}, p.original),
                "lsq", target="skip")


def test_recover_pass_returns_a_typed_result():
    """RecoverPass says what it did in fields (layers re-fitted, method, rows), not only in its note."""
    from builders import residual_net
    from onnxprune.passes.recover import RecoverPass, RecoverResult
    from onnxprune.pruning.pipeline import prepare_run
    from onnxprune.config import PruneConfig
    from onnxprune.graph.surgery import prune_channels
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 3, 8, 8)).astype(np.float32)
    p, cal = prepare_run(residual_net(), {"x": x}, PruneConfig(batch_size=32))
    removed = [u for g in p.analysis.groups if not g.frozen for u in g.units[:1]]
    result = RecoverPass(p, removed, cal, "lsq")(prune_channels(p.analysis, removed))
    assert isinstance(result, RecoverResult) and result.method == "lsq" and result.rows == 64
    assert result.modified == (result.layers > 0) and result.layers > 0 and result.summary
