"""Oracle scoring: the fast scorer (mask inputs, suffix sessions, batched perturbations) equals the naive one."""

from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from onnxprune.errors import CalibrationError
from onnxprune.pruning.pipeline import PruneConfig, load_calibration, run_pruning, score_units
from onnxprune.pruning.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.scoring.oracle import OracleScorer, naive_oracle

from builders import inverted_residual, level_heads, option_a_shortcut, se_block, transpose_reshape_gemm_prelu


def batches(p, n=6, k=2, seed=0, labels=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        feeds = {name: rng.uniform(-1, 1, (n,) + tuple(s[1:])).astype(np.float32) for name, s in p.input_shapes.items()}
        out.append((feeds, rng.integers(0, 4, n) if labels else None))
    return out


@pytest.mark.parametrize("builder", [option_a_shortcut, se_block, inverted_residual, transpose_reshape_gemm_prelu,
                                     level_heads])
@pytest.mark.parametrize("cost,workers", [("auto", 1), ("mse", 1), ("auto", 3)])
def test_fast_equals_naive(builder, cost, workers):
    p = prepare(builder())
    data = batches(p)
    fast = OracleScorer(p.analysis, cost, rows_per_run=8, workers=workers)  # several perturbations per run
    # a suffix session carries only the masks of its own units (the others would multiply by one)
    assert all(set(c.masks) <= {i for r in c.units for i, _ in fast.unit_masks[r]} for c in fast.cuts)
    for feeds, labels in data:
        fast.add_batch(feeds, labels)
    got = fast.scores()
    want = naive_oracle(p.analysis, data, list(got), cost)
    a = np.array([got[r] for r in want])
    b = np.array([want[r] for r in want])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9 * max(1.0, np.abs(b).max()))
    assert len(got) == len(p.analysis.prunable_units)
    assert (b > 0).any()


@pytest.mark.parametrize("builder", [option_a_shortcut, inverted_residual])
def test_io_binding_path_equals_plain_runs(builder):
    """The bound path (used on CUDA) gives the same scores; forced here on the CPU provider."""
    p = prepare(builder())
    data = batches(p)
    plain = OracleScorer(p.analysis, rows_per_run=8, io_binding=False)
    bound = OracleScorer(p.analysis, rows_per_run=8, io_binding=True)
    for feeds, labels in data:
        plain.add_batch(feeds, labels)
        bound.add_batch(feeds, labels)
    a, b = plain.scores(), bound.scores()
    assert all(r.binding for r in bound.plan.runners())
    np.testing.assert_allclose([b[r] for r in a], [a[r] for r in a], rtol=1e-5, atol=1e-12)


def test_loss_modes_need_labels_and_match_naive():
    p = prepare(option_a_shortcut())
    data = batches(p, labels=True)
    for mode in ("loss", "abs"):
        s = OracleScorer(p.analysis, mode)
        got = s.score_all(data)
        want = naive_oracle(p.analysis, data, list(got), mode)
        np.testing.assert_allclose([got[r] for r in want], [want[r] for r in want], rtol=1e-4, atol=1e-7)
    assert min(got.values()) >= 0  # abs
    with pytest.raises(CalibrationError, match="needs labels"):
        OracleScorer(p.analysis, "loss").add_batch(batches(p)[0][0])


def test_scores_accumulate_over_batches():
    p = prepare(se_block())
    data = batches(p, n=4, k=2)
    one = OracleScorer(p.analysis)
    for feeds, _ in data:
        one.add_batch(feeds)
    both = OracleScorer(p.analysis)
    both.add_batch({k: np.concatenate([d[0][k] for d in data]) for k in data[0][0]})
    a, b = one.scores(), both.scores()
    np.testing.assert_allclose([a[r] for r in a], [b[r] for r in a], rtol=1e-5)


def _with_silent_channels():
    """option_a_shortcut with channels that a ReLU silences: always (a large negative bias) or only
    on the low-amplitude samples (a moderate one); one of them feeds the residual stream."""
    from onnx import numpy_helper
    model = option_a_shortcut()
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv, edits in ((convs[0], {2: -100.0}), (convs[1], {0: -100.0, 1: -1.0})):
        b = numpy_helper.to_array(inits[conv.input[2]]).copy()
        for c, v in edits.items():
            b[c] = v
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array(b, conv.input[2]))
    return model


