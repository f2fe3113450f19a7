"""Hostile model files: refused with one line before anything is read, or frozen with a reason (invariant 4).

An ONNX file is untrusted input. Each case here is a file an attacker or a
broken exporter could hand onnxprune; each must end in our own error (the
CLI: exit 2, one line, no traceback) or in a group frozen with the reason,
and never write anything.
"""

from __future__ import annotations

import os
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.errors import InvalidModelError
from onnxprune.graph.io import load_model
from onnxprune.pruning.prepare import prepare

from builders import Builder, chain_flatten_gemm


def run_cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def save_raw(model: onnx.ModelProto, path) -> None:
    """Write a proto as is: no checker, no external-data rewriting."""
    path.write_bytes(model.SerializeToString())


def one_line_refusal(path, capsys, needle: str) -> str:
    before = set(os.listdir(path.parent))
    start = time.monotonic()
    code, text = run_cli(["prune", str(path), "-o", str(path.parent / "out.onnx")], capsys)
    assert time.monotonic() - start < 30
    assert code == 2, text
    assert text.startswith("onnxprune: error:") and text.count("\n") == 1 and "Traceback" not in text, text
    assert needle in text, text
    assert set(os.listdir(path.parent)) == before  # nothing written, no temp file left
    return text


# ------------------------------------------------------------------ external data
@pytest.fixture()
def external_model(tmp_path):
    """chain_flatten_gemm saved with every weight in sub/w.bin, plus a secret file beside sub/."""
    sub = tmp_path / "sub"
    sub.mkdir()
    onnx.save(chain_flatten_gemm(), str(sub / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    (tmp_path / "secret").write_bytes(b"\x00" * 100_000)
    return sub / "m.onnx"


def relocate(model_path, location: str, name: str = "hostile.onnx", **extra):
    m = onnx.load(str(model_path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
            elif e.key in extra:
                e.value = str(extra[e.key])
    out = model_path.parent / name
    save_raw(m, out)
    return out


def test_external_data_loads_inside_folder(external_model):
    m = load_model(external_model)
    assert all(t.data_location == TensorProto.DEFAULT and t.raw_data for t in m.graph.initializer)


@pytest.mark.parametrize("where,needle", [("../secret", "outside the model's folder"),
                                          ("sub/../../secret", "outside the model's folder"),
                                          ("ABS", "absolute path"),
                                          ("LINK", "symlink out of the model's folder")])
def test_external_location_outside_refused_before_reading(external_model, capsys, monkeypatch, where, needle):
    secret = external_model.parent.parent / "secret"
    if where == "ABS":
        where = str(secret)
    elif where == "LINK":
        os.symlink(secret, external_model.parent / "link.bin")
        where = "link.bin"
    hostile = relocate(external_model, where)
    opened = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(os.path.realpath(str(file)))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    one_line_refusal(hostile, capsys, needle)
    assert str(secret.resolve()) not in opened


def test_external_file_missing(external_model, capsys):
    one_line_refusal(relocate(external_model, "nothere.bin"), capsys, "is missing")


def test_external_size_exceeds_file(external_model, capsys):
    """Offsets past the end of the data file: refused before reading."""
    one_line_refusal(relocate(external_model, "w.bin", offset=10 ** 6), capsys, "holds 0 from offset")


def test_external_length_contradicts_shape(external_model, capsys):
    one_line_refusal(relocate(external_model, "w.bin", length=4), capsys, "needs")


def test_inline_data_shorter_than_shape(tmp_path, capsys):
    m = chain_flatten_gemm()
    m.graph.initializer[0].dims[0] *= 1000
    p = tmp_path / "m.onnx"
    save_raw(m, p)
    one_line_refusal(p, capsys, "needs")


# ------------------------------------------------------------------ absurd sizes
def test_absurd_initializer_dims(tmp_path, capsys):
    m = chain_flatten_gemm()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.dims[:]
    t.dims.extend([1 << 20, 1 << 20, 1 << 20])
    p = tmp_path / "m.onnx"
    save_raw(m, p)
    one_line_refusal(p, capsys, "absurd dimensions")


def test_absurd_input_dims(tmp_path, capsys):
    m = chain_flatten_gemm()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = 1 << 22
    dims[3].dim_value = 1 << 22
    p = tmp_path / "m.onnx"
    save_raw(m, p)
    one_line_refusal(p, capsys, "absurd dimensions")


@pytest.mark.parametrize("dims", ["1x3x4000000x4000000", "1x3x0x8", "1x3x-8x8"])
def test_absurd_user_input_shape(tmp_path, capsys, dims):
    """A dynamic-size model given an absurd, zero or negative size: refused before anything allocates."""
    b = Builder(shape=(None, 3, None, None))
    b.output(b.conv(b.op("Relu", [b.conv("x", 3, 4)]), 4, 2), 4)
    p = tmp_path / "m.onnx"
    onnx.save(b.build(), str(p))
    code, text = run_cli(["inspect", str(p), "--input-shape", f"x:{dims}"], capsys)
    assert code == 2 and "at most" in text and text.count("\n") == 1, text


# ------------------------------------------------------------------ broken graphs
def _graph_model(nodes, inits, inputs=None, outputs=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", inputs or [x], outputs or [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _w(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def test_cyclic_graph(tmp_path, capsys):
    """a = Conv(x + b); b = Relu(a): a cycle no topological order resolves."""
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "w"], ["a"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Identity", ["b"], ["y"], name="out")]
    p = tmp_path / "m.onnx"
    save_raw(_graph_model(nodes, [_w("w", (3, 3, 3, 3))]), p)
    one_line_refusal(p, capsys, "checker")


def test_duplicate_output_names(tmp_path, capsys):
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["a"], name="r"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="c2")]
    p = tmp_path / "m.onnx"
    save_raw(_graph_model(nodes, [_w("w", (3, 3, 3, 3)), _w("w2", (2, 3, 1, 1))]), p)
    one_line_refusal(p, capsys, "checker")


def test_duplicate_initializer_names(tmp_path, capsys):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c1", pads=[1] * 4)]
    p = tmp_path / "m.onnx"
    save_raw(_graph_model(nodes, [_w("w", (3, 3, 3, 3)), _w("w", (3, 3, 3, 3))]), p)
    one_line_refusal(p, capsys, "error")


def test_missing_initializer(tmp_path, capsys):
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Conv", ["a", "w_gone"], ["y"], name="c2")]
    p = tmp_path / "m.onnx"
    save_raw(_graph_model(nodes, [_w("w", (3, 3, 3, 3))]), p)
    one_line_refusal(p, capsys, "checker")


def test_duplicate_node_names(tmp_path, capsys):
    """The checker lets duplicate node names through, onnxruntime refuses them: one line, our error."""
    m = chain_flatten_gemm()
    for n in m.graph.node:
        n.name = "same"
    p = tmp_path / "m.onnx"
    save_raw(m, p)
    one_line_refusal(p, capsys, "same node name")


# ------------------------------------------------------------------ sub-graphs
def _branch(name: str, t: str, scale: float, out: str) -> onnx.GraphProto:
    """A branch of If reading the outer tensor ``t`` (channels consumed out of the analysis' sight)."""
    c = numpy_helper.from_array(np.full((1, 6, 1, 1), scale, np.float32), f"{name}_s")
    node = helper.make_node("Mul", [t, f"{name}_s"], [out], name=f"{name}_mul")
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 6, 8, 8])],
                             [c])


