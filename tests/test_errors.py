"""Bad input gets one clear line and a non-zero exit; the input is never touched (invariant 4)."""

from __future__ import annotations

import hashlib
import os

import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.cli import main

from builders import chain_flatten_gemm, unknown_op


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects malformed options itself, with a usage line
        code = e.code
    err = capsys.readouterr().err
    return code, err


@pytest.fixture()
def model_file(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(chain_flatten_gemm(), str(p))
    return p


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_missing_file(tmp_path, capsys):
    code, err = run(["inspect", str(tmp_path / "nope.onnx")], capsys)
    assert code == 2 and "no such file" in err and "Traceback" not in err


def test_not_onnx(tmp_path, capsys):
    p = tmp_path / "x.onnx"
    p.write_text("hello, I am not a model")
    code, err = run(["inspect", str(p)], capsys)
    assert code == 2 and "not an ONNX model" in err


def test_truncated(model_file, capsys):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    code, err = run(["inspect", str(model_file)], capsys)
    assert code == 2 and ("truncated" in err or "not an ONNX model" in err or "checker" in err)


def test_old_opset(tmp_path, capsys):
    m = chain_flatten_gemm()
    m.opset_import[0].version = 9
    p = tmp_path / "old.onnx"
    onnx.save(m, str(p))
    code, err = run(["inspect", str(p)], capsys)
    assert code == 2 and "opset 9" in err


def test_quantized_refused(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4])
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q", [x], [y],
                          [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                           helper.make_tensor("z", TensorProto.UINT8, [], [0])])
    p = tmp_path / "q.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(p))
    code, err = run(["inspect", str(p)], capsys)
    assert code == 2 and "quantized" in err


def test_bf16_refused(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "h", [x], [y])
    p = tmp_path / "h.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(p))
    code, err = run(["inspect", str(p)], capsys)
    assert code == 2 and "bfloat16 models are not supported" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,msg", [
    (["--percentage", "100"], "percentage must be in [0, 100)"),
    (["--percentage", "-5"], "percentage must be in [0, 100)"),
    (["--target-macs", "1.5"], "must be in (0, 1]"),
    (["--target-params", "0"], "must be in (0, 1]"),
    (["--round-to", "0"], "positive integer or 'auto'"),
    (["--round-to", "eight"], "positive integer or 'auto'"),
])
def test_out_of_range(model_file, tmp_path, capsys, args, msg):
    before = digest(model_file)
    code, err = run(["prune", str(model_file), "-o", str(tmp_path / "o.onnx"), *args], capsys)
    assert code == 2 and msg in err
    assert digest(model_file) == before and not (tmp_path / "o.onnx").exists()


def test_output_equals_input(model_file, capsys):
    before = digest(model_file)
    code, err = run(["prune", str(model_file), "-o", str(model_file)], capsys)
    assert code == 2 and "is the input file" in err and digest(model_file) == before


def test_unwritable_output(model_file, tmp_path, capsys):
    code, err = run(["prune", str(model_file), "-o", str(tmp_path / "missing_dir" / "o.onnx")], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_readonly_folder(model_file, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, err = run(["prune", str(model_file), "-o", str(ro / "o.onnx")], capsys)
    assert code == 2 and "not writable" in err


def test_no_prunable_layer(tmp_path, capsys):
    b_model = unknown_op()
    p = tmp_path / "u.onnx"
    onnx.save(b_model, str(p))
    # the last conv feeds the graph output, the first reaches LRN: nothing prunable
    code, err = run(["prune", str(p), "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and "no prunable" in err
    assert not (tmp_path / "o.onnx").exists()


def test_bad_plan(model_file, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"format": "onnxprune-plan", "remove": {"nonexistent": [0]}}')
    code, err = run(["apply", str(model_file), "--plan", str(plan), "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and "does not have" in err


def test_unknown_exclude(model_file, tmp_path, capsys):
    code, err = run(["prune", str(model_file), "-o", str(tmp_path / "o.onnx"), "--exclude", "zzz*"], capsys)
    assert code == 2 and "matches no layer" in err
