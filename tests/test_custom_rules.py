"""``onnxprune.register_channel_rule``: a custom-domain op prunes once its rule is registered, freezes without."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxprune
from onnxprune.graph import rules
from onnxprune.graph.rules import PassRule
from onnxprune.runtime import make_session

from builders import Builder

DOMAIN = "com.example"


def custom_act_model() -> onnx.ModelProto:
    """Conv(3->8) -> com.example.ScaledRelu (a local function: 2 * Relu) -> Conv(8->4) -> output."""
    b = Builder(shape=(1, 3, 8, 8))
    h = b.conv("x", 3, 8)
    b.nodes.append(helper.make_node("ScaledRelu", [h], ["act_out"], name="act", domain=DOMAIN))
    b.output(b.conv("act_out", 8, 4, k=1), 4)
    two = helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0]))
    body = [helper.make_node("Relu", ["X"], ["r"]), two, helper.make_node("Mul", ["r", "two"], ["Y"])]
    fn = helper.make_function(DOMAIN, "ScaledRelu", ["X"], ["Y"], body, [helper.make_opsetid("", 17)])
    g = helper.make_graph(b.nodes, "custom", b.inputs, b.outputs, b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                          functions=[fn])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.fixture
def registry(monkeypatch):
    """A fresh custom-rule registry for one test (registration is process-wide)."""
    monkeypatch.setattr(rules, "CUSTOM_RULES", {})
    return rules


def test_unregistered_custom_op_freezes_with_a_reason(registry):
    rep = onnxprune.inspect(custom_act_model())
    assert rep.prunable_conv_num == 0
    reasons = {g.frozen_reason for g in rep.groups}
    assert ("ScaledRelu node 'act' of domain 'com.example' is not understood by the channel analysis "
            "(onnxprune.register_channel_rule adds a rule)") in reasons
    with pytest.raises(onnxprune.NothingToPruneError):
        onnxprune.prune_model(custom_act_model(), percentage=50)


def test_registered_custom_op_prunes_exactly(registry):
    onnxprune.register_channel_rule("ScaledRelu", PassRule(), domain=DOMAIN)
    model = custom_act_model()
    assert onnxprune.inspect(model).prunable_conv_num == 1
    res = onnxprune.prune_model(model, percentage=50)
    assert res.report.removed_kernels == 4
    assert res.verification is not None and res.verification.max_rel_error < 1e-5  # raised otherwise
    conv1 = next(t for t in res.model.graph.initializer if t.name == model.graph.node[0].input[1])
    assert list(conv1.dims) == [4, 3, 3, 3]
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert make_session(res.model).run(None, {"x": x})[0].shape == (1, 4, 8, 8)


def test_a_custom_domain_never_borrows_the_onnx_rule_of_the_same_name(registry):
    assert rules.rule_for("Relu", DOMAIN) is rules.DEFAULT_RULE
    assert rules.rule_for("Relu", "ai.onnx") is rules.RULES["Relu"]


@pytest.mark.parametrize("args, message", [
    (("", PassRule()), "op_type must be a non-empty string"),
    (("X", PassRule), "rule must be an OpRule instance (e.g. PassRule()), got type"),
])
def test_bad_registrations_are_refused(registry, args, message):
    with pytest.raises(onnxprune.InvalidArgumentError) as err:
        onnxprune.register_channel_rule(*args, domain=DOMAIN)
    assert message in str(err.value)
    assert registry.CUSTOM_RULES == {}
