"""Tests of onnxprune.calibration: readers, preprocessing numerics, checks, cache.

Image folders and .npz files are built in tmp_path with Pillow and numpy;
PNG is lossless, so pixel values going in are known exactly. Tests on the
real data in shared/ read it through ONNXPRUNE_SHARED and skip without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image, features

from onnxprune.calibration import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayReader,
    CachedDataset,
    CalibrationDataReader,
    ImageFolderReader,
    IterableReader,
    Preprocess,
    spread_indices,
    RewindableReader,
    ValidatingReader,
    load_arrays,
    model_input_shapes,
    normalize,
    open_calibration,
    preprocess_image,
    validate_batch,
)
from onnxprune.errors import CalibrationError, InvalidArgumentError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", str(REPO.parent / "shared")))
needs_shared = pytest.mark.skipif(
    not (SHARED / "data").is_dir(),
    reason=f"shared data not found at {SHARED} (set ONNXPRUNE_SHARED to the shared/ folder)")

RGB_MODEL = {"input": ("N", 3, 4, 4)}


# ---------------------------------------------------------------- helpers

def solid(color: tuple[int, int, int], size: tuple[int, int] = (4, 4)) -> Image.Image:
    """A (width, height) image of one colour."""
    return Image.new("RGB", size, color)


def write_folder(folder: Path, images: dict[str, Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)
    return folder


def expected_pixel(rgb: tuple[int, int, int], pre: Preprocess) -> np.ndarray:
    """Reference (pixel * scale - mean) / std in float64, channels in model order."""
    values = np.asarray(rgb[::-1] if pre.channel_order == "BGR" else rgb, dtype=np.float64)
    return (values * pre.scale - np.asarray(pre.mean)) / np.asarray(pre.std)


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    """Five solid 4x4 PNGs, deliberately saved out of name order."""
    colours = {"e.png": (50, 60, 70), "a.png": (255, 128, 0), "c.png": (0, 0, 255),
               "b.png": (10, 20, 30), "d.png": (200, 100, 50)}
    return write_folder(tmp_path / "imgs", {k: solid(v) for k, v in colours.items()})


class OrtStyleReader:
    """A reader written for onnxruntime's quantize_static: get_next only, one pass."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


# ---------------------------------------------------------------- Preprocess

def test_preprocess_normalizes_settings():
    pre = Preprocess(size=[8, 6], mean=0.5, std=[0.25], channel_order="bgr", layout="nhwc")
    assert pre.size == (8, 6) and pre.mean == (0.5,) and pre.std == (0.25,)
    assert pre.channel_order == "BGR" and pre.layout == "NHWC" and pre.channels == 3
    assert Preprocess(grayscale=True).channels == 1
    with pytest.raises(Exception):
        pre.scale = 1.0  # frozen


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "crop"}, "Preprocess.mode"),
    ({"std": (0.5, 0.0, 0.5)}, "std must be positive"),
    ({"mean": (0.1, 0.2)}, "give 1 or 3"),
    ({"mean": (0.1, 0.2, 0.3), "grayscale": True}, "give 1 or 1"),
    ({"resize": 256, "mode": "resize"}, "only applies with mode='resize_crop'"),
    ({"resize": 200, "size": (224, 224)}, "use resize >= 224"),
    ({"scale": 0}, "Preprocess.scale"),
    ({"size": (0, 4)}, "Preprocess.size"),
    ({"channel_order": "RGBA"}, "channel_order"),
    ({"layout": "CHW"}, "layout"),
    ({"interpolation": "area"}, "interpolation"),
])
def test_preprocess_rejects_bad_settings(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Preprocess(**kwargs)


def test_normalize_known_pixel_exactly():
    pre = Preprocess(scale=1 / 255, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    out = normalize(np.array([[[[255, 128, 0]]]], dtype=np.uint8), pre)
    assert out.dtype == np.float32 and out.shape == (1, 3, 1, 1)
    # R: (1 - 0.5) / 0.5 = 1; G: (128/255 - 0.25) / 0.25 = 1.007843...; B: (0 - 0) / 2 = 0
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, (128 / 255 - 0.25) / 0.25, 0.0], rtol=1e-6, atol=1e-7)


def test_normalize_bgr_applies_mean_in_model_order():
    pre = Preprocess(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), channel_order="BGR", layout="NHWC")
    out = normalize(np.array([[[[255, 128, 0]]]], dtype=np.uint8), pre)
    assert out.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(out[0, 0, 0], [(0 - 0.1) / 0.5, (128 / 255 - 0.2) / 0.5, (1 - 0.3) / 0.5], rtol=1e-6)


def test_preprocess_image_single_sample():
    pre = Preprocess(size=(4, 4), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    out = preprocess_image(solid((255, 128, 0), (8, 8)), pre)
    assert out.shape == (3, 4, 4)
    np.testing.assert_allclose(out[:, 0, 0], expected_pixel((255, 128, 0), pre), rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match="size"):
        preprocess_image(solid((0, 0, 0)), Preprocess())


# ---------------------------------------------------------------- ImageFolderReader

def test_folder_reader_values_order_batches_and_rewind(colour_folder):
    pre = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    reader = ImageFolderReader(colour_folder, "input", ("N", 3, 4, 4), pre, batch_size=2)
    assert [f.name for f in reader.files] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert len(reader) == 5 and reader.labels is None
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch["input"])
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert all(b.dtype == np.float32 and b.shape[1:] == (3, 4, 4) for b in batches)
    first = batches[0][0]
    np.testing.assert_allclose(first[:, 2, 3], expected_pixel((255, 128, 0), pre), rtol=1e-6)
    assert np.all(first == first[:, :1, :1])  # a solid image stays solid
    np.testing.assert_allclose(batches[2][0][:, 0, 0], expected_pixel((50, 60, 70), pre), rtol=1e-6)
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], batches[0])
    passes = [np.concatenate([b["input"] for b in reader]) for _ in range(2)]  # __iter__ rewinds
    np.testing.assert_array_equal(passes[0], passes[1])
    np.testing.assert_array_equal(passes[0], np.concatenate(batches))


