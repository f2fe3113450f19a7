"""Calibration images of another size than the model's are resized, with one warning that says how (as the README says)."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from onnxprune.calibration import ImageFolderReader, Preprocess


def _folder(tmp_path, h: int, w: int):
    for i in range(3):
        Image.fromarray(np.full((h, w), 40 * i, dtype=np.uint8)).save(tmp_path / f"img_{i}.png")
    return tmp_path


def test_other_size_images_are_resized_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    reader = ImageFolderReader(_folder(tmp_path, 36, 40), "input", [None, 1, 28, 28], Preprocess(grayscale=True))
    batch = reader.get_next()
    assert batch["input"].shape == (3, 1, 28, 28)
    notices = [r.getMessage() for r in caplog.records if "are resized" in r.getMessage()]
    assert notices == [f"{tmp_path}: images of 36x40 (the first, img_0.png) are resized (the shorter side, then a "
                       "center crop) to the model's 28x28; --size, --resize and --letterbox choose how"]


def test_images_of_the_models_size_need_no_notice(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    ImageFolderReader(_folder(tmp_path, 28, 28), "input", [None, 1, 28, 28], Preprocess(grayscale=True))
    assert not [r for r in caplog.records if "resized" in r.getMessage()]
