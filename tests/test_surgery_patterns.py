"""Exactness of the surgery on every supported pattern, on random plans (invariant 1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from onnxprune.pruning.api import build_pruned
from onnxprune.pruning.prepare import prepare
from onnxprune.report import count_params

from builders import PATTERNS, softmax_over_channels, unknown_op

_PREPARED: dict = {}


def prepared(name):
    if name not in _PREPARED:
        _PREPARED[name] = prepare(PATTERNS[name]())
    return _PREPARED[name]


def feasible(p, removed):
    """Drop units until every labelled tensor keeps at least one channel."""
    a = p.analysis
    removed = list(removed)
    for name in a.labels:
        while True:
            keep = a.keep_mask(name, np.array(removed, dtype=np.int64))
            if keep is None or keep.any() or not removed:
                break
            removed.pop()
    return removed


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_is_prunable(name):
    p = prepared(name)
    assert p.analysis.prunable_units, [g.frozen_reason for g in p.analysis.groups]


@pytest.mark.parametrize("name", sorted(PATTERNS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_plan_is_exact(name, data):
    random_plan_is_exact(prepared(name), data)


def random_plan_is_exact(p, data, batch: int = 3) -> None:
    """Remove a hypothesis-drawn feasible set of units; the surgery must verify exact and shrink the model."""
    units = p.analysis.prunable_units
    chosen = data.draw(st.lists(st.sampled_from(units), unique=True, max_size=len(units)))
    removed = feasible(p, chosen)
    rng = np.random.default_rng(len(removed))
    real = [{k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in p.with_batch(batch).items()}]
    pruned, ver = build_pruned(p, removed, extra_feeds=real)
    assert ver is not None and ver.max_rel_error < 1e-5
    if removed:
        assert count_params(pruned) < count_params(p.model)


def test_option_a_pad_amounts_shrink():
    """Removing a unit that lives in the pad zone shrinks the channel Pad."""
    p = prepared("option_a_shortcut")
    a = p.analysis
    pad_out = [n for n in a.graph.nodes if n.op == "Pad"][0].outputs[0].name
    lab = a.labels[pad_out]
    zero_roots = [int(a.root_of[u]) for u in lab.units[:4]]
    assert all(a.is_prunable(r) for r in zero_roots)
    pruned, _ = build_pruned(p, zero_roots[:3])
    pads = [n for n in pruned.graph.node if n.op_type == "Pad"][0]
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert inits[pads.input[1]].tolist() == [0, 1, 0, 0, 0, 4, 0, 0]


def test_grouped_conv_removes_whole_groups():
    p = prepared("grouped_concat_split")
    a = p.analysis
    node = [n for n in a.graph.nodes if n.op == "Conv" and int(n.attrs.get("group", 1)) == 3][0]
    layer = a.layers[node.name]
    units = {a.unit_of_kernel(layer.name, c) for c in range(layer.kernels)}
    assert len(units) == 3  # one unit per group
    r = a.unit_of_kernel(layer.name, 5)
    pruned, _ = build_pruned(p, [r])
    conv = [n for n in pruned.graph.node if n.op_type == "Conv" and any(at.name == "group" and at.i > 1 for at in n.attribute)]
    assert [at.i for at in conv[0].attribute if at.name == "group"] == [2]


@pytest.mark.parametrize("builder,reason", [(softmax_over_channels, "normalises over the channel axis"),
                                            (unknown_op, "not understood")])
def test_refusals_freeze_with_reason(builder, reason):
    p = prepare(builder())
    frozen = [g for g in p.analysis.groups if g.frozen]
    assert any(reason in g.frozen_reason for g in frozen)
    first = [g for g in p.analysis.groups if g.layers[0] == list(p.analysis.layers)[0]][0]
    assert first.frozen