def test_silent_units_are_skipped_exactly():
    """(unit, sample) pairs whose channels are zero wherever consumed need no run and change nothing."""
    p = prepare(_with_silent_channels())
    data = batches(p, n=8)
    for feeds, _ in data:
        feeds["x"][::2] *= 0.05
    def energy(base, pert, labels):  # not zero for an unchanged sample: the skipped rows must still count
        return (pert[0].astype(np.float64) ** 2).sum(1)
    for cost in ("auto", energy):
        fast = OracleScorer(p.analysis, cost, rows_per_run=12)
        slow = OracleScorer(p.analysis, cost, rows_per_run=12, skip_silent=False)
        for feeds, labels in data:
            fast.add_batch(feeds, labels)
            slow.add_batch(feeds, labels)
        a, b = fast.scores(), slow.scores()
        np.testing.assert_allclose([a[r] for r in b], [b[r] for r in b], rtol=1e-5, atol=1e-9)
        assert 0 < fast.pairs_skipped < fast.pairs_total and slow.pairs_skipped == 0
        assert fast.perturbation_macs < slow.perturbation_macs
        if cost == "auto":
            kl = a
    want = naive_oracle(p.analysis, data, list(a), energy)
    np.testing.assert_allclose([a[r] for r in want], [want[r] for r in want], rtol=1e-4)
    convs = [n.name for n in p.analysis.proto.graph.node if n.op_type == "Conv"]
    unit_of = {k: r for r in kl for k in p.analysis.unit_kernels[r]}
    assert kl[unit_of[(convs[1], 0)]] == 0.0  # dead everywhere: never run
    # silenced at its first consumers but alive after the residual sum: run, and it matters
    assert kl[unit_of[(convs[0], 2)]] > 0


def test_custom_cost_callable():
    p = prepare(se_block())
    s = OracleScorer(p.analysis, lambda base, pert, labels: np.abs(pert[0] - base[0]).reshape(len(pert[0]), -1).max(1))
    scores = s.score_all(batches(p))
    assert all(v >= 0 for v in scores.values()) and max(scores.values()) > 0


def test_prune_static_with_ort_style_reader(tmp_path):
    model = option_a_shortcut()
    p = prepare(model)

    class Reader:  # the onnxruntime quantization protocol: get_next() -> dict | None
        def __init__(self):
            self.items = [f for f, _ in batches(p, n=8, k=3)]

        def get_next(self):
            return self.items.pop(0) if self.items else None

    out = tmp_path / "o.onnx"
    res = onnxprune.prune_static(model, out, Reader(), onnxprune.PruneConfig(target_macs=0.6))
    assert out.exists() and res.report.after.macs <= 0.6 * res.report.before.macs
    assert "exactness" in res.report.verification and "least-squares" in res.report.verification


def test_iterative_schedule_meets_target_and_is_exact():
    model = inverted_residual()
    p = prepare(model)
    cal = load_calibration(iter([f for f, _ in batches(p, n=8, k=2)]), model)
    for cfg in (PruneConfig(target_macs=0.5, steps=3, recover="none", min_fidelity=0),
                PruneConfig(percentage=40, gradual_start=0.1, gradual_gamma=0.15, recover="none",
                            min_fidelity=0)):
        res = run_pruning(model, None, None, cfg, calibration=cal)
        assert res.verification is not None
        if cfg.target_macs:
            assert res.report.after.macs <= 0.5 * res.report.before.macs * 1.0001
        else:
            assert res.report.removed_kernels >= 0.4 * res.report.prunable_kernels
        assert res.plan.meta["steps"] == 3  # 0.1, 0.25, 0.40 in gradual mode