def test_folder_reader_nhwc_bgr_and_grayscale(colour_folder):
    nchw = ImageFolderReader(colour_folder, "x", (None, 3, 4, 4), Preprocess(), batch_size=5).get_next()["x"]
    nhwc = ImageFolderReader(colour_folder, "x", (None, 4, 4, 3), Preprocess(layout="NHWC"),
                             batch_size=5).get_next()["x"]
    assert nhwc.shape == (5, 4, 4, 3)
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    bgr = ImageFolderReader(colour_folder, "x", (None, 3, 4, 4), Preprocess(channel_order="BGR"),
                            batch_size=5).get_next()["x"]
    np.testing.assert_array_equal(bgr, nchw[:, ::-1])
    np.testing.assert_allclose(bgr[0, :, 0, 0], [0.0, 128 / 255, 1.0], rtol=1e-6)
    gray = ImageFolderReader(colour_folder, "x", (None, 1, 4, 4), Preprocess(grayscale=True, mean=0.5, std=0.5),
                             batch_size=5).get_next()["x"]
    assert gray.shape == (5, 1, 4, 4)
    luma = np.asarray(solid((255, 128, 0)).convert("L"))[0, 0]
    np.testing.assert_allclose(gray[0, 0, 0, 0], (luma / 255 - 0.5) / 0.5, rtol=1e-6)


def test_folder_reader_center_crop_and_resize_geometry(tmp_path):
    # Columns hold their own index, so the crop offset can be read back exactly.
    columns = np.tile(np.arange(8, dtype=np.uint8) * 30, (4, 1))
    image = Image.fromarray(np.stack([columns] * 3, axis=-1))  # 8 wide, 4 high
    folder = write_folder(tmp_path / "geo", {"cols.png": image})
    pre = Preprocess(scale=1.0)
    crop = ImageFolderReader(folder, "x", (1, 3, 4, 4), pre).get_next()["x"]
    np.testing.assert_array_equal(crop[0, 0, 0], [60, 90, 120, 150])  # columns 2..5 of 8

    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8))
    folder = write_folder(tmp_path / "big", {"r.png": big})
    got = ImageFolderReader(folder, "x", (1, 3, 6, 6), Preprocess(resize=8, scale=1.0)).get_next()["x"]
    # torchvision: shorter side 10 -> 8, longer 20 -> 16, crop 6x6 at (left 5, top 1)
    ref = np.asarray(big.resize((16, 8), Image.BILINEAR).crop((5, 1, 11, 7)), dtype=np.float32)
    np.testing.assert_array_equal(got[0], ref.transpose(2, 0, 1))
    stretched = ImageFolderReader(folder, "x", (1, 3, 5, 7), Preprocess(mode="resize", scale=1.0)).get_next()["x"]
    ref = np.asarray(big.resize((7, 5), Image.BILINEAR), dtype=np.float32)
    np.testing.assert_array_equal(stretched[0], ref.transpose(2, 0, 1))


def test_folder_reader_reads_all_image_types(tmp_path):
    images = {"a.jpg": solid((9, 9, 9)), "b.JPEG": solid((9, 9, 9)), "c.png": solid((9, 9, 9)),
              "d.bmp": solid((9, 9, 9)), "notes.txt": None}
    if features.check("webp"):
        images["e.webp"] = solid((9, 9, 9))
    folder = tmp_path / "types"
    folder.mkdir()
    for name, image in images.items():
        if image is None:
            (folder / name).write_text("not an image")
        else:
            image.save(folder / name, format={"b.JPEG": "JPEG"}.get(name))
    reader = ImageFolderReader(folder, "x", (None, 3, 4, 4), Preprocess(), batch_size=8)
    assert [f.name for f in reader.files] == [n for n in sorted(images) if n != "notes.txt"]
    assert reader.get_next()["x"].shape == (len(images) - 1, 3, 4, 4)


def test_folder_reader_labels_tsv_order_and_limit(colour_folder):
    (colour_folder / "labels.tsv").write_text(
        "file\tclass_index\tsynset\nd.png\t4\tn4\na.png\t0\tn0\nc.png\t2\tn2\n")
    reader = ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess(), batch_size=2)  # found by default
    assert [f.name for f in reader.files] == ["d.png", "a.png", "c.png"]
    np.testing.assert_array_equal(reader.labels, [4, 0, 2])
    batch, labels = reader.get_next_with_labels()
    np.testing.assert_array_equal(labels, [4, 0])
    np.testing.assert_allclose(batch["x"][1, :, 0, 0], expected_pixel((255, 128, 0), Preprocess()), rtol=1e-6)
    limited = ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess(), labels_file="labels.tsv", limit=2)
    np.testing.assert_array_equal(limited.labels, [4, 2])  # spread over the list: rows 0 and 2 of 3
    assert [f.name for f in limited.files] == ["d.png", "c.png"] and len(limited) == 2


