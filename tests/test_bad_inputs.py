"""The bad-input matrix: every case one clear line, exit != 0, input untouched, nothing written (invariant 4).

Each case builds its files in a fresh folder, runs the CLI's ``main``
in-process and checks: the exit code, that everything printed is one line
starting ``onnxprune: error:`` with no traceback, that every input file's
bytes are unchanged, and that the output folder holds no output and no
temporary file afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.cli import main

from builders import chain_flatten_gemm, unknown_op


@dataclass
class Case:
    """Files to create in the folder, the CLI arguments (``{d}`` is the folder) and a word the line must hold."""

    argv: list[str]
    needle: str
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    patch: Callable | None = None


def _model(path: Path, m: onnx.ModelProto | None = None) -> None:
    path.write_bytes((m or chain_flatten_gemm()).SerializeToString())


def _old_opset(path: Path) -> None:
    m = chain_flatten_gemm()
    m.opset_import[0].version = 9
    _model(path, m)


def _quantized(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                           helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "q", [x], [y],
                          [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                           helper.make_tensor("z", TensorProto.UINT8, [], [0])])
    _model(path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def _truncated(path: Path) -> None:
    data = chain_flatten_gemm().SerializeToString()
    path.write_bytes(data[: len(data) * 2 // 3])


def _npz(**arrays) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return write


def _floats(shape, fill=None, dtype=np.float32):
    a = np.random.default_rng(0).uniform(-1, 1, shape).astype(dtype)
    if fill is not None:
        a.flat[5] = fill
    return a


def _image_folder(mode: str, size=(8, 8)) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from PIL import Image
        path.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            shape = size + ((4,) if mode == "RGBA" else (3,))
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path / f"{i}.png")
    return write


def _empty_folder(path: Path) -> None:
    path.mkdir()


def _disk_full(monkeypatch) -> None:
    """The write starts, puts some bytes down, then the disk is full."""
    real = onnx.save_model

    def full(proto, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save_model", full)
    assert real is not full


M = {"m.onnx": _model}
PRUNE = ["prune", "{d}/m.onnx", "-o", "{d}/out/o.onnx"]

CASES = {
    "missing file": Case(["prune", "{d}/nope.onnx", "-o", "{d}/out/o.onnx"], "no such file"),
    "not onnx": Case(PRUNE, "not an ONNX model", {"m.onnx": lambda p: p.write_text("hello, not a model")}),
    "empty file": Case(PRUNE, "not an ONNX model", {"m.onnx": lambda p: p.write_bytes(b"")}),
    "truncated protobuf": Case(PRUNE, "m.onnx", {"m.onnx": _truncated}),
    "model is a folder": Case(PRUNE, "is a folder", {"m.onnx": _empty_folder}),
    "opset < 11": Case(PRUNE, "opset 9", {"m.onnx": _old_opset}),
    "quantized": Case(PRUNE, "quantized", {"m.onnx": _quantized}),
    "no prunable layer": Case(PRUNE, "no prunable", {"m.onnx": lambda p: _model(p, unknown_op())}),
    "calib wrong size": Case(PRUNE + ["--calib", "{d}/c.npz"], "wrong height",
                             {**M, "c.npz": _npz(x=_floats((4, 3, 16, 16)))}),
    "calib wrong channels": Case(PRUNE + ["--calib", "{d}/c.npz"], "wrong channels",
                                 {**M, "c.npz": _npz(x=_floats((4, 4, 8, 8)))}),
    "calib wrong rank": Case(PRUNE + ["--calib", "{d}/c.npz"], "rank",
                             {**M, "c.npz": _npz(x=_floats((4, 3, 8)))}),
    "calib int32": Case(PRUNE + ["--calib", "{d}/c.npz"], "int32",
                        {**M, "c.npz": _npz(x=np.ones((4, 3, 8, 8), np.int32))}),
    "calib strings": Case(PRUNE + ["--calib", "{d}/c.npz"], "calib",
                          {**M, "c.npz": _npz(x=np.array(["a", "b"]))}),
    "calib NaN": Case(PRUNE + ["--calib", "{d}/c.npz"], "NaN/Inf",
                      {**M, "c.npz": _npz(x=_floats((4, 3, 8, 8), np.nan))}),
    "calib Inf": Case(PRUNE + ["--calib", "{d}/c.npz"], "NaN/Inf",
                      {**M, "c.npz": _npz(x=_floats((4, 3, 8, 8), np.inf))}),
    "calib empty array": Case(PRUNE + ["--calib", "{d}/c.npz"], "calib",
                              {**M, "c.npz": _npz(x=np.zeros((0, 3, 8, 8), np.float32))}),
    "calib not numpy": Case(PRUNE + ["--calib", "{d}/c.npz"], "c.npz",
                            {**M, "c.npz": lambda p: p.write_text("not an archive")}),
    "calib missing": Case(PRUNE + ["--calib", "{d}/none.npz"], "no such file"),
    "calib empty folder": Case(PRUNE + ["--calib", "{d}/imgs"], "imgs", {**M, "imgs": _empty_folder}),
    "calib RGBA images for a 1-channel setting": Case(PRUNE + ["--calib", "{d}/imgs", "--grayscale"], "channel",
                                                      {**M, "imgs": _image_folder("RGBA")}),
    "calib bad mean": Case(PRUNE + ["--calib", "{d}/imgs", "--mean", "a,b,c"], "--mean",
                           {**M, "imgs": _image_folder("RGB")}),
    "calib mean of wrong length": Case(PRUNE + ["--calib", "{d}/imgs", "--mean", "0.5,0.5"], "mean",
                                       {**M, "imgs": _image_folder("RGB")}),
    "calib bad size": Case(PRUNE + ["--calib", "{d}/imgs", "--size", "8by8"], "--size",
                           {**M, "imgs": _image_folder("RGB")}),
    "percentage 100": Case(PRUNE + ["--percentage", "100"], "percentage", M),
    "percentage negative": Case(PRUNE + ["--percentage", "-1"], "percentage", M),
    "percentage nan": Case(PRUNE + ["--percentage", "nan"], "percentage", M),
    "target-macs 0": Case(PRUNE + ["--target-macs", "0"], "(0, 1]", M),
    "target-macs 2": Case(PRUNE + ["--target-macs", "2"], "(0, 1]", M),
    "target-params negative": Case(PRUNE + ["--target-params", "-0.5"], "(0, 1]", M),
    "max-layer-ratio 3": Case(PRUNE + ["--max-layer-ratio", "3"], "max", M),
    "min-kernels 0": Case(PRUNE + ["--min-kernels", "0"], "min", M),
    "steps 0": Case(PRUNE + ["--steps", "0"], "steps", M),
    "round-to 0": Case(PRUNE + ["--round-to", "0"], "round-to", M),
    "input shape malformed": Case(PRUNE + ["--input-shape", "x:1xthree"], "input-shape", M),
    "output equals input": Case(["prune", "{d}/m.onnx", "-o", "{d}/m.onnx"], "is the input file", M),
    "output equals input via ..": Case(["prune", "{d}/m.onnx", "-o", "{d}/out/../m.onnx"], "is the input file", M),
    "output folder missing": Case(["prune", "{d}/m.onnx", "-o", "{d}/nodir/o.onnx"], "does not exist", M),
    "output under a file": Case(["prune", "{d}/m.onnx", "-o", "{d}/m.onnx/o.onnx"], "not a folder", M),
    "output is a folder": Case(["prune", "{d}/m.onnx", "-o", "{d}/out"], "is a folder", M),
    "disk full while writing": Case(PRUNE, "No space left", M, _disk_full),
    "apply: plan missing": Case(["apply", "{d}/m.onnx", "--plan", "{d}/p.json", "-o", "{d}/out/o.onnx"], "p.json", M),
    "apply: plan not json": Case(["apply", "{d}/m.onnx", "--plan", "{d}/p.json", "-o", "{d}/out/o.onnx"], "p.json",
                                 {**M, "p.json": lambda p: p.write_text("{nope")}),
    "score: output equals input": Case(["score", "{d}/m.onnx", "--criterion", "l1", "-o", "{d}/m.onnx"],
                                       "is the input file", M),
    "unknown option": Case(["prune", "{d}/m.onnx", "-o", "{d}/out/o.onnx", "--frobnicate"], "frobnicate", M),
}


def _digests(folder: Path) -> dict[str, str]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    d = tmp_path / "case"
    d.mkdir()
    (d / "out").mkdir()
    for fname, make in case.files.items():
        make(d / fname)
    if case.patch is not None:
        case.patch(monkeypatch)
    before = _digests(d)
    try:
        code = main([a.replace("{d}", str(d)) for a in case.argv])
    except SystemExit as exc:  # argparse exits by itself for malformed options; its line is checked the same
        code = exc.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert code not in (0, None), text
    assert text.startswith("onnxprune: error:"), text
    assert text.count("\n") == 1 and "Traceback" not in text, text
    assert case.needle in text, text
    assert _digests(d) == before, "an input was modified or a file was written"
    assert not list((d / "out").iterdir()), "partial output left behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; 'output under a file' covers it")
def test_read_only_output_folder(tmp_path, capsys):
    _model(tmp_path / "m.onnx")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = main(["prune", str(tmp_path / "m.onnx"), "-o", str(ro / "o.onnx")])
        err = capsys.readouterr().err
        assert code == 2 and "not writable" in err and err.count("\n") == 1
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o700)
