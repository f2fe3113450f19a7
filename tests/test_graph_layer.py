"""onnxprune.graph as a layer of its own: rule contexts, error policy, weight layout, sub-graphs."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph import rules
from onnxprune.graph.analysis import Analysis
from onnxprune.graph.channels import ShapeUnknownError
from onnxprune.graph.layout import WeightLayout, as_matrix, from_matrix, node_attrs, weight_layout
from onnxprune.graph.normalize import infer_shapes, normalize
from onnxprune.graph.probe import probe
from onnxprune.graph.rules.context import AnalysisContext, RewriteContext
from onnxprune.graph.session import make_session
from onnxprune.graph.subgraph import expose, extract, extract_reached, free_inputs, prefix
from onnxprune.graph.surgery import Surgery

GRAPH = Path(__file__).resolve().parent.parent / "onnxprune" / "graph"


def run(model, feeds, names=None):
    sess = make_session(model, ["CPUExecutionProvider"])
    names = names or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


# ---------------------------------------------------------------- layering (imports: tests/test_imports.py)

def test_rules_use_only_their_context():
    """No rule reaches into the analysis' union-find or probe, nor through the surgery to the analysis."""
    for path in (GRAPH / "rules").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr not in {"uf", "probe", "labels_", "_frozen"}, f"{path.name}: .{node.attr}"
                if isinstance(node.value, ast.Name) and node.value.id == "s":
                    assert node.attr in {"keep", "labels", "shape", "set_const"}, f"{path.name}: s.{node.attr}"
                if isinstance(node.value, ast.Name) and node.value.id == "a":
                    assert node.attr in _members(AnalysisContext), f"{path.name}: a.{node.attr}"


def _members(proto: type) -> dict[str, inspect.Signature]:
    out = {}
    for klass in proto.__mro__:
        if klass in (typing.Protocol, typing.Generic, object):
            continue
        for name, fn in vars(klass).items():
            if inspect.isfunction(fn) and not name.startswith("_"):
                out.setdefault(name, inspect.signature(fn))
    return out


@pytest.mark.parametrize("impl, proto", [(Analysis, AnalysisContext), (Surgery, RewriteContext)])
def test_implementations_match_their_protocol(impl, proto):
    members = _members(proto)
    assert members
    for name, sig in members.items():
        got = inspect.signature(getattr(impl, name))
        assert list(got.parameters) == list(sig.parameters), name


def test_registry():
    assert rules.rule_for("Conv") is rules.RULES["Conv"]
    assert rules.rule_for("LRN") is rules.DEFAULT_RULE
    assert isinstance(rules.RULES["Relu"], rules.PassRule)
    assert isinstance(rules.RULES["Add"], rules.ElementwiseRule)


# ---------------------------------------------------------------- error policy

