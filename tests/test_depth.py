"""Depth as a lever: a group that lives inside a residual branch may go entirely, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from builders import inverted_residual, residual_net, se_block
from onnxprune.calibration.dataset import load_calibration
from onnxprune.graph.surgery import masked_reference
from onnxprune.passes.base import PreconditionError
from onnxprune.passes.prune import PruneChannelsPass
from onnxprune.passes.recover import RecoverPass
from onnxprune.pruning.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.allocation.selection import Constraints, Target, select


def _feeds(n: int = 3, batch: int = 2, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (batch, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _group(p, layer: str):
    return next(g for g in p.analysis.groups if g.name == layer)


def _assert_exact(p, pruned, removed) -> None:
    ref = make_session(masked_reference(p.analysis, removed))
    got = make_session(pruned)
    for feed in _feeds():
        want = ref.run(None, feed)[0]
        np.testing.assert_allclose(got.run(None, feed)[0], want, rtol=1e-5, atol=1e-6)


def test_branch_groups_are_droppable_and_the_stream_is_not():
    p = prepare(residual_net())
    branch = [g for g in p.analysis.groups if len(g.units) == 6]
    assert len(branch) == 2 and all(g.droppable and g.drop_reason is None for g in branch)
    stream = _group(p, p.analysis.groups[0].name)
    assert len(stream.units) == 8 and not stream.droppable and stream.drop_reason
    assert [g.id for g in p.analysis.droppable_groups()] == [g.id for g in branch]


def test_dropping_a_branch_removes_its_nodes_and_folds_its_constant_exactly():
    model = residual_net()
    p = prepare(model)
    g = [g for g in p.analysis.groups if g.droppable][0]
    result = PruneChannelsPass(p.analysis, g.units)(p.model)
    pruned = result.model
    names = {n.name for n in pruned.graph.node}
    info = p.analysis.drops[g.id]
    assert not (set(info.dead) | set(info.constant_nodes)) & names
    assert len(info.zero_fed) == 1 and result.dropped_groups == (g.id,)
    ops = [n.op_type for n in pruned.graph.node]
    assert ops.count("Conv") == 3 and ops.count("BatchNormalization") == 2 and ops.count("Add") == 2
    # the Add now adds BN2(bias of conv2): the branch's value when its input is zero
    add_name, idx = info.adds[0]
    add = next(n for n in pruned.graph.node if n.name == add_name)
    inits = {t.name: t for t in pruned.graph.initializer}
    from onnx import numpy_helper
    const = numpy_helper.to_array(inits[add.input[idx]])
    nodes = {n.name: n for n in p.analysis.graph.nodes}
    conv2 = nodes[info.zero_fed[0]]
    bn = next(n for n in conv2.outputs[0].outputs)
    gamma, beta, mu, var = (t.values for t in bn.inputs[1:])
    eps = bn.attrs.get("epsilon", 1e-5)
    want = gamma * (conv2.inputs[2].values - mu) / np.sqrt(var + eps) + beta
    np.testing.assert_allclose(const.reshape(-1), want, rtol=1e-6)
    _assert_exact(p, pruned, g.units)


def test_drop_together_with_narrowing_the_stream_slices_the_folded_constant():
    p = prepare(residual_net())
    a = p.analysis
    g = [g for g in a.groups if g.droppable][1]
    stream = a.groups[0]
    removed = list(g.units) + stream.units[:3]
    pruned = PruneChannelsPass(a, removed)(p.model).model
    adds = [n for n in pruned.graph.node if n.name == a.drops[g.id].adds[0][0]]
    inits = {t.name: t for t in pruned.graph.initializer}
    assert adds and tuple(inits[adds[0].input[a.drops[g.id].adds[0][1]]].dims) == (1, 5, 1, 1)
    _assert_exact(p, pruned, removed)


def test_zero_constant_turns_the_add_into_an_identity():
    p = prepare(residual_net(bias=False, bn=False))
    g = [g for g in p.analysis.groups if g.droppable][0]
    pruned = PruneChannelsPass(p.analysis, g.units)(p.model).model
    add_name = p.analysis.drops[g.id].adds[0][0]
    assert next(n for n in pruned.graph.node if n.name == add_name).op_type == "Identity"
    _assert_exact(p, pruned, g.units)


def test_broadcast_other_operand_and_a_plain_chain_are_refused_with_a_reason():
    p = prepare(residual_net(broadcast_block=True))
    g = next(g for g in p.analysis.groups if len(g.units) == 5)
    assert not g.droppable and "broadcasts" in g.drop_reason
    with pytest.raises(PreconditionError, match="without a channel.*cannot go entirely: residual Add"):
        PruneChannelsPass(p.analysis, g.units)(p.model)


def test_se_branch_drops_but_the_se_gate_group_cannot():
    """SE inside a branch: the branch group goes with its gate; the gate's own group would leave Mul(x, const)."""
    from builders import Builder as B
    b = B()
    s = b.op("Relu", [b.conv("x", 3, 8)])
    h = b.op("Relu", [b.conv(s, 8, 12)])
    gate = b.op("Relu", [b.conv(b.op("GlobalAveragePool", [h]), 12, 4, k=1)])
    gate = b.op("Sigmoid", [b.conv(gate, 4, 12, k=1)])
    y = b.op("Add", [b.conv(b.op("Mul", [h, gate]), 12, 8, k=1), s])
    b.output(b.conv(y, 8, 3, k=1), 4)
    p = prepare(b.build())
    wide = next(g for g in p.analysis.groups if len(g.units) == 12)
    narrow = next(g for g in p.analysis.groups if len(g.units) == 4)
    assert wide.droppable
    assert not narrow.droppable and "Mul" in narrow.drop_reason
    pruned = PruneChannelsPass(p.analysis, wide.units)(p.model).model
    assert [n.op_type for n in pruned.graph.node] == ["Conv", "Relu", "Add", "Conv"]
    _assert_exact(p, pruned, wide.units)
    # without a residual Add nothing may go entirely
    assert not any(g.droppable for g in prepare(se_block()).analysis.groups)


