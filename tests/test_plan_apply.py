"""``apply --plan`` writes the model the ``prune`` that saved the plan wrote: the plan records the re-fit, apply repeats it."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx

from onnxprune.cli import main
from onnxprune.demo import write_demo_files
from onnxprune.runtime import make_session


def _outputs(path, x: np.ndarray) -> np.ndarray:
    sess = make_session(onnx.load(str(path)))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_apply_with_the_prunes_calibration_gives_the_prunes_model(tmp_path, caplog):
    d = write_demo_files(tmp_path / "demo")
    model, calib = str(d / "model.onnx"), str(d / "calib.npz")
    pruned, plan = tmp_path / "pruned.onnx", tmp_path / "plan.json"
    assert main(["prune", model, "--calib", calib, "--calib-limit", "48", "--criterion", "energy",
                 "--target-macs", "0.6", "--recover", "lsq", "-o", str(pruned), "--save-plan", str(plan)]) == 0
    meta = json.loads(plan.read_text())["meta"]["recovery"]
    assert meta["recover"] == "lsq" and meta["calibration_samples"] == 48 and "least-squares" in meta["fitted"]
    x = np.random.default_rng(0).uniform(0, 1, (16, 1, 28, 28)).astype(np.float32)

    applied = tmp_path / "applied.onnx"
    assert main(["apply", model, "--plan", str(plan), "--calib", calib, "-o", str(applied)]) == 0
    np.testing.assert_allclose(_outputs(applied, x), _outputs(pruned, x), rtol=1e-5, atol=1e-6)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "re-fit" in r.getMessage()]

    bare = tmp_path / "bare.onnx"  # no data: pruned, not re-fitted, and it says so
    assert main(["apply", model, "--plan", str(plan), "-o", str(bare)]) == 0
    assert any("not re-fitted, so this model differs" in r.getMessage() for r in caplog.records)
    assert not np.allclose(_outputs(bare, x), _outputs(pruned, x), rtol=1e-5, atol=1e-6)

    other = tmp_path / "other.onnx"  # other rows: a different fit, and a warning that says so
    assert main(["apply", model, "--plan", str(plan), "--calib", calib, "--calib-limit", "32", "-o", str(other)]) == 0
    assert any("the re-fit differs from the prune's" in r.getMessage() for r in caplog.records)