# x -> Conv(4) -> Relu -> r -> Add(r, r) -> Conv(2) -> y
SMALL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y)
<float[4, 3, 1, 1] w1 = {%s}, float[2, 4, 1, 1] w2 = {%s}>
{
    c = Conv(x, w1)
    r = Relu(c)
    s = Add(r, r)
    y = Conv(s, w2)
}
""" % (", ".join(["0.5"] * 12), ", ".join(["0.25"] * 8))


def _small():
    model = normalize(onnx.parser.parse_model(SMALL))
    return model, probe(model, {"x": (2, 3, 4, 4)})


def test_small_model_is_prunable():
    model, pr = _small()
    a = Analysis(model, pr)
    assert len(a.prunable_units) == 4


def test_missing_shape_freezes_with_reason():
    model, pr = _small()
    del pr.shapes["r"]
    a = Analysis(model, pr)
    add = next(n for n in a.graph.nodes if n.op == "Add")
    assert a.prunable_units == []
    assert [g.frozen_reason for g in a.groups] == [f"Add {add.name!r}: shape of 'r' unknown",
                                                   "reaches graph output 'y'"]


def test_shape_unknown_is_not_a_key_error():
    assert not issubclass(ShapeUnknownError, KeyError)
    assert ShapeUnknownError("t").tensor == "t"


class _Buggy(rules.OpRule):
    def propagate(self, a, node):
        raise KeyError("a bug in a rule")


def test_rule_bug_propagates(monkeypatch):
    model, pr = _small()
    monkeypatch.setitem(rules.RULES, "Relu", _Buggy())
    with pytest.raises(KeyError, match="a bug in a rule"):
        Analysis(model, pr)


# ---------------------------------------------------------------- weight layout

@pytest.mark.parametrize("op, attrs, want", [
    ("Conv", {}, WeightLayout(0, 1)),
    ("Conv", {"group": 4}, WeightLayout(0, 1)),
    ("ConvTranspose", {}, WeightLayout(1, 0)),
    ("Gemm", {"transB": 1}, WeightLayout(0, 1)),
    ("Gemm", {}, WeightLayout(1, 0)),
    ("MatMul", {}, WeightLayout(1, 0)),
    ("Relu", {}, None),
])
def test_weight_layout(op, attrs, want):
    assert weight_layout(op, attrs) == want


def _roundtrip(op, attrs, w):
    m = as_matrix(op, attrs, w)
    back = from_matrix(op, attrs, m, w.shape)
    assert back.shape == w.shape and np.array_equal(back, w)
    return m


def test_as_matrix_rows_are_output_channels():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    m = _roundtrip("Conv", {}, w)
    assert m.shape == (4, 12) and all(np.array_equal(m[o], w[o].ravel()) for o in range(4))
    wt = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)  # [C_in, C_out, k, k]
    m = _roundtrip("ConvTranspose", {}, wt)
    assert m.shape == (4, 12) and all(np.array_equal(m[o], wt[:, o].ravel()) for o in range(4))
    b = rng.standard_normal((5, 3)).astype(np.float32)
    assert np.array_equal(_roundtrip("Gemm", {"transB": 1}, b), b)
    assert np.array_equal(_roundtrip("Gemm", {"transB": 0}, b), b.T)
    assert np.array_equal(_roundtrip("MatMul", {}, b), b.T)
    with pytest.raises(ValueError):
        as_matrix("Relu", {}, b)


@pytest.mark.parametrize("group", [1, 2])
def test_convtranspose_matrix_matches_onnxruntime(group):
    """With a 1x1 kernel, output channel o is row o of the matrix times its group's input channels."""
    rng = np.random.default_rng(1)
    c_in, cout_g = 4, 3
    w = rng.standard_normal((c_in, cout_g, 1, 1)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=group)
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((2, c_in, 3, 3)).astype(np.float32)
    y = run(model, {"x": x})["y"]
    attrs = node_attrs(node)
    m = _roundtrip("ConvTranspose", attrs, w)
    cin_g = c_in // group
    assert m.shape == (group * cout_g, cin_g) and y.shape[1] == group * cout_g
    for o in range(group * cout_g):
        g = o // cout_g
        want = np.einsum("c,nchw->nhw", m[o], x[:, g * cin_g:(g + 1) * cin_g])
        np.testing.assert_allclose(y[:, o], want, rtol=1e-5, atol=1e-6)


def test_node_attrs_matches_graphsurgeon():
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, auto_pad="SAME_UPPER", strides=[2, 2])
    attrs = node_attrs(node)
    assert attrs == {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]}
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    gs_node = gs.import_onnx(helper.make_model(graph)).nodes[0]
    assert dict(gs_node.attrs) == attrs


# ---------------------------------------------------------------- sub-graphs