def test_folder_reader_labels_without_header_and_class_folders(tmp_path, colour_folder):
    tsv = tmp_path / "list.tsv"
    tsv.write_text("b.png\t7\ne.png\t3\n")
    reader = ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess(), labels_file=tsv)
    np.testing.assert_array_equal(reader.labels, [7, 3])
    classes = tmp_path / "classes"
    write_folder(classes / "cat", {"1.png": solid((1, 1, 1)), "2.png": solid((2, 2, 2))})
    write_folder(classes / "ant", {"9.png": solid((9, 9, 9))})
    reader = ImageFolderReader(classes, "x", ("N", 3, 4, 4), Preprocess())
    assert [f.parent.name + "/" + f.name for f in reader.files] == ["ant/9.png", "cat/1.png", "cat/2.png"]
    np.testing.assert_array_equal(reader.labels, [0, 1, 1])


@pytest.mark.parametrize("content, message", [
    ("file\tclass_index\nmissing.png\t1\n", "missing.png (line 2), not found"),
    ("file\tclass_index\na.png\tcat\n", "line 2: label 'cat' is not an integer"),
    ("file\tclass_index\na.png\n", "line 2 has 1 tab-separated field"),
    ("file\tclass_index\n", "lists no files"),
    ("", "lists no files"),
])
def test_folder_reader_bad_labels_file(colour_folder, content, message):
    (colour_folder / "labels.tsv").write_text(content)
    with pytest.raises(CalibrationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess())


def test_folder_reader_missing_labels_file(colour_folder):
    with pytest.raises(CalibrationError, match="nope.tsv: labels file not found"):
        ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess(), labels_file="nope.tsv")


def test_folder_reader_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match=r"no images \(\*\.jpg.*the folder is empty"):
        ImageFolderReader(empty, "x", ("N", 3, 4, 4), Preprocess())
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(CalibrationError, match="found 1 other file.*readme.txt"):
        ImageFolderReader(empty, "x", ("N", 3, 4, 4), Preprocess())
    with pytest.raises(CalibrationError, match="no such folder"):
        ImageFolderReader(tmp_path / "absent", "x", ("N", 3, 4, 4), Preprocess())
    with pytest.raises(CalibrationError, match="not a folder"):
        ImageFolderReader(empty / "readme.txt", "x", ("N", 3, 4, 4), Preprocess())


def test_folder_reader_names_corrupt_and_truncated_images(tmp_path):
    folder = write_folder(tmp_path / "bad", {"a_good.png": solid((1, 2, 3))})
    (folder / "b_corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    reader = ImageFolderReader(folder, "x", ("N", 3, 4, 4), Preprocess(), batch_size=1)
    assert reader.get_next()["x"].shape == (1, 3, 4, 4)
    with pytest.raises(CalibrationError, match="b_corrupt.jpg: not a readable image"):
        reader.get_next()
    solid((1, 2, 3), (64, 64)).save(folder / "c_trunc.png")
    data = (folder / "c_trunc.png").read_bytes()
    (folder / "c_trunc.png").write_bytes(data[: len(data) // 2])
    (folder / "b_corrupt.jpg").unlink()
    reader = ImageFolderReader(folder, "x", ("N", 3, 4, 4), Preprocess(), batch_size=2)
    with pytest.raises(CalibrationError, match="c_trunc.png"):
        reader.get_next()


def test_folder_reader_dynamic_size(colour_folder):
    with pytest.raises(CalibrationError, match=r"dynamic height/width: give the image size with Preprocess\(size="):
        ImageFolderReader(colour_folder, "x", ("N", 3, "H", "W"), Preprocess())
    reader = ImageFolderReader(colour_folder, "x", ("N", 3, "H", "W"), Preprocess(size=(2, 6), mode="resize"))
    assert reader.get_next()["x"].shape == (5, 3, 2, 6)
    reader = ImageFolderReader(colour_folder, "x", ("N", 3, 4, "W"), Preprocess(size=(4, 8)))
    assert reader.get_next()["x"].shape == (5, 3, 4, 8)


@pytest.mark.parametrize("shape, pre, message", [
    (("N", 3, 4, 4), Preprocess(size=(8, 8)), r"fixed height of 4 but Preprocess.size is \(8, 8\)"),
    (("N", 1, 4, 4), Preprocess(), "takes 1 channel.*set grayscale=True"),
    (("N", 3, 4, 4), Preprocess(grayscale=True), "takes 3 channel.*set grayscale=False"),
    (("N", 4, 4, 3), Preprocess(), "is NHWC: set layout='NHWC'"),
    (("N", 3, 4, 4), Preprocess(layout="NHWC"), "is NCHW: set layout='NCHW'"),
    (("N", 5, 4, 4), Preprocess(), "takes 5 channels; images give 1"),
    (("N", 3, 4), Preprocess(), "rank 3; images feed rank-4"),
])
def test_folder_reader_shape_mismatches(colour_folder, shape, pre, message):
    with pytest.raises(CalibrationError, match=message):
        ImageFolderReader(colour_folder, "x", shape, pre)


def test_folder_reader_fixed_batch_and_bad_arguments(colour_folder):
    reader = ImageFolderReader(colour_folder, "x", (2, 3, 4, 4), Preprocess())
    sizes = [b["x"].shape[0] for b in reader]
    assert sizes == [2, 2] and len(reader) == 4  # the odd image is skipped, not fed as a batch of 1
    with pytest.raises(InvalidArgumentError,
                       match="fixed batch size of 2: use --batch-size 2 \\(batch_size=2 in Python\\)"):
        ImageFolderReader(colour_folder, "x", (2, 3, 4, 4), Preprocess(), batch_size=3)
    with pytest.raises(CalibrationError, match="fewer than the fixed batch size 8"):
        ImageFolderReader(colour_folder, "x", (8, 3, 4, 4), Preprocess())
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
        ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess(), batch_size=0)
    with pytest.raises(InvalidArgumentError, match="limit must be a positive integer"):
        ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess(), limit=-1)
    with pytest.raises(InvalidArgumentError, match="resize >= 4"):
        ImageFolderReader(colour_folder, "x", ("N", 3, 4, 4), Preprocess(resize=3))


# ---------------------------------------------------------------- ArrayReader and load_arrays

def test_array_reader_float_arrays_batches_labels_rewind():
    data = np.arange(5 * 3 * 2 * 2, dtype=np.float64).reshape(5, 3, 2, 2)
    reader = ArrayReader(data, "x", labels=np.arange(5), batch_size=2)
    assert isinstance(reader, RewindableReader) and len(reader) == 5
    items = []
    while (item := reader.get_next_with_labels()) is not None:
        items.append(item)
    assert [b["x"].shape[0] for b, _ in items] == [2, 2, 1]
    assert all(b["x"].dtype == np.float32 for b, _ in items)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b, _ in items]), data.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in items]), np.arange(5))
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["x"], items[0][0]["x"])
    assert len(ArrayReader(data, "x", limit=3)) == 3


