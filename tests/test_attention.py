"""Attention heads as prunable units: decomposed forms, fused ops, frozen patterns, scoring (issue 25)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from onnxprune.pruning.api import build_pruned, inspect
from onnxprune.pruning.prepare import prepare
from onnxprune.report import count_params
from onnxprune.scoring.oracle import OracleScorer, naive_oracle
from onnxprune.scoring.registry import score

from attention_builders import Encoder, encoder, fused, torch_encoder
from test_surgery_patterns import random_plan_is_exact
from conftest import shared_path

FORMS = {
    "separate": dict(),
    "merged_qkv_gather": dict(merged=True),
    "computed_targets": dict(computed=True),
    "merged_computed": dict(merged=True, computed=True),
    "gemm_projections": dict(gemm=True),
    "const_mask_mul_scale": dict(mask="const", scale="Mul"),
    "input_mask": dict(mask="input"),
    "static_batch": dict(batch=2),
    "tanh_gelu": dict(act="tanh"),
    "silu": dict(act="silu"),
}
_PREPARED: dict = {}


def prepared(name: str):
    if name not in _PREPARED:
        _PREPARED[name] = prepare(encoder(**FORMS[name]))
    return _PREPARED[name]


def head_group(a):
    (g,) = [g for g in a.groups if g.heads_of]
    return g


def feeds_for(p, seed: int, batch: int = 3):
    rng = np.random.default_rng(seed)
    return [{k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in p.with_batch(batch).items()}]


@pytest.mark.parametrize("name", sorted(FORMS))
def test_heads_are_units(name):
    """4 heads of head_dim 4: each unit is 4 columns of Q, K and V; the MLP's 32 neurons are a group too."""
    a = prepared(name).analysis
    g = head_group(a)
    assert not g.frozen and len(g.units) == 4
    assert g.droppable or "Reshape" in g.drop_reason  # Gemm's W_o output is reshaped back before its Add
    assert [len(a.unit_kernels[r]) for r in g.units] == [12] * 4
    hidden = [x for x in a.groups if not x.heads_of and not x.frozen]
    assert [len(x.units) for x in hidden] == [32]