# x -> Relu -> a -> Mul k -> b -> Add z -> c -> Add k -> d -> Sigmoid -> y;  z -> Neg -> n (second output)
CHAIN = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 3] x, float[2, 3] z) => (float[2, 3] y, float[2, 3] n)
<float[3] k = {1.0, -2.0, 0.5}>
{
    a = Relu(x)
    b = Mul(a, k)
    c = Add(b, z)
    d = Add(c, k)
    y = Sigmoid(d)
    n = Neg(z)
}
"""


def _chain():
    model = onnx.parser.parse_model(CHAIN)
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32), "z": rng.standard_normal((2, 3)).astype(np.float32)}
    return model, feeds


def test_expose_adds_each_name_once():
    model, feeds = _chain()
    full = run(model, feeds)
    exposed = expose(model, ["a", "b", "a", "y"])
    assert [o.name for o in exposed.graph.output] == ["y", "n", "a", "b"]
    assert len(model.graph.output) == 2  # the input model is not changed
    got = run(exposed, feeds)
    assert np.array_equal(got["y"], full["y"]) and np.array_equal(got["n"], full["n"])
    assert np.array_equal(got["a"], np.maximum(feeds["x"], 0))
    assert np.array_equal(got["b"], got["a"] * np.array([1.0, -2.0, 0.5], dtype=np.float32))


def test_expose_types():
    """An integer tensor is exposed with its type from ``types`` or the value info (FLOAT would not run)."""
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 3] x) => (float[2, 3] y) { s = Shape(x)  y = Relu(x) }
""")
    x = np.ones((2, 3), dtype=np.float32)
    assert run(expose(model, ["s"], {"s": TensorProto.INT64}), {"x": x})["s"].tolist() == [2, 3]
    typed = infer_shapes(model)
    out = expose(typed, ["s"])
    assert out.graph.output[-1].type.tensor_type.elem_type == TensorProto.INT64
    assert run(out, {"x": x})["s"].tolist() == [2, 3]
    assert expose(model, ["s"]).graph.output[-1].type.tensor_type.elem_type == TensorProto.FLOAT