def test_halcon_handle():
    model = option_a_shortcut()
    h = onnxprune.create_pruning(model, mode="oracle")
    assert onnxprune.get_pruning_param(h, "prunable_conv_num") == 5
    assert onnxprune.get_pruning_param(h, "prunable_kernel_num") == 56
    onnxprune.set_pruning_param(h, "percentage", 30)
    with pytest.raises(CalibrationError):
        onnxprune.gen_pruned_model(h)
    for feeds, _ in batches(h.prepared, n=4, k=2):
        onnxprune.add_pruning_batch(h, feeds)
    pruned = onnxprune.gen_pruned_model(h)
    assert onnxprune.get_pruning_param(h, "pruned_kernel_num") >= 0.3 * 56
    assert 30 <= onnxprune.get_pruning_param(h, "pruned_percentage") < 60
    make_session(pruned)


def test_other_criteria_run():
    model = se_block()
    p = prepare(model)
    cal = load_calibration(iter([f for f, _ in batches(p, n=8, k=1)]), model)
    for crit in ("activation_mean", "activation_std", "bn_scale", "l2", "random"):
        s = score_units(p, PruneConfig(criterion=crit), cal)
        assert set(s) == set(p.analysis.prunable_units)


def test_energy_counts_only_where_the_removal_leaves_the_unit():
    """A hidden channel of an inverted residual: the depthwise conv consumes it but is removed with it,
    so its energy is E[h^2] x ||W_project[:, j]||^2 at the project conv alone."""
    from onnxprune.scoring.activation import ActivationStats
    model = inverted_residual()
    p = prepare(model)
    a = p.analysis
    feeds = batches(p, n=8, k=1)[0][0]
    stats = ActivationStats(a, landing=True)
    stats.add_batch(feeds)
    got = stats.scores("energy")
    dw = next(n for n in a.graph.nodes if n.op == "Conv" and int(n.attrs.get("group", 1)) > 1)
    proj = next(n for n in a.graph.nodes if n.op == "Conv" and n.inputs[0].inputs and n.inputs[0].inputs[0].op == "Clip"
                and n.inputs[0].inputs[0].inputs[0].name == dw.outputs[0].name)
    t = proj.inputs[0].name
    sq = stats.s2[t] / stats.n[t]
    w = (np.asarray(proj.inputs[1].values, dtype=np.float64) ** 2).sum(axis=(0, 2, 3))
    # relative to the per-position energy of the block output (the residual sum the project conv joins)
    land = stats.landing[proj.name]
    assert proj.outputs[0].outputs[0].op == "Add" and land == proj.outputs[0].outputs[0].outputs[0].name
    y = make_session(_expose(p.model, land)).run([land], feeds)[0].astype(np.float64)
    energy = (y ** 2).sum(1).mean()
    roots = a.root_of[a.labels[t].units]
    for j, r in enumerate(roots.tolist()):
        if r in got:
            assert got[r] == pytest.approx(sq[j] * w[j] / energy, rel=1e-6)


def _expose(model, name):
    import onnx
    from onnx import helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def test_landing_tensor_follows_affine_ops_into_the_residual_sum():
    import onnx
    import onnx_graphsurgeon as gs
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.scoring.activation import landing_tensor

    c = 4
    w = numpy_helper.from_array(np.ones((c, c, 1, 1), np.float32), "w")
    bn = [numpy_helper.from_array(np.full(c, v, np.float32), n) for n, v in
          (("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    k = numpy_helper.from_array(np.full((1, c, 1, 1), 2.0, np.float32), "k")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv_res"),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"], name="bn"),
        helper.make_node("Mul", ["n1", "k"], ["s1"], name="scale"),
        helper.make_node("Add", ["s1", "x"], ["sum"], name="join"),
        helper.make_node("Conv", ["sum", "w"], ["c2"], name="conv_plain"),
        helper.make_node("Relu", ["c2"], ["y"], name="relu"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 2, 2]) for n in ("x", "y")]
    g = gs.import_onnx(helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], [w, k] + bn)))
    by = {n.name: n for n in g.nodes}
    assert landing_tensor(g, by["conv_res"]) == "sum"
    assert landing_tensor(g, by["conv_plain"]) == "c2"
    onnx.checker.check_model(gs.export_onnx(g))