@pytest.mark.parametrize("name", sorted(FORMS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_head_plan_is_exact(name, data):
    random_plan_is_exact(prepared(name), data, 2 if "static" in name else 3)


def _weights(model: onnx.ModelProto) -> dict[str, tuple]:
    return {i.name: tuple(i.dims) for i in model.graph.initializer}


def test_two_heads_removed_slice_q_k_v_and_the_output_projection():
    p = prepared("separate")
    a = p.analysis
    g = head_group(a)
    pruned, ver = build_pruned(p, g.units[:2], extra_feeds=feeds_for(p, 0))
    assert ver.max_rel_error < 1e-5
    shapes = sorted(v for v in _weights(pruned).values() if len(v) == 2)
    assert shapes.count((16, 8)) == 3 and (8, 16) in shapes  # Q, K, V: 2 heads x 4 columns; W_o: 8 rows
    targets = [list(onnx.numpy_helper.to_array(i)) for i in pruned.graph.initializer
               if i.data_type == onnx.TensorProto.INT64 and i.dims == [4]]
    assert [0, 0, 2, 4] in targets


def test_whole_attention_branch_drops_exactly():
    """Every head removed: the attention branch goes and its Add passes the stream plus W_o's bias."""
    p = prepared("separate")
    g = head_group(p.analysis)
    pruned, ver = build_pruned(p, g.units, extra_feeds=feeds_for(p, 1))
    assert ver.max_rel_error < 1e-5
    assert not any(n.op_type == "Softmax" for n in pruned.graph.node)


@pytest.mark.parametrize("kind,kv,heads", [("mha", None, 4), ("onnx", None, 4), ("onnx", 2, 2)])
def test_fused_heads_prune_exactly(kind, kv, heads):
    """MultiHeadAttention and ai.onnx Attention (grouped-query: one unit per KV group) rewrite their head counts."""
    p = prepare(fused(kind, kv_heads=kv))
    g = head_group(p.analysis)
    assert len(g.units) == heads and not g.frozen
    pruned, ver = build_pruned(p, g.units[:1], extra_feeds=feeds_for(p, 2))
    assert ver.max_rel_error < 1e-5
    (node,) = [n for n in pruned.graph.node if n.op_type in ("MultiHeadAttention", "Attention")]
    attrs = {x.name: x.i for x in node.attribute}
    if kind == "mha":
        assert attrs["num_heads"] == 3
    else:
        assert (attrs["q_num_heads"], attrs["kv_num_heads"]) == (4 - 4 // heads, heads - 1)


def test_com_microsoft_attention_is_frozen_with_its_reason():
    a = prepare(fused("ms", ln=False)).analysis
    reasons = [g.frozen_reason for g in a.groups if g.frozen]
    assert any("com.microsoft Attention" in r and "QKV weight inside" in r for r in reasons), reasons


def _odd(kind: str) -> onnx.ModelProto:
    """Patterns that split the hidden channels but are not provably heads (or not prunable as such)."""
    e = Encoder()
    b, D, H, hd = e.b, e.D, e.H, e.hd
    q = b.op("Reshape", [e.linear("x", D, D), b.const(np.array([0, 0, H, hd], np.int64))])
    q = b.op("Transpose", [q], perm=[0, 2, 1, 3])
    if kind == "reduce":  # the split channels are summed over head_dim before any attention MatMul
        y = b.op("ReduceSum", [q, b.const(np.array([3], np.int64))], keepdims=0)
        return e.build(b.op("Transpose", [y], perm=[0, 2, 1]))
    k = b.op("Transpose", [b.op("Reshape", ["x", b.const(np.array([0, 0, H, hd], np.int64))])], perm=[0, 2, 3, 1])
    s = b.op("MatMul", [q, k])  # K is the raw input: its heads are not units
    if kind == "softmax_heads":
        k2 = b.op("Transpose", [b.op("Reshape", [e.linear("x", D, D), b.const(np.array([0, 0, H, hd], np.int64))])],
                  perm=[0, 2, 3, 1])
        s = b.op("Softmax", [b.op("MatMul", [q, k2])], axis=1)
    y = b.op("Transpose", [b.op("MatMul", [s, q])], perm=[0, 2, 1, 3])
    return e.build(e.linear(b.op("Reshape", [y, b.const(np.array([0, 0, D], np.int64))]), D, D))


@pytest.mark.parametrize("kind,words", [
    ("reduce", ["splits the channel axis, not into attention heads", "ReduceSum"]),
    ("raw_key", ["combines heads with the unlabelled tensor"]),
    ("softmax_heads", ["Softmax", "normalises over the channel axis"]),
])
def test_unprovable_patterns_freeze_with_a_reason(kind, words):
    a = prepare(_odd(kind)).analysis
    reasons = [g.frozen_reason for g in a.groups if g.frozen]
    assert any(all(w in r for w in words) for r in reasons), reasons
    assert not any(g.heads_of and not g.frozen for g in a.groups)


def test_layer_norm_freezes_the_hidden_size_with_its_reason():
    a = prepare(encoder(embed=True)).analysis
    (stream,) = [g for g in a.groups if g.frozen and g.layers[0].startswith("MatMul")
                 and "LayerNormalization" in g.frozen_reason]
    assert "normalises over the channel axis" in stream.frozen_reason
    assert head_group(a).droppable and len(a.prunable_units) == 4 + 32


def test_inspect_names_the_heads_and_their_block():
    rep = inspect(encoder(merged=True))
    (g,) = [g for g in rep.groups if g.heads_of]
    assert g.units == 4 and g.heads_of.startswith("Reshape_") and g.frozen_reason is None


def test_inspect_cli_lists_frozen_heads_with_their_block_and_reason(tmp_path, capsys):
    from onnxprune.cli import main
    path = tmp_path / "raw_key.onnx"
    onnx.save(_odd("raw_key"), path)
    assert main(["inspect", str(path)]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if " heads " in ln]
    assert "4 heads" in line and "frozen: MatMul" in line and "combines heads with the unlabelled tensor" in line
    assert "(attention heads of 'Reshape_" in line


def test_magnitude_sums_a_heads_columns_and_the_oracle_masks_a_head():
    p = prepared("separate")
    a = p.analysis
    g = head_group(a)
    mag = score("l1", a)
    for r in g.units:
        assert len({layer for layer, _ in a.unit_kernels[r]}) == 3  # Q, K and V columns of that head
        assert mag[r] > 0
    rng = np.random.default_rng(0)
    data = [({"x": rng.uniform(-1, 1, (4, 6, 16)).astype(np.float32)}, None) for _ in range(2)]
    fast = OracleScorer(a, "mse", rows_per_run=8, workers=1)
    for feeds, labels in data:
        fast.add_batch(feeds, labels)
    got = fast.scores()
    want = naive_oracle(a, data, list(got), "mse")
    np.testing.assert_allclose([got[r] for r in g.units], [want[r] for r in g.units], rtol=1e-5)
    assert all(got[r] > 0 for r in g.units)


def test_ppocrv4_recognizer_heads_prune_exactly():
    """SVTR neck: two blocks of 8 heads (merged QKV, run-time Concat targets); 3 heads out of each, exact."""
    p = prepare(str(shared_path("models", "ppocrv4_rec.onnx")), {"x": (1, 3, 48, 320)})
    heads = [g for g in p.analysis.groups if g.heads_of]
    assert [len(g.units) for g in heads] == [8, 8] and not any(g.frozen for g in heads)
    removed = [r for g in heads for r in g.units[2:5]]
    rng = np.random.default_rng(0)
    pruned, ver = build_pruned(p, removed, extra_feeds=[{"x": rng.uniform(0, 1, (2, 3, 48, 320)).astype(np.float32)}])
    assert ver.max_rel_error < 1e-5 and count_params(pruned) < count_params(p.model)


def test_cost_model_counts_the_attention_products_per_head():
    """Q K^T and P V shrink with the heads: the predicted MACs equal the pruned model's recount."""
    p = prepared("separate")
    removed = np.array(head_group(p.analysis).units[:2])
    pruned, _ = build_pruned(p, removed)
    assert p.cost.evaluate(removed)[0] == prepare(pruned).cost.dense_macs
    saved = p.cost.unit_savings()[int(removed[0])][0]
    assert saved == 4 * 16 * 6 * 3 + 4 * 16 * 6 + 2 * 6 * 6 * 4  # Q, K, V columns + W_o rows + its share of both products


def test_least_squares_refits_the_output_projection_from_the_surviving_heads(tmp_path):
    import onnxprune
    from onnxprune.runtime import make_session
    model = tmp_path / "enc.onnx"
    onnx.save(encoder(), model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    dense = make_session(encoder()).run(None, {"x": x})[0]
    (mlp,) = [g.layers[0] for g in prepared("separate").analysis.groups if len(g.units) == 32]
    err = {}
    for rec in ("none", "lsq"):
        cfg = onnxprune.PruneConfig(target_macs=0.7, criterion="l1", recover=rec, measure=False,
                                    nodes_to_exclude=[mlp])  # only heads go
        res = onnxprune.prune_static(model, tmp_path / f"{rec}.onnx", str(tmp_path / "calib.npz"), config=cfg)
        assert res.verification.max_rel_error < 1e-5
        got = make_session(onnx.load(tmp_path / f"{rec}.onnx")).run(None, {"x": x})[0]
        err[rec] = float(np.mean((got - dense) ** 2))
    assert err["lsq"] < err["none"]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pytorch_export_heads_prune_exactly(exporter, data):
    """view(b, t, H, hd).transpose(1, 2) through both exporters; skipped without torch (dynamo: onnxscript)."""
    if exporter not in _TORCH:
        model = torch_encoder(exporter=exporter)
        _TORCH[exporter] = None if model is None else prepare(model)
    p = _TORCH[exporter]
    if p is None:
        pytest.skip("torch (and for dynamo onnxscript) not installed")
    assert len(head_group(p.analysis).units) == 4
    random_plan_is_exact(p, data)


_TORCH: dict = {}


def test_two_blocks_sharing_constant_targets_prune_independently():
    """Every Reshape of both blocks reads the same [0, 0, 4, 4] and [0, 0, 16]: a rewrite copies it for one node."""
    e = Encoder()
    x = "x"
    for _ in range(2):
        x = e.b.op("Add", [x, e.attention(e.layer_norm(x))])
    p = prepare(e.build(x))
    first, second = [g for g in p.analysis.groups if g.heads_of]
    pruned, ver = build_pruned(p, first.units[:1] + second.units[:3], extra_feeds=feeds_for(p, 3))
    assert ver.max_rel_error < 1e-5
    targets = {tuple(onnx.numpy_helper.to_array(i).tolist()) for i in pruned.graph.initializer
               if i.data_type == onnx.TensorProto.INT64}
    assert targets == {(0, 0, 12), (0, 0, 4), (0, 0, 3, 4), (0, 0, 1, 4)}  # block 1 keeps 3 heads, block 2 one