def _if_model():
    """t = Relu(x); r = If(cond) then Identity(t) [outer-scope t] else Neg(z) [outer-scope z]"""
    then_g = helper.make_graph([helper.make_node("Identity", ["t"], ["o1"])], "then", [],
                               [helper.make_tensor_value_info("o1", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["z"], ["o2"])], "else", [],
                               [helper.make_tensor_value_info("o2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["t"]),
             helper.make_node("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Sigmoid", ["r"], ["y"])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    rng = np.random.default_rng(3)
    feeds = {"cond": np.array(True), "x": rng.standard_normal((2, 3)).astype(np.float32),
             "z": rng.standard_normal((2, 3)).astype(np.float32)}
    return model, feeds


def test_free_inputs():
    model, _ = _chain()
    nodes = list(model.graph.node)
    assert free_inputs(nodes[1:4], {"k"}) == ["a", "z"]
    assert free_inputs(nodes[1:4], set()) == ["a", "k", "z"]
    assert free_inputs(nodes, {"k"}) == ["x", "z"]
    if_model, _ = _if_model()
    assert free_inputs(list(if_model.graph.node)[1:], set()) == ["cond", "z", "t"]  # attributes sorted by name
    assert free_inputs(list(if_model.graph.node), set()) == ["x", "cond", "z"]


def test_extract_middle_piece_equals_full_model():
    model, feeds = _chain()
    model = infer_shapes(model)  # typed (rank-only) inputs make the piece pass the checker
    full = run(expose(model, ["a"]), feeds)
    piece, inputs = extract(model, list(model.graph.node)[1:5], ["y"], name="piece")
    assert inputs == ["a", "z"]
    assert [i.name for i in piece.graph.input] == ["a", "z"]
    assert [t.name for t in piece.graph.initializer] == ["k"]  # used twice, copied once
    assert piece.graph.name == "piece" and piece.ir_version == model.ir_version
    assert list(piece.opset_import) == list(model.opset_import)
    onnx.checker.check_model(piece)
    got = run(piece, {"a": full["a"], "z": feeds["z"]})
    assert np.array_equal(got["y"], full["y"])


def test_extract_types_and_value_info_outputs():
    model, feeds = _chain()
    full = run(expose(model, ["c"]), feeds)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    piece, inputs = extract(model, list(model.graph.node)[3:5], [out], types={"c": TensorProto.FLOAT})
    assert inputs == ["c"] and piece.graph.output[0] == out
    assert np.array_equal(run(piece, {"c": full["c"]})["y"], full["y"])


def test_extract_reads_outer_scope_names_of_subgraphs():
    model, feeds = _if_model()
    t = run(expose(model, ["t"]), feeds)["t"]
    piece, inputs = extract(model, list(model.graph.node)[1:], ["y"])
    assert inputs == ["cond", "z", "t"]
    assert piece.graph.input[0].type.tensor_type.elem_type == TensorProto.BOOL
    for cond in (True, False):
        f = dict(feeds, cond=np.array(cond))
        got = run(piece, {"cond": f["cond"], "t": t, "z": f["z"]})["y"]
        assert np.array_equal(got, run(model, f)["y"])


def test_extract_copies_sparse_initializers():
    model, feeds = _chain()
    k = model.graph.initializer[0]
    dense = numpy_helper.to_array(k)
    values = numpy_helper.from_array(dense, "k")
    indices = numpy_helper.from_array(np.arange(3, dtype=np.int64), "k_indices")
    del model.graph.initializer[:]
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [3]))
    piece, inputs = extract(model, list(model.graph.node)[:5], ["y"])
    assert inputs == ["x", "z"] and len(piece.graph.sparse_initializer) == 1
    assert np.array_equal(run(piece, feeds)["y"], run(model, feeds)["y"])


def test_extract_reached_keeps_the_outputs_a_cut_computes():
    """A cut after one head's last node: that head is left out (and named when asked for), never an invalid model."""
    model, feeds = _chain()
    nodes = list(model.graph.node)[1:5]  # Mul .. Sigmoid: computes y, not n
    with pytest.raises(ValueError, match=r"piece: output\(s\) n are not computed by its 4 node\(s\)"):
        extract(model, nodes, ["y", "n"], name="piece")
    piece, inputs, reached = extract_reached(model, nodes, ["n", "y"], name="piece")
    assert reached == [1] and [o.name for o in piece.graph.output] == ["y"] and inputs == ["a", "z"]
    a = np.maximum(feeds["x"], 0)
    assert np.array_equal(run(piece, {"a": a, "z": feeds["z"]})["y"], run(model, feeds)["y"])
    with pytest.raises(ValueError, match="compute none of the outputs n"):
        extract_reached(model, nodes, ["n"], name="piece")


def test_prefix_keeps_only_needed_nodes():
    model, feeds = _chain()
    full = run(expose(model, ["b"]), feeds)
    pre = prefix(model, ["b"])
    assert [n.op_type for n in pre.graph.node] == ["Relu", "Mul"]
    assert [i.name for i in pre.graph.input] == ["x"]
    assert np.array_equal(run(pre, {"x": feeds["x"]})["b"], full["b"])
    both = prefix(model, ["b", "n"])
    assert [n.op_type for n in both.graph.node] == ["Relu", "Mul", "Neg"]
    got = run(both, feeds)
    assert np.array_equal(got["b"], full["b"]) and np.array_equal(got["n"], full["n"])


def test_prefix_follows_outer_scope_reads():
    model, feeds = _if_model()
    pre = prefix(model, ["r"])
    assert [n.op_type for n in pre.graph.node] == ["Relu", "If"]  # Relu is read only inside the branch
    assert [i.name for i in pre.graph.input] == ["x", "cond", "z"]
    full = run(expose(model, ["r"]), feeds)
    assert np.array_equal(run(pre, feeds)["r"], full["r"])