def test_array_reader_uint8_images_match_folder_reader(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 6, 10, 3), dtype=np.uint8)  # NHWC, 10 wide, 6 high
    folder = write_folder(tmp_path / "same", {f"{i}.png": Image.fromarray(im) for i, im in enumerate(images)})
    for pre in (Preprocess(size=(4, 4), mean=IMAGENET_MEAN, std=IMAGENET_STD),
                Preprocess(size=(4, 4), grayscale=True, channel_order="BGR", layout="NHWC"),
                Preprocess(size=(6, 10), mode="resize", mean=0.5, std=0.5, channel_order="BGR")):
        from_arrays = ArrayReader(images, "x", preprocess=pre, batch_size=3).get_next()["x"]
        from_files = ImageFolderReader(folder, "x", ("N", None, None, None), pre, batch_size=3).get_next()["x"]
        np.testing.assert_array_equal(from_arrays, from_files)


def test_array_reader_uint8_layouts_and_numerics():
    pre = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    nhwc = np.zeros((2, 3, 5, 3), dtype=np.uint8)
    nhwc[..., :] = (255, 128, 0)
    out = ArrayReader(nhwc, "x", preprocess=pre).get_next()["x"]
    assert out.shape == (2, 3, 3, 5)  # NCHW, H=3, W=5
    np.testing.assert_allclose(out[0, :, 1, 1], expected_pixel((255, 128, 0), pre), rtol=1e-6)
    stored_nchw = ArrayReader(nhwc.transpose(0, 3, 1, 2), "x", preprocess=pre).get_next()["x"]
    np.testing.assert_array_equal(stored_nchw, out)
    gray = ArrayReader(np.full((2, 3, 5), 51, dtype=np.uint8), "x", preprocess=Preprocess(grayscale=True)).get_next()
    np.testing.assert_allclose(gray["x"], np.full((2, 1, 3, 5), 0.2, dtype=np.float32), rtol=1e-6)
    rgb_from_gray = ArrayReader(np.full((1, 2, 2, 1), 51, dtype=np.uint8), "x", preprocess=Preprocess()).get_next()
    assert rgb_from_gray["x"].shape == (1, 3, 2, 2)


