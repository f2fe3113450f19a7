"""Augmented calibration copies: exact geometry, order, seeding, refusal of non-images, the config path."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.calibration import Augment, load_calibration
from onnxprune.calibration.augment import _crop_box, augment_arrays, augment_image, image_axes
from onnxprune.errors import CalibrationError, InvalidArgumentError

from builders import inverted_residual


def test_whole_image_copies_are_the_image_or_its_mirror():
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 5)).astype(np.float32)
    labels = np.array([7, 8, 9])
    same, lab = augment_arrays({"x": x}, labels, Augment(rounds=2, scale=(1, 1), ratio=(1.2, 1.2), flip=0.0))
    # a 6x5 image has no 1.2-aspect crop of its whole area: the fallback is the whole image
    np.testing.assert_array_equal(same["x"].reshape(3, 3, 3, 6, 5), np.repeat(x[:, None], 3, axis=1))
    np.testing.assert_array_equal(lab, [7, 7, 7, 8, 8, 8, 9, 9, 9])
    mirrored, _ = augment_arrays({"x": x}, None, Augment(rounds=1, scale=(1, 1), ratio=(1.2, 1.2), flip=1.0))
    np.testing.assert_array_equal(mirrored["x"][0::2], x)  # image first, then its copy
    np.testing.assert_array_equal(mirrored["x"][1::2], x[..., ::-1])


def test_crop_resamples_a_ramp_linearly():
    """Bilinear resampling of a ramp is the ramp at the crop's pixel centres (inside the image)."""
    height, width = 16, 20
    ramp = np.broadcast_to(np.arange(width, dtype=np.float32), (3, height, width)).copy()
    spec = Augment(rounds=1, scale=(0.3, 0.6), flip=0.0)
    out = augment_image(ramp, (1, 2, 3), np.random.default_rng(5), spec)
    top, left, h, w = _crop_box(np.random.default_rng(5), height, width, spec)
    want = left + (np.arange(width) + 0.5) * (w / width) - 0.5
    inside = (want >= 0) & (want <= width - 1)
    assert inside.sum() >= width - 2
    np.testing.assert_allclose(out[0, 0, inside], want[inside], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, :, inside], np.broadcast_to(out[0, 0, inside], (3, height, inside.sum())),
                               rtol=1e-6, atol=1e-5)


def test_layouts_seeding_and_refusals():
    assert image_axes((4, 3, 8, 8)) == (1, 2, 3)
    assert image_axes((4, 8, 8, 3)) == (3, 1, 2)
    assert image_axes((4, 5, 8, 8)) is None and image_axes((4, 10)) is None
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 3)).astype(np.float32)  # NHWC
    a, _ = augment_arrays({"x": x}, None, Augment(rounds=2, seed=3))
    b, _ = augment_arrays({"x": x}, None, Augment(rounds=2, seed=3))
    c, _ = augment_arrays({"x": x}, None, Augment(rounds=2, seed=4))
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (12, 8, 8, 3) and not np.array_equal(a["x"], c["x"])
    with pytest.raises(CalibrationError, match="one image input"):
        augment_arrays({"a": x, "b": x}, None, Augment(rounds=1))
    with pytest.raises(CalibrationError, match="1 or 3 channels"):
        augment_arrays({"x": np.zeros((4, 10), np.float32)}, None, Augment(rounds=1))
    for bad in (dict(rounds=-1), dict(rounds=True), dict(scale=(0.5, 1.5)), dict(flip=2.0), dict(ratio=(2, 1))):
        with pytest.raises(InvalidArgumentError):
            Augment(**bad)


def test_calibration_augmented_and_the_prune_config_path():
    from onnxprune.config import PruneConfig
    from onnxprune.pruning.pipeline import run_pruning

    model = inverted_residual()
    data = np.random.default_rng(2).uniform(0, 1, (20, 3, 8, 8)).astype(np.float32)
    cal = load_calibration({"x": data}, model, batch_size=8)
    aug = cal.augmented(3, seed=1)
    assert len(aug) == 80 and aug.batch_size == 8 and cal.augmented(0) is cal
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in aug.feeds()])[0::4], data)
    with pytest.raises(InvalidArgumentError, match="augment"):
        PruneConfig(augment=-2)
    result = run_pruning(model, None, {"x": data}, PruneConfig(criterion="l1", percentage=30, augment=2, min_fidelity=0))
    assert "60 calibration samples" in result.report.extra["recovery"]


def test_cli_augment_flag(tmp_path, capsys):
    import onnx
    from onnxprune.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(inverted_residual(), str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype(np.uint8))
    out = tmp_path / "o.onnx"
    assert main(["prune", str(model), "-o", str(out), "--calib", str(calib), "--criterion", "l1",
                 "--percentage", "30", "--augment", "2", "--min-fidelity", "0"]) == 0
    assert "48 calibration samples" in capsys.readouterr().out and out.exists()
    code = main(["prune", str(model), "-o", str(tmp_path / "x.onnx"), "--calib", str(calib), "--augment", "-1"])
    err = capsys.readouterr().err
    assert code != 0 and "augment" in err and "Traceback" not in err