def _subgraph_model(kind: str) -> onnx.ModelProto:
    """x -> Conv(6) -> Relu -> h; an If/Loop/Scan whose body multiplies h (read from the outer scope)."""
    b = Builder(shape=(1, 3, 8, 8))
    h = b.op("Relu", [b.conv("x", 3, 6)])
    if kind == "If":
        b.inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        y = b.op("If", ["cond"], then_branch=_branch("then", h, 2.0, "t_out"),
                 else_branch=_branch("else", h, 3.0, "e_out"))
    elif kind == "Loop":  # one iteration; body (i, cond) -> (cond, scan output h * 2)
        body = _branch("body", h, 2.0, "l_out")
        body.node.insert(0, helper.make_node("Identity", ["c"], ["c_out"], name="body_cond"))
        body.input.extend([helper.make_tensor_value_info("i", TensorProto.INT64, []),
                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])])
        body.output.insert(0, helper.make_tensor_value_info("c_out", TensorProto.BOOL, []))
        y = b.op("Loop", [b.const(np.array(1, np.int64)), b.const(np.array(True))], body=body)
    else:  # Scan over a (3, 2) constant; the body's scan output is h * 2 at every step
        body = _branch("body", h, 2.0, "s_out")
        body.input.append(helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2]))
        body.node.append(helper.make_node("Identity", ["s_in"], ["s_unused"], name="body_read"))
        y = b.op("Scan", [b.const(np.ones((3, 2), np.float32))], body=body, num_scan_inputs=1)
    b.output(y, 4 if kind == "If" else 5)
    m = helper.make_model(helper.make_graph(b.nodes, "sub", b.inputs, b.outputs, b.inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("kind", ["If", "Loop", "Scan"])
def test_subgraph_using_channels_freezes(kind, tmp_path, capsys):
    """The conv whose output a sub-graph reads is frozen with the reason; nothing else is prunable."""
    m = _subgraph_model(kind)
    p = prepare(m)
    conv = [g for g in p.analysis.groups if g.layers[0].startswith("Conv")]
    assert conv and all(g.frozen for g in conv)
    assert any(f"sub-graph of {kind}" in g.frozen_reason for g in conv), [g.frozen_reason for g in conv]
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    one_line_refusal(path, capsys, "no prunable")


def test_load_error_is_ours(tmp_path):
    """The library raises our InvalidModelError (never onnx's ValidationError) for a path outside."""
    sub = tmp_path / "sub"
    sub.mkdir()
    m = chain_flatten_gemm()
    onnx.save(m, str(sub / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").write_bytes((sub / "w.bin").read_bytes())
    hostile = relocate(sub / "m.onnx", "../w.bin")
    with pytest.raises(InvalidModelError, match="outside"):
        load_model(hostile)