def test_array_reader_dict_inputs_and_default_preprocess_warning(caplog):
    reader = ArrayReader({"a": np.ones((4, 2), np.float32), "b": np.zeros((4, 3))}, batch_size=3)
    batch = reader.get_next()
    assert batch["a"].shape == (3, 2) and batch["b"].dtype == np.float32
    with caplog.at_level(logging.WARNING):
        out = ArrayReader(np.full((1, 2, 2, 3), 255, np.uint8), "x").get_next()["x"]
    assert "without a Preprocess" in caplog.text
    np.testing.assert_allclose(out, np.ones((1, 3, 2, 2)), rtol=1e-6)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ArrayReader(np.zeros((4, 2)), "x", labels=np.zeros(3)), CalibrationError, "3 labels for 4 samples"),
    (lambda: ArrayReader({"a": np.zeros((4, 2)), "b": np.zeros((3, 2))}), CalibrationError,
     "different numbers of samples"),
    (lambda: ArrayReader(np.zeros((4, 2)), "x", preprocess=Preprocess()), InvalidArgumentError,
     "preprocess applies to uint8 image arrays"),
    (lambda: ArrayReader(np.zeros((4, 2))), InvalidArgumentError, "needs input_name"),
    (lambda: ArrayReader({"a": np.zeros((4, 2))}, "a"), InvalidArgumentError, "a dict already names"),
    (lambda: ArrayReader(np.zeros((4, 8, 8, 3), np.int64), "x"), CalibrationError, "must be uint8"),
    (lambda: ArrayReader(np.zeros((4, 8, 8, 5), np.uint8), "x"), CalibrationError, r"\[N, H, W, 3\]"),
    (lambda: ArrayReader(np.zeros((0, 3)), "x"), CalibrationError, "no samples"),
    (lambda: ArrayReader(np.array(["a", "b"]), "x"), CalibrationError, "expected float32 or uint8"),
])
def test_array_reader_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_load_arrays_npz_npy_keys_and_errors(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "cifar.npz", images=images, labels=np.arange(4))
    arrays, labels = load_arrays(tmp_path / "cifar.npz")
    assert arrays.shape == (4, 8, 8, 3) and list(labels) == [0, 1, 2, 3]
    np.savez(tmp_path / "xy.npz", x=np.ones((2, 3), np.float32), y=np.array([5, 6]))
    arrays, labels = load_arrays(tmp_path / "xy.npz")
    assert arrays.shape == (2, 3) and list(labels) == [5, 6]
    np.savez(tmp_path / "single.npz", data=np.ones((2, 3)))
    assert load_arrays(tmp_path / "single.npz")[0].shape == (2, 3)
    np.savez(tmp_path / "multi.npz", a=np.ones((2, 1)), b=np.zeros((2, 2)), labels=np.arange(2))
    arrays, labels = load_arrays(tmp_path / "multi.npz", ["a", "b"])
    assert set(arrays) == {"a", "b"} and list(labels) == [0, 1]
    with pytest.raises(CalibrationError, match="cannot tell which array.*keys: a, b, labels"):
        load_arrays(tmp_path / "multi.npz")
    with pytest.raises(CalibrationError, match="not for 'c'"):
        load_arrays(tmp_path / "multi.npz", ["a", "c"])
    np.save(tmp_path / "plain.npy", np.ones((3, 2)))
    arrays, labels = load_arrays(tmp_path / "plain.npy")
    assert arrays.shape == (3, 2) and labels is None
    with pytest.raises(CalibrationError, match="absent.npz: no such file"):
        load_arrays(tmp_path / "absent.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(CalibrationError, match="broken.npz: cannot be read"):
        load_arrays(tmp_path / "broken.npz")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(CalibrationError, match="expected a .npy or .npz"):
        load_arrays(tmp_path / "data.csv")


# ---------------------------------------------------------------- IterableReader

def test_iterable_reader_list_generator_and_labels():
    batches = [{"x": np.ones((2, 3), np.float32)}, ({"x": np.zeros((1, 3), np.float32)}, [7])]
    reader = IterableReader(batches)
    assert reader.can_rewind
    assert reader.get_next_with_labels()[1] is None
    second = reader.get_next_with_labels()
    assert second[0]["x"].shape == (1, 3) and list(second[1]) == [7]
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["x"].shape == (2, 3)

    once = IterableReader(b for b in [{"x": np.ones((1, 3), np.float32)}])
    assert not once.can_rewind and once.get_next() is not None
    with pytest.raises(CalibrationError, match="can be read only once.*CachedDataset"):
        once.rewind()
    with pytest.raises(CalibrationError, match="item 0 is a int"):
        IterableReader([3]).get_next()
    with pytest.raises(InvalidArgumentError, match="use ArrayReader"):
        IterableReader({"x": np.ones(2)})


# ---------------------------------------------------------------- validate_batch

def good_batch(shape=(2, 3, 4, 4)) -> dict[str, np.ndarray]:
    return {"input": np.zeros(shape, np.float32)}


def with_nan() -> dict[str, np.ndarray]:
    batch = good_batch()
    batch["input"][1, 0, 0, 0] = np.nan
    batch["input"][1, 1, 0, 0] = np.inf
    return batch


@pytest.mark.parametrize("batch, model, message", [
    ({"images": np.zeros((2, 3, 4, 4), np.float32)}, RGB_MODEL,
     "the data has input 'images' but the model's input is 'input' \\[N, 3, 4, 4\\]"),
    ({"input": np.zeros((2, 3, 4, 4), np.float32), "extra": np.zeros(2, np.float32)}, RGB_MODEL,
     "no input named 'extra'"),
    (good_batch(), {"input": ("N", 3, 4, 4), "mask": ("N", 1)}, "no value for model input 'mask'"),
    (good_batch((3, 4, 4)), RGB_MODEL, "rank 3.*expected rank 4.*array\\[None\\]"),
    (good_batch((2, 4, 4, 4)), RGB_MODEL, "wrong channels \\(4 instead of 3\\)"),
    (good_batch((2, 4, 4, 3)), {"input": ("N", 3, 4, 4)}, "wrong channels.*looks channels-last.*layout='NCHW'"),
    (good_batch((2, 3, 4, 4)), {"input": ("N", 1, 4, 4)}, "wrong channels \\(3 instead of 1\\).*grayscale=True"),
    (good_batch((2, 3, 5, 4)), RGB_MODEL, "wrong height \\(5 instead of 4\\)"),
    (good_batch((2, 3, 4, 6)), RGB_MODEL, "wrong width \\(6 instead of 4\\)"),
    (good_batch((2, 3, 4, 4)), {"input": (1, 3, 4, 4)},
     "fixed batch size of 1: use --batch-size 1 \\(batch_size=1 in Python\\)"),
    (with_nan(), RGB_MODEL, "2 NaN/Inf value\\(s\\) \\(first in sample 1"),
    ({"input": np.zeros((2, 3, 4, 4), np.uint8)}, RGB_MODEL, "dtype uint8, expected float32.*Preprocess"),
    ({"input": np.zeros((2, 3, 4, 4), np.float64)}, RGB_MODEL, "dtype float64.*astype\\(np.float32\\)"),
    ({"input": [[1.0]]}, RGB_MODEL, "is a list, expected a numpy array"),
    (good_batch((0, 3, 4, 4)), RGB_MODEL, "empty batch"),
    ([np.zeros(3)], RGB_MODEL, "a batch must be a dict"),
    ({"a": np.zeros((2, 1), np.float32), "b": np.zeros((3, 1), np.float32)}, {"a": ("N", 1), "b": ("N", 1)},
     "disagree on the batch size"),
])
def test_validate_batch_errors_name_source_and_expectation(batch, model, message):
    with pytest.raises(CalibrationError, match="^calib.npz: .*" + message):
        validate_batch(batch, model, "calib.npz")


def test_validate_batch_accepts_dynamic_and_unknown_dims():
    validate_batch(good_batch((5, 3, 9, 7)), {"input": (None, 3, "H", "W")}, "x")
    validate_batch(good_batch((5, 2)), {"input": None}, "x")
    validate_batch(good_batch(), RGB_MODEL)


def tiny_model() -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv(w) -> y; w is an initializer listed as an input too."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1], np.ones(6, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_input_shapes_from_proto_and_session():
    model = tiny_model()
    assert model_input_shapes(model) == {"x": ("N", 3, 8, 8)}
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert model_input_shapes(session)["x"] == ("N", 3, 8, 8)


# ---------------------------------------------------------------- open_calibration and ValidatingReader

def test_open_calibration_folder(colour_folder):
    (colour_folder / "labels.tsv").write_text("file\tclass_index\na.png\t1\nb.png\t2\nc.png\t3\n")
    reader = open_calibration(colour_folder, RGB_MODEL, Preprocess(), batch_size=2, limit=3)
    assert isinstance(reader, ValidatingReader) and reader.can_rewind
    np.testing.assert_array_equal(reader.labels, [1, 2, 3])
    assert reader.num_samples == 3
    got = [item for item in iter(reader.get_next_with_labels, None)]
    assert [b["input"].shape[0] for b, _ in got] == [2, 1]
    np.testing.assert_array_equal(got[1][1], [3])
    reader.rewind()
    assert reader.get_next()["input"].shape == (2, 3, 4, 4)


def test_open_calibration_npz_resizes_to_model_and_keeps_labels(tmp_path):
    images = np.zeros((5, 8, 8, 3), np.uint8)
    images[..., 0] = 255
    np.savez(tmp_path / "calib.npz", images=images, labels=np.arange(5))
    pre = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    cache = CachedDataset(open_calibration(tmp_path / "calib.npz", RGB_MODEL, pre, batch_size=2))
    assert len(cache) == 5 and cache.inputs["input"].shape == (5, 3, 4, 4)
    np.testing.assert_array_equal(cache.labels, np.arange(5))
    np.testing.assert_allclose(cache.inputs["input"][0, :, 0, 0], expected_pixel((255, 0, 0), pre), rtol=1e-6)


def test_open_calibration_npy_arrays_readers_iterables(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((6, 3, 4, 4), np.float32))
    assert open_calibration(str(tmp_path / "x.npy"), RGB_MODEL, limit=4).get_next()["input"].shape == (4, 3, 4, 4)
    assert open_calibration(np.zeros((3, 3, 4, 4)), RGB_MODEL).get_next()["input"].dtype == np.float32
    data = [{"input": np.full((4, 3, 4, 4), i, np.float32)} for i in range(3)]
    reader = open_calibration(OrtStyleReader(data), RGB_MODEL, limit=6)
    assert [b["input"].shape[0] for b in iter(reader.get_next, None)] == [4, 2]
    assert not reader.can_rewind
    with pytest.raises(CalibrationError, match="no rewind\\(\\).*CachedDataset"):
        reader.rewind()
    reader = open_calibration(iter(data), RGB_MODEL)
    assert sum(b["input"].shape[0] for b in iter(reader.get_next, None)) == 12


def test_open_calibration_reports_bad_data_with_sample_range(tmp_path):
    data = np.zeros((6, 3, 4, 4), np.float32)
    data[4, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", data)
    reader = open_calibration(tmp_path / "nan.npy", RGB_MODEL, batch_size=3)
    reader.get_next()
    with pytest.raises(CalibrationError, match=r"nan.npy \(samples 3-5\): input 'input' has 1 NaN/Inf"):
        reader.get_next()
    np.save(tmp_path / "hwc.npy", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(CalibrationError, match="hwc.npy.*layout='NCHW'"):
        open_calibration(tmp_path / "hwc.npy", RGB_MODEL).get_next()
    wrong = OrtStyleReader([{"images": np.zeros((1, 3, 4, 4), np.float32)}])
    with pytest.raises(CalibrationError, match="OrtStyleReader.*'images' but the model's input is 'input'"):
        open_calibration(wrong, RGB_MODEL).get_next()


@pytest.mark.parametrize("source, model, kwargs, error, message", [
    ("absent_dir", RGB_MODEL, {}, CalibrationError, "no such file or folder"),
    ("notes.txt", RGB_MODEL, {}, CalibrationError, "unsupported calibration file"),
    (".", {"a": ("N", 3, 4, 4), "b": ("N", 3, 4, 4)}, {}, CalibrationError, "an image folder feeds one input"),
    (OrtStyleReader([]), RGB_MODEL, {"preprocess": Preprocess()}, InvalidArgumentError, "preprocess applies"),
    (42, RGB_MODEL, {}, InvalidArgumentError, "got int"),
    (".", {"input": (1, 3, 4, 4)}, {"batch_size": 4}, InvalidArgumentError, "fixed batch size of 1"),
    (".", RGB_MODEL, {"batch_size": 0}, InvalidArgumentError, "batch_size must be a positive integer"),
    (".", {}, {}, InvalidArgumentError, "model_inputs must be a non-empty dict"),
    (np.zeros((2, 3, 4, 4), np.float32), {"a": ("N", 3, 4, 4), "b": ("N",)}, {}, CalibrationError,
     "one array for a model with 2 inputs"),
])
def test_open_calibration_errors(tmp_path, monkeypatch, source, model, kwargs, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(error, match=message):
        open_calibration(source, model, **kwargs)


def test_onnxruntime_reader_is_accepted_unchanged():
    quantization = pytest.importorskip("onnxruntime.quantization")

    class QuantReader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.data = iter([{"input": np.ones((2, 3, 4, 4), np.float32)}] * 2)

        def get_next(self):
            return next(self.data, None)

    reader = QuantReader()
    assert isinstance(reader, CalibrationDataReader)
    cache = CachedDataset(open_calibration(reader, RGB_MODEL))
    assert len(cache) == 4 and cache.labels is None
    assert [b["input"].shape[0] for b in cache.batches(3)] == [3, 1]


# ---------------------------------------------------------------- CachedDataset

def test_cached_dataset_many_passes_rebatching_and_labels():
    data = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    cache = CachedDataset(ArrayReader(data, "x", labels=np.arange(10) * 10, batch_size=4))
    assert len(cache) == 10 and cache.num_samples == 10 and cache.input_names == ["x"]
    assert cache.nbytes == data.nbytes + 10 * 8 and cache.batch_size == 4
    for batch_size in (None, 3, 4, 10, 32):
        passes = [list(cache.batches(batch_size)) for _ in range(2)]
        for one in passes:
            np.testing.assert_array_equal(np.concatenate([b["x"] for b in one]), data)
        assert [b["x"].shape[0] for b in passes[0]] == [b["x"].shape[0] for b in passes[1]]
    assert [b["x"].shape[0] for b in cache.batches(3, drop_last=True)] == [3, 3, 3]
    labels = np.concatenate([lab for _, lab in cache.batches_with_labels(3)])
    np.testing.assert_array_equal(labels, np.arange(10) * 10)
    np.testing.assert_array_equal(cache.labels, np.arange(10) * 10)
    np.testing.assert_array_equal(cache.inputs["x"], data)
    assert [b["x"].shape[0] for b in cache.batches()] == [4, 4, 2]  # after merging too
    assert isinstance(cache, RewindableReader)
    first = [b["x"].copy() for b in iter(cache.get_next, None)]
    cache.rewind()
    second = [b["x"] for b in iter(cache.get_next, None)]
    assert len(first) == 3 and all(np.array_equal(a, b) for a, b in zip(first, second))
    assert sum(b["x"].shape[0] for b in cache) == 10


def test_cached_dataset_copies_reused_buffers_and_reads_one_shot_readers():
    buffer = np.zeros((2, 3), np.float32)

    def reuse():
        for value in range(3):
            buffer[:] = value
            yield {"x": buffer}

    cache = CachedDataset(IterableReader(reuse()), limit=5)
    assert len(cache) == 5
    np.testing.assert_array_equal(cache.inputs["x"][:, 0], [0, 0, 1, 1, 2])
    for _ in range(3):  # a one-shot generator, replayed
        assert sum(b["x"].shape[0] for b in cache.batches(2)) == 5


def test_cached_dataset_budget_error_says_how_to_fit():
    reader = ArrayReader(np.zeros((100, 3, 8, 8), np.float32), "x", batch_size=10)  # 768 bytes per sample
    with pytest.raises(CalibrationError) as info:
        CachedDataset(reader, max_bytes=20_000)
    message = str(info.value)
    assert "exceeds the cache budget of 19.5 KiB" in message and "max_bytes=20000" in message
    assert "after 30 samples" in message and "768 B per sample" in message
    assert "max_bytes=76800 for all 100 samples" in message and "limit=26 fits" in message
    reader.rewind()
    assert len(CachedDataset(reader, max_bytes=20_000, limit=26)) == 26
    with pytest.raises(InvalidArgumentError, match="max_bytes must be a positive"):
        CachedDataset(reader, max_bytes=0)


@pytest.mark.parametrize("batches, message", [
    ([], "gave no batches.*rewind"),
    ([{"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))}], "input 'x' has samples of shape \\[4\\].*Preprocess\\(size"),
    ([{"x": np.zeros((2, 3))}, {"y": np.zeros((2, 3))}], "batch 1 has inputs \\['y'\\], but batch 0 had \\['x'\\]"),
    ([({"x": np.zeros((2, 3))}, [1, 2]), {"x": np.zeros((2, 3))}], "batch 1 lacks labels"),
    ([({"x": np.zeros((2, 3))}, [1])], "1 labels for 2 samples"),
    ([{"x": np.zeros((2, 3)), "y": np.zeros((1, 3))}], "disagree on the batch size"),
    (["not a dict"], "item 0 is a str"),
])
def test_cached_dataset_rejects_unstackable_data(batches, message):
    with pytest.raises(CalibrationError, match=message):
        CachedDataset(IterableReader(batches))


# ---------------------------------------------------------------- real data in shared/

@needs_shared
def test_shared_cifar10_npz_feeds_resnet_preprocessing():
    path = SHARED / "data" / "cifar10_calib.npz"
    pre = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    cache = CachedDataset(open_calibration(path, {"input": ("N", 3, 32, 32)}, pre, batch_size=100, limit=300))
    raw = np.load(path)
    rows = spread_indices(len(raw["labels"]), 300)  # spread over the file, not its first 300 rows
    assert len(cache) == 300 and cache.inputs["input"].shape == (300, 3, 32, 32)
    np.testing.assert_array_equal(cache.labels, raw["labels"][rows])
    np.testing.assert_allclose(cache.inputs["input"][7, :, 5, 9],
                               expected_pixel(tuple(raw["images"][rows[7], 5, 9]), pre), rtol=1e-5, atol=1e-6)
    model = SHARED / "models" / "resnet20_cifar10.onnx"
    ort = pytest.importorskip("onnxruntime")
    if not model.is_file():
        pytest.skip(f"{model} not found")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    hits = sum(int((session.run(None, b)[0].argmax(1) == lab).sum()) for b, lab in cache.batches_with_labels(100))
    assert hits / len(cache) > 0.7  # pretrained ResNet-20 on its training images: preprocessing is right


@needs_shared
def test_shared_imagenet_dev_folder_follows_labels_tsv():
    folder = SHARED / "data" / "imagenet_dev"
    pre = Preprocess(resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    reader = open_calibration(folder, {"input": ("batch", 3, 224, 224)}, pre, batch_size=4, limit=8)
    listed = [line.split("\t")[0] for line in (folder / "labels.tsv").read_text().splitlines()[1:]]
    assert [f.name for f in reader.reader.files] == [listed[i] for i in spread_indices(len(listed), 8)]
    batch, labels = reader.get_next_with_labels()
    assert batch["input"].shape == (4, 3, 224, 224) and batch["input"].dtype == np.float32
    np.testing.assert_array_equal(labels, [62, 186, 312, 436])  # files 31, 93, 156, 218 of 500, one per class
    assert -2.2 < batch["input"].min() < batch["input"].max() < 2.7


def test_spread_indices_are_even_increasing_and_complete():
    np.testing.assert_array_equal(spread_indices(10, 4), [1, 3, 6, 8])
    np.testing.assert_array_equal(spread_indices(5, None), np.arange(5))
    np.testing.assert_array_equal(spread_indices(5, 9), np.arange(5))
    for total, count in ((1000, 256), (5000, 2000), (7, 6), (500, 250)):
        rows = spread_indices(total, count)
        assert len(rows) == count and rows[0] >= 0 and rows[-1] < total and (np.diff(rows) >= 1).all()


def test_limit_of_a_class_sorted_file_covers_every_class(tmp_path):
    """--calib-limit on a class-sorted .npz: 40 of 500 rows, 4 of each of the 10 classes (first rows: class 0 only)."""
    path = tmp_path / "sorted.npz"
    labels = np.repeat(np.arange(10), 50)
    images = np.broadcast_to(labels[:, None, None, None].astype(np.uint8), (500, 4, 4, 3))
    np.savez(path, images=images, labels=labels)
    cache = CachedDataset(open_calibration(path, RGB_MODEL, Preprocess(scale=1.0), batch_size=16, limit=40))
    assert len(cache) == 40
    np.testing.assert_array_equal(np.bincount(cache.labels, minlength=10), [4] * 10)
    np.testing.assert_array_equal(cache.inputs["input"][:, 0, 0, 0], cache.labels)  # pixels travel with labels


def test_integer_inputs_of_a_text_model_pass_unchanged():
    """Token ids and masks (int64 model inputs) are model inputs, never images; int32 ids are cast to the model's."""
    from onnxprune.calibration.dataset import load_calibration
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 5])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", 5])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 5])
    model = helper.make_model(helper.make_graph([helper.make_node("Mul", ["input_ids", "attention_mask"], ["y"])],
                                                "text", [ids, mask], [out]), opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30000, (6, 5)).astype(np.int32), "attention_mask": np.ones((6, 5), np.int64)}
    cal = load_calibration(feeds, model, batch_size=4)
    (first, _), (second, _) = cal.batches()
    assert first["input_ids"].dtype == np.int64 and first["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([first["input_ids"], second["input_ids"]]), feeds["input_ids"])
    fit, held = cal.split(2)  # rows held back for the fidelity judge stay token ids
    (ids_held, _), = held.batches()
    np.testing.assert_array_equal(ids_held["input_ids"], feeds["input_ids"][[0, 5]])
    assert len(fit) == 4 and ids_held["input_ids"].dtype == np.int64
