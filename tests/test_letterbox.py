"""Letterbox preprocessing: aspect ratio kept, grey 114 padding, pixel-exact against a reference written here."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxprune.calibration import ImageFolderReader, Preprocess, load_calibration
from onnxprune.cli import build_parser
from onnxprune.cli.args import _preprocess
from onnxprune.errors import CalibrationError, InvalidArgumentError

SIZES = {"wide.png": (37, 20), "tall.png": (15, 41), "square.png": (32, 32), "small.png": (5, 3)}  # (w, h)


def _reference(image: Image.Image, height: int, width: int, center: bool) -> np.ndarray:
    """Ultralytics' geometry with numpy: scale r = min(H/h, W/w), sides int(round(.)), grey 114 around."""
    w, h = image.size
    r = min(height / h, width / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    pixels = np.asarray(image.resize((nw, nh), Image.BILINEAR) if (nw, nh) != (w, h) else image)
    out = np.full((height, width, 3), 114, dtype=np.uint8)
    top = int(round((height - nh) / 2 - 0.1)) if center else 0
    left = int(round((width - nw) / 2 - 0.1)) if center else 0
    out[top:top + nh, left:left + nw] = pixels
    return out


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("place", ["bottom-right", "center"])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_letterbox_is_pixel_exact_against_the_reference(folder, place, size):
    pre = Preprocess(size=size, letterbox=place, scale=1.0, layout="NHWC")  # float values = the pixels
    reader = ImageFolderReader(folder, "x", ("N", size[0], size[1], 3), pre, batch_size=8)
    batch = reader.get_next()["x"]
    for i, path in enumerate(reader.files):
        with Image.open(path) as image:
            want = _reference(image.convert("RGB"), *size, center=place == "center")
        np.testing.assert_array_equal(batch[i], want.astype(np.float32), err_msg=path.name)


def test_bottom_right_and_center_place_the_image_differently(folder):
    bottom = ImageFolderReader(folder, "x", ("N", 3, 32, 32), Preprocess(letterbox=True, scale=1.0), batch_size=8)
    center = ImageFolderReader(folder, "x", ("N", 3, 32, 32), Preprocess(letterbox="center", scale=1.0),
                               batch_size=8)
    names = [f.name for f in bottom.files]
    a, b = bottom.get_next()["x"], center.get_next()["x"]
    wide = names.index("wide.png")  # 37x20 -> 32x17: 15 grey rows, all below / 7 above and 8 below
    assert (a[wide, :, 17:] == 114).all() and not (a[wide, :, 16] == 114).all()
    assert (b[wide, :, :7] == 114).all() and (b[wide, :, 24:] == 114).all() and not (b[wide, :, 7] == 114).all()
    square = names.index("square.png")
    np.testing.assert_array_equal(a[square], b[square])  # nothing to pad


def test_letterbox_setting_and_cli_flag():
    assert Preprocess(letterbox=True).letterbox == "bottom-right"
    assert Preprocess(letterbox="CENTER").letterbox == "center"
    assert Preprocess(letterbox=False).letterbox is None
    with pytest.raises(InvalidArgumentError, match="letterbox must be True, 'bottom-right' or 'center'"):
        Preprocess(letterbox="top")
    with pytest.raises(InvalidArgumentError, match="does not apply with letterbox"):
        Preprocess(letterbox=True, resize=256)
    parser = build_parser()
    for flags, want in ((["--letterbox"], "bottom-right"), (["--letterbox", "center"], "center"), ([], None)):
        args = parser.parse_args(["prune", "m.onnx", "-o", "o.onnx", "--size", "8x8", *flags])
        assert _preprocess(args).letterbox == want


def _dynamic_model(imgsz: str | None) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["y"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if imgsz is not None:
        helper.set_model_props(model, {"imgsz": imgsz, "stride": "32"})
    return model


def test_metadata_imgsz_is_the_default_size_of_a_folder(folder):
    cal = load_calibration(folder, _dynamic_model("[24, 40]"), preprocess=Preprocess(letterbox=True), batch_size=2)
    assert cal.dataset.inputs["images"].shape == (4, 3, 24, 40)
    given = load_calibration(folder, _dynamic_model("[24, 40]"), preprocess=Preprocess(size=(16, 16)))
    assert given.dataset.inputs["images"].shape == (4, 3, 16, 16)  # --size wins
    with pytest.raises(CalibrationError, match="dynamic height/width: give the image size"):
        load_calibration(folder, _dynamic_model(None), preprocess=Preprocess(letterbox=True))
