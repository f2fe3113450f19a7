"""Reading calibration images from a folder, with optional labels.

Files are read in sorted name order, or in the order a labels TSV lists them
(``file<TAB>class_index<TAB>...`` with a header line), so a run is
reproducible; a ``limit`` of N takes N files spread evenly over that list
(a class-sorted folder gives every class, not the first few). A
folder of class sub-folders (torchvision's ImageFolder layout) is read too,
labelled by the sorted sub-folder index. Images are decoded one batch at a
time; only the batch being served is in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import CalibrationError, InvalidArgumentError
from .preprocess import IMAGE_EXTENSIONS, Preprocess, load_image, normalize
from .readers import DEFAULT_BATCH_SIZE, BatchReader, LabelledBatch, _check_positive, spread_indices
from .validate import Dims, format_dims, guess_layout, is_static

logger = logging.getLogger(__name__)

DEFAULT_LABELS_FILE = "labels.tsv"
_FILE_COLUMNS = ("file", "filename", "path", "image")
_LABEL_COLUMNS = ("class_index", "label", "class", "target")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def image_geometry(input_name: str, input_shape: Sequence[Union[int, str, None]], preprocess: Preprocess,
                   source: str) -> tuple[tuple[int, int], int]:
    """The (height, width) and channel count images must have to feed ``input_shape``.

    Static dims of the model win; dynamic ones come from ``preprocess.size``;
    disagreements and missing sizes raise with the setting to change.
    """
    dims: Dims = tuple(input_shape)
    where = f"{source}: model input '{input_name}' {format_dims(dims)}"
    if len(dims) != 4:
        raise CalibrationError(f"{where} has rank {len(dims)}; images feed rank-4 inputs (NCHW or NHWC)")
    if preprocess.layout == "NCHW":
        channels, height, width = dims[1], dims[2], dims[3]
    else:
        height, width, channels = dims[1], dims[2], dims[3]
    guessed = guess_layout(dims)
    if guessed is not None and guessed != preprocess.layout and not (is_static(channels) and channels in (1, 3)):
        raise CalibrationError(f"{where} is {guessed}: set layout='{guessed}' in Preprocess "
                               f"({'--nhwc' if guessed == 'NHWC' else 'no --nhwc'} on the command line)")
    if is_static(channels):
        if channels not in (1, 3):
            raise CalibrationError(f"{where} takes {channels} channels; images give 1 (grayscale) or 3")
        if channels != preprocess.channels:
            flag = "True" if channels == 1 else "False"
            raise CalibrationError(
                f"{where} takes {channels} channel(s) but the Preprocess gives {preprocess.channels}: "
                f"set grayscale={flag} ({'--grayscale' if channels == 1 else 'no --grayscale'} on the command line)")
    static_hw = (int(height) if is_static(height) else None, int(width) if is_static(width) else None)
    if preprocess.size is not None:
        for axis, want, got in (("height", static_hw[0], preprocess.size[0]), ("width", static_hw[1], preprocess.size[1])):
            if want is not None and want != got:
                raise CalibrationError(
                    f"{where} has a fixed {axis} of {want} but Preprocess.size is {preprocess.size}: "
                    f"set size=({static_hw[0] or preprocess.size[0]}, {static_hw[1] or preprocess.size[1]}) or leave it None")
        size = preprocess.size
    elif static_hw[0] is not None and static_hw[1] is not None:
        size = (static_hw[0], static_hw[1])
    else:
        raise CalibrationError(
            f"{where} has a dynamic height/width: give the image size with Preprocess(size=(height, width)), "
            "e.g. size=(224, 224) (OCR detectors: multiples of 32 such as (640, 640))")
    if preprocess.resize is not None and preprocess.mode == "resize_crop" and preprocess.resize < max(size):
        raise InvalidArgumentError(
            f"Preprocess.resize={preprocess.resize} is smaller than the {size[0]}x{size[1]} crop: "
            f"use resize >= {max(size)}, or mode='resize'")
    return size, preprocess.channels


def read_labels_file(labels_file: Union[str, os.PathLike], folder: Union[str, os.PathLike]) -> tuple[list[Path], Optional[np.ndarray]]:
    """Files and labels listed in a TSV (``file<TAB>class_index<TAB>...``), header line optional.

    Without a header the first column is the file and the second, when
    present, the integer label. Every listed file must exist in ``folder``.
    """
    path, folder = Path(labels_file), Path(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read the labels file ({exc})") from None
    rows = [(number, line.rstrip("\r").split("\t")) for number, line in enumerate(text.split("\n"), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise CalibrationError(f"{path}: the labels file lists no files")
    header = [field.strip().lower() for field in rows[0][1]]
    file_col, label_col = 0, None
    if any(name in header for name in _FILE_COLUMNS):
        file_col = next(header.index(name) for name in _FILE_COLUMNS if name in header)
        label_col = next((header.index(name) for name in _LABEL_COLUMNS if name in header), None)
        rows = rows[1:]
        if not rows:
            raise CalibrationError(f"{path}: the labels file has a header but lists no files")
    elif len(rows[0][1]) > 1:
        label_col = 1
    needed = max(file_col, label_col if label_col is not None else 0) + 1
    files: list[Path] = []
    labels: list[int] = []
    missing: list[str] = []
    for number, fields in rows:
        if len(fields) < needed:
            raise CalibrationError(
                f"{path}: line {number} has {len(fields)} tab-separated field(s), expected at least {needed} "
                "(file<TAB>class_index)")
        name = fields[file_col].strip()
        file = folder / name
        if not file.is_file():
            missing.append(f"{name} (line {number})")
        files.append(file)
        if label_col is not None:
            value = fields[label_col].strip()
            try:
                labels.append(int(value))
            except ValueError:
                raise CalibrationError(f"{path}: line {number}: label {value!r} is not an integer") from None
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CalibrationError(f"{path}: lists {missing[0]}{more}, not found in {folder}")
    return files, (np.asarray(labels, dtype=np.int64) if label_col is not None else None)


def find_images(folder: Union[str, os.PathLike]) -> tuple[list[Path], Optional[np.ndarray]]:
    """Image files of a folder in sorted order; class sub-folders give labels (ImageFolder layout)."""
    folder = Path(folder)
    entries = sorted(folder.iterdir())
    files = [p for p in entries if _is_image(p)]
    if files:
        return files, None
    classes = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    labelled: list[Path] = []
    labels: list[int] = []
    for index, sub in enumerate(classes):
        inside = sorted(p for p in sub.iterdir() if _is_image(p))
        labelled.extend(inside)
        labels.extend([index] * len(inside))
    if labelled:
        logger.info("%s: %d images in %d class folders, labelled by sorted folder index",
                    folder, len(labelled), len(classes))
        return labelled, np.asarray(labels, dtype=np.int64)
    others = [p.name for p in entries if p.is_file()]
    found = f"; found {len(others)} other file(s), e.g. {others[0]}" if others else " (the folder is empty)"
    raise CalibrationError(
        f"{folder}: no images ({', '.join('*' + e for e in IMAGE_EXTENSIONS)}){found}")


class ImageFolderReader(BatchReader):
    """Batches of preprocessed images from a folder, for one model input.

    ``input_shape`` is the model input's dims (ints, or None/names for
    dynamic axes); images are resized to its height/width, or to
    ``preprocess.size`` where those are dynamic. ``labels_file`` (default:
    ``labels.tsv`` in the folder, when present) fixes the files, their order
    and their labels. ``batch_size`` None means the model's fixed batch size,
    or 32.
    """

    def __init__(self, folder: Union[str, os.PathLike], input_name: str,
                 input_shape: Sequence[Union[int, str, None]], preprocess: Preprocess,
                 batch_size: Optional[int] = None, limit: Optional[int] = None,
                 labels_file: Union[str, os.PathLike, None] = None, *, drop_last: bool = False) -> None:
        folder = Path(folder)
        source = str(folder)
        if not isinstance(preprocess, Preprocess):
            raise InvalidArgumentError(f"preprocess must be a Preprocess, got {type(preprocess).__name__}")
        limit = _check_positive("limit", limit)
        batch_size = _check_positive("batch_size", batch_size)
        if not folder.exists():
            raise CalibrationError(f"{folder}: no such folder")
        if not folder.is_dir():
            raise CalibrationError(f"{folder}: not a folder (give a folder of images, or a .npy/.npz file)")
        self.size, self.channels = image_geometry(input_name, input_shape, preprocess, source)
        fixed_batch = input_shape[0] if input_shape and is_static(input_shape[0]) else None
        if fixed_batch is not None and batch_size is not None and batch_size != fixed_batch:
            raise InvalidArgumentError(
                f"model input '{input_name}' has a fixed batch size of {fixed_batch}: use --batch-size {fixed_batch} "
                f"(batch_size={fixed_batch} in Python)")
        if labels_file is not None:
            labels_path = Path(labels_file)
            if not labels_path.exists() and not labels_path.is_absolute() and (folder / labels_path).exists():
                labels_path = folder / labels_path
            if not labels_path.exists():
                raise CalibrationError(f"{labels_path}: labels file not found")
            files, labels = read_labels_file(labels_path, folder)
        elif (folder / DEFAULT_LABELS_FILE).is_file():
            logger.info("%s: reading files and labels from %s", folder, DEFAULT_LABELS_FILE)
            files, labels = read_labels_file(folder / DEFAULT_LABELS_FILE, folder)
        else:
            files, labels = find_images(folder)
        if limit is not None and limit < len(files):  # spread over the sorted list, never its first files
            rows = spread_indices(len(files), limit)
            logger.info("%s: %d of %d images, spread evenly over the list", folder, limit, len(files))
            files = [files[i] for i in rows]
            labels = None if labels is None else labels[rows]
        if fixed_batch is not None and len(files) % fixed_batch:
            if len(files) < fixed_batch:
                raise CalibrationError(
                    f"{folder}: {len(files)} image(s), fewer than the fixed batch size {fixed_batch} of "
                    f"model input '{input_name}'")
            logger.warning("%s: the last %d image(s) do not fill a batch of %d and are skipped",
                           folder, len(files) % fixed_batch, fixed_batch)
        self.input_name = input_name
        self.preprocess = preprocess
        _notice_resize(folder, files, self.size, preprocess)
        self._files = files
        self._labels = labels
        super().__init__(len(files), batch_size or fixed_batch or DEFAULT_BATCH_SIZE,
                         drop_last=drop_last or fixed_batch is not None, source=source)
        logger.debug("%s: %d images, %dx%d, batches of %d", folder, len(files), self.size[0], self.size[1],
                     self.batch_size)

    @property
    def files(self) -> list[Path]:
        """The image files in reading order (after ``limit``)."""
        return list(self._files)

    @property
    def labels(self) -> Optional[np.ndarray]:
        """int64 labels in reading order, from the labels file or class folders; else None."""
        return self._labels

    def _load(self, start: int, stop: int) -> LabelledBatch:
        pixels = np.stack([load_image(f, self.size, self.preprocess) for f in self._files[start:stop]])
        labels = None if self._labels is None else self._labels[start:stop]
        return {self.input_name: normalize(pixels, self.preprocess)}, labels


def _notice_resize(folder: Path, files: list[Path], size: tuple[int, int], preprocess: Preprocess) -> None:
    """One warning when the images are not the model's size: they are resized (how, and which flags choose)."""
    from PIL import Image
    try:
        with Image.open(files[0]) as image:
            width, height = image.size  # the header only
    except Exception:  # noqa: BLE001 - an unreadable file is refused with its name when it is read
        return
    if (height, width) != tuple(size):
        how = ("letterboxed (aspect ratio kept, padded)" if preprocess.letterbox else
               "stretched" if preprocess.mode == "resize" else "resized (the shorter side, then a center crop)")
        logger.warning("%s: images of %dx%d (the first, %s) are %s to the model's %dx%d; --size, --resize and "
                       "--letterbox choose how", folder, height, width, files[0].name, how, *size)