def test_inverted_residual_expansion_group_drops_exactly():
    p = prepare(inverted_residual())
    g = next(g for g in p.analysis.groups if len(g.units) == 24)
    assert g.droppable
    pruned = PruneChannelsPass(p.analysis, g.units)(p.model).model
    assert [n.op_type for n in pruned.graph.node].count("Conv") == 2
    ref = make_session(masked_reference(p.analysis, g.units))
    feed = {"x": np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(make_session(pruned).run(None, feed)[0], ref.run(None, feed)[0], rtol=1e-5, atol=1e-6)


def test_selection_drops_only_when_allowed():
    p = prepare(residual_net())
    a = p.analysis
    droppable = {g.id for g in a.droppable_groups()}
    # the first branch is nearly free to remove, the rest is dear
    scores = {r: (1e-6 if a.group_of[r] == min(droppable) else 1.0) for r in a.prunable_units}
    target = Target(macs=0.8)
    plain = select(a, scores, target, Constraints(round_to=1), cost_aware=True, cost=p.cost)
    kept = [sum(1 for r in a.groups[gid].units if r not in plain) for gid in droppable]
    assert min(kept) >= 1
    dropped = select(a, scores, target, Constraints(round_to=1, allow_drop=True), cost_aware=True, cost=p.cost)
    assert set(a.groups[min(droppable)].units) <= set(dropped)
    assert len(dropped) == len(set(dropped))
    assert a.dropped_groups(dropped) == [min(droppable)]
    assert p.cost.evaluate(np.array(dropped))[0] <= 0.8 * p.cost.dense_macs
    PruneChannelsPass(a, dropped)(p.model)


def test_recovery_refits_the_layers_after_a_dropped_branch():
    model = residual_net()
    p = prepare(model)
    g = [g for g in p.analysis.groups if g.droppable][0]
    pruned = PruneChannelsPass(p.analysis, g.units)(p.model).model
    rng = np.random.default_rng(3)
    calib = load_calibration(rng.uniform(-1, 1, (40, 3, 8, 8)).astype(np.float32), p.original, batch_size=20)
    result = RecoverPass(p, g.units, calib)(pruned)
    assert result.notes and "layer(s)" in result.notes[0]
    from onnxprune.passes.recover import _after_dropped_branches
    after = _after_dropped_branches(p.analysis, np.array(g.units), pruned)
    # the second block's first conv and the head read the stream after the dropped branch
    assert len(after) == 2 and any("Gemm" in n for n in after)


def test_drop_scores_and_allow_drop_end_to_end(tmp_path):
    from onnxprune.config import PruneConfig
    from onnxprune.pruning.pipeline import prune_static
    from onnxprune.scoring.blocks import drop_scores
    model = residual_net()
    p = prepare(model)
    x = np.random.default_rng(5).uniform(-1, 1, (32, 3, 8, 8)).astype(np.float32)
    calib = load_calibration(x, p.original, batch_size=16)
    ds = drop_scores(p.analysis, calib.batches())
    assert sorted(ds) == [g.id for g in p.analysis.droppable_groups()] and all(v > 0 for v in ds.values())
    # a branch scaled towards zero costs (almost) nothing to drop
    quiet = p.model.__deepcopy__()
    from onnx import numpy_helper
    g = p.analysis.droppable_groups()[0]
    conv2 = p.analysis.drops[g.id].zero_fed[0]
    node = next(n for n in quiet.graph.node if n.name == conv2)
    for t in quiet.graph.initializer:
        if t.name in node.input[1:]:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1e-4), t.name))
    pq = prepare(quiet)
    dq = drop_scores(pq.analysis, load_calibration(x, pq.original, batch_size=16).batches())
    assert dq[g.id] < 1e-3 * ds[g.id]
    out = tmp_path / "d.onnx"
    res = prune_static(quiet, out, x, PruneConfig(target_macs=0.6, allow_drop=True, round_to=1, batch_size=16,
                                                  steps=2))  # the second step re-analyses the dropped model
    assert out.exists() and g.id in pq.analysis.dropped_groups(res.removed_units)
    assert res.report.after.macs <= 0.6 * res.report.before.macs
    kept = {lc.name: lc.after for lc in res.report.layers}
    assert kept[conv2] == 0


@pytest.mark.parametrize("name, droppable", [("resnet20_cifar10.onnx", 9), ("ppocr_mobile_cls.onnx", 7)])
def test_shared_models_drop_every_droppable_branch_exactly(name, droppable):
    """ResNet-20: every block's first conv; the Paddle classifier: BN unfolded, hard-swish and SE inside the
    branch (its constant flows through BN), checked by the pass against the masked reference."""
    from conftest import shared_path
    p = prepare(shared_path("models", name))
    groups = p.analysis.droppable_groups()
    assert len(groups) == droppable
    removed = [r for g in groups for r in g.units]
    result = PruneChannelsPass(p.analysis, removed)(p.model)
    assert result.dropped_groups == tuple(g.id for g in groups)
    assert result.verification.max_rel_error < 1e-5
