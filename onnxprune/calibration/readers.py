"""Calibration readers: the onnxruntime reader protocol and readers for arrays and iterables.

onnxprune consumes calibration data through the protocol of onnxruntime's
quantization tool, ``get_next() -> dict | None``, so a reader written for
``quantize_static`` works unchanged. Our own readers add ``rewind()`` (scoring
makes many passes) and ``get_next_with_labels()`` (accuracy checks need the
labels that travel with each batch).
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

import numpy as np

from ..errors import CalibrationError, InvalidArgumentError
from .preprocess import Preprocess, normalize, resize_pixels, to_gray
from .validate import ModelInputs, validate_batch

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
LabelledBatch = tuple[Batch, Optional[np.ndarray]]

DEFAULT_BATCH_SIZE = 32
_IMAGE_KEYS = ("images", "x", "inputs")
_LABEL_KEYS = ("labels", "label", "y")


@runtime_checkable
class CalibrationDataReader(Protocol):
    """Anything with onnxruntime's ``get_next``: one feed dict per call, None at the end."""

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        ...


@runtime_checkable
class RewindableReader(Protocol):
    """A reader that can start over, so it can be read more than once."""

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        ...

    def rewind(self) -> None:
        ...


def next_with_labels(reader: CalibrationDataReader) -> Optional[LabelledBatch]:
    """The next (batch, labels) from any reader; labels are None for readers without them."""
    getter = getattr(reader, "get_next_with_labels", None)
    if callable(getter):
        return getter()
    batch = reader.get_next()
    return None if batch is None else (batch, None)


def _check_positive(name: str, value: Optional[int]) -> Optional[int]:
    """Batch sizes and limits are counts: reject 0, negatives, floats and bools early."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def spread_indices(total: int, count: Optional[int]) -> np.ndarray:
    """``count`` row indices spread evenly over ``range(total)`` (all of them when count is None or >= total).

    Files are often sorted (by class, by time, by camera): their first rows are
    not a sample of them. Row ``i`` is ``floor((i + 1/2) * total / count)``,
    the middle of the i-th of ``count`` equal slices: increasing, no repeats,
    and the same on every machine.
    """
    if count is None or count >= total:
        return np.arange(total, dtype=np.int64)
    i = np.arange(count, dtype=np.int64)
    return (2 * i + 1) * total // (2 * count)


class BatchReader:
    """Base of readers over a known number of samples, read in fixed-size slices."""

    def __init__(self, num_samples: int, batch_size: int, *, drop_last: bool = False, source: str = "") -> None:
        self._num_samples = num_samples
        self._batch_size = _check_positive("batch_size", batch_size) or DEFAULT_BATCH_SIZE
        self._drop_last = drop_last
        self._pos = 0
        self.source = source

    @property
    def batch_size(self) -> int:
        """Samples per batch (the last batch may be smaller unless drop_last)."""
        return self._batch_size

    @property
    def source_samples(self) -> int:
        """Samples taken from the source (after limit, before drop_last)."""
        return self._num_samples

    @property
    def num_samples(self) -> int:
        """Samples one pass yields, after limit and drop_last."""
        if self._drop_last:
            return self._num_samples - self._num_samples % self._batch_size
        return self._num_samples

    def __len__(self) -> int:
        return self.num_samples

    @property
    def labels(self) -> Optional[np.ndarray]:
        """Labels of all samples in reading order, or None."""
        return None

    def _load(self, start: int, stop: int) -> LabelledBatch:
        raise NotImplementedError

    def get_next_with_labels(self) -> Optional[LabelledBatch]:
        """The next batch and its labels (None when the reader has none); None at the end."""
        start = self._pos
        stop = min(start + self._batch_size, self._num_samples)
        if start >= stop or (self._drop_last and stop - start < self._batch_size):
            return None
        self._pos = stop
        return self._load(start, stop)

    def get_next(self) -> Optional[Batch]:
        """The next batch {input name: float32 array}, or None at the end (onnxruntime protocol)."""
        item = self.get_next_with_labels()
        return None if item is None else item[0]

    def rewind(self) -> None:
        """Start again from the first sample."""
        self._pos = 0

    def __iter__(self) -> Iterator[Batch]:
        """One full pass from the start, whatever was read before."""
        self.rewind()
        while (batch := self.get_next()) is not None:
            yield batch


def _image_pixels(array: np.ndarray, name: str, source: str) -> np.ndarray:
    """View a uint8 image array as [N, H, W, C] with C in (1, 3)."""
    if array.dtype != np.uint8:
        raise CalibrationError(
            f"{source}: '{name}' holds {array.dtype} integers; image arrays must be uint8 (0-255), "
            "other data must already be float32 model inputs")
    if array.ndim == 3:
        return array[..., None]
    if array.ndim == 4:
        if array.shape[3] in (1, 3):
            return array
        if array.shape[1] in (1, 3):
            return array.transpose(0, 2, 3, 1)
    raise CalibrationError(
        f"{source}: '{name}' is a uint8 array of shape {list(array.shape)}; image arrays must be "
        "[N, H, W, 3], [N, H, W, 1], [N, H, W] or [N, 3, H, W]")


class ArrayReader(BatchReader):
    """Batches from in-memory arrays: one array for a single input, or a dict {input name: array}.

    Float arrays are used as model inputs (cast to float32). uint8 arrays are
    images (NHWC, or NCHW/NHW when recognisable) and go through ``preprocess``
    (colour, size, scale, mean, std, layout) one batch at a time, so memory
    holds the compact uint8 copy only. Integer arrays named in
    ``integer_inputs`` (inputs the model takes as integers: token ids,
    attention masks) are model inputs, passed unchanged. ``limit`` keeps that many rows spread
    evenly over the arrays (:func:`spread_indices`), never the first ones.
    """

    def __init__(self, arrays: Union[np.ndarray, Mapping[str, np.ndarray]], input_name: Optional[str] = None,
                 labels: Optional[np.ndarray] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 preprocess: Optional[Preprocess] = None, *, limit: Optional[int] = None,
                 drop_last: bool = False, source: str = "<arrays>", integer_inputs: Iterable[str] = ()) -> None:
        limit = _check_positive("limit", limit)
        if isinstance(arrays, Mapping):
            if input_name is not None:
                raise InvalidArgumentError("input_name is for a single array; a dict already names its inputs")
            named = {str(k): np.asarray(v) for k, v in arrays.items()}
        else:
            if not input_name:
                raise InvalidArgumentError("ArrayReader needs input_name for a single array")
            named = {input_name: np.asarray(arrays)}
        if not named:
            raise CalibrationError(f"{source}: no arrays given")
        counts = set()
        for name, array in named.items():
            if array.ndim == 0:
                raise CalibrationError(f"{source}: '{name}' is a scalar, expected an array with a sample axis")
            if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
                raise CalibrationError(f"{source}: '{name}' has dtype {array.dtype}, expected float32 or uint8 images")
            counts.add(array.shape[0])
        if len(counts) > 1:
            sizes = ", ".join(f"'{n}': {a.shape[0]}" for n, a in named.items())
            raise CalibrationError(f"{source}: the arrays have different numbers of samples ({sizes})")
        total = counts.pop()
        if total == 0:
            raise CalibrationError(f"{source}: the arrays hold no samples")
        ints = frozenset(integer_inputs)
        images = {n for n, a in named.items() if np.issubdtype(a.dtype, np.integer) and n not in ints}
        if preprocess is not None and not images:
            raise InvalidArgumentError(
                f"{source}: preprocess applies to uint8 image arrays; float arrays are used as model inputs unchanged")
        if images and preprocess is None:
            preprocess = Preprocess()
            logger.warning("%s: uint8 images without a Preprocess: using RGB, x/255, no mean/std, NCHW; "
                           "pass --scale/--mean/--std (Python: preprocess=Preprocess(...)) "
                           "if the model expects another normalization", source)
        self._pixels = {n: _image_pixels(named[n], n, source) for n in images}
        self._floats = {n: a for n, a in named.items() if n not in images}
        self._order = list(named)
        self.preprocess = preprocess
        for n, px in self._pixels.items():
            if preprocess is not None and preprocess.size is not None and px.shape[1:3] != tuple(preprocess.size):
                logger.warning("%s: %s images of %dx%d are resized to the model's %dx%d (%s; --size/--resize "
                               "choose how)", source, n, *px.shape[1:3], *preprocess.size, preprocess.mode)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim == 0 or labels.shape[0] != total:
                count = 1 if labels.ndim == 0 else labels.shape[0]
                raise CalibrationError(f"{source}: {count} labels for {total} samples; give one label per sample")
        if limit is not None and limit < total:  # spread over the source, never its first rows
            rows = spread_indices(total, limit)
            self._pixels = {n: a[rows] for n, a in self._pixels.items()}
            self._floats = {n: a[rows] for n, a in self._floats.items()}
            labels = None if labels is None else labels[rows]
            logger.info("%s: %d of %d samples, spread evenly over the source", source, limit, total)
        self._labels = labels
        super().__init__(min(total, limit or total), batch_size, drop_last=drop_last, source=source)

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self._labels

    def _load(self, start: int, stop: int) -> LabelledBatch:
        batch: Batch = {}
        for name in self._order:
            if name in self._floats:
                part = self._floats[name][start:stop]
                batch[name] = part if np.issubdtype(part.dtype, np.integer) else part.astype(np.float32, copy=False)
                continue
            assert self.preprocess is not None
            pixels = self._pixels[name][start:stop]
            if self.preprocess.grayscale and pixels.shape[-1] == 3:
                pixels = to_gray(pixels)
            elif not self.preprocess.grayscale and pixels.shape[-1] == 1:
                pixels = np.repeat(pixels, 3, axis=-1)
            if self.preprocess.size is not None:
                pixels = resize_pixels(pixels, self.preprocess.size, self.preprocess)
            batch[name] = normalize(pixels, self.preprocess)
        return batch, None if self._labels is None else self._labels[start:stop]


def load_arrays(path: Union[str, os.PathLike],
                input_names: Optional[Iterable[str]] = None) -> tuple[Union[np.ndarray, dict[str, np.ndarray]], Optional[np.ndarray]]:
    """Read (inputs, labels) from a .npy or .npz file.

    A .npz whose keys include every name in ``input_names`` gives a dict for a
    multi-input model; otherwise the images come from ``images``, ``x`` or
    ``inputs`` (or the only array) and labels from ``labels``/``label``/``y``.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise CalibrationError(f"{path}: expected a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CalibrationError(f"{path}: cannot be read as {suffix} ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None
    try:
        with loaded:
            keys = list(loaded.files)
            if not keys:
                raise CalibrationError(f"{path}: the archive holds no arrays")
            names = list(input_names or [])
            label_key = next((k for k in _LABEL_KEYS if k in keys and k not in names), None)
            labels = loaded[label_key] if label_key else None
            if names and all(n in keys for n in names):
                return {n: loaded[n] for n in names}, labels
            if len(names) > 1 and any(n in keys for n in names):
                missing = [n for n in names if n not in keys]
                raise CalibrationError(
                    f"{path}: has arrays for some model inputs but not for {', '.join(repr(n) for n in missing)}")
            key = next((k for k in _IMAGE_KEYS if k in keys), None)
            if key is None:
                rest = [k for k in keys if k != label_key]
                if len(rest) != 1:
                    raise CalibrationError(
                        f"{path}: cannot tell which array holds the inputs (keys: {', '.join(keys)}): "
                        f"name it 'images' (or after the model input) and the labels 'labels'")
                key = rest[0]
            return loaded[key], labels
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise CalibrationError(f"{path}: cannot be read as .npz ({exc})") from None


class IterableReader:
    """Batches from an iterable of feed dicts, or of (feed dict, labels) pairs.

    A list (or any re-iterable collection) can be rewound; a generator or
    iterator can be read once, which CachedDataset turns into many passes.
    """

    def __init__(self, iterable: Iterable[Any], *, source: str = "<iterable>") -> None:
        if isinstance(iterable, (Mapping, str, bytes)) or not isinstance(iterable, Iterable):
            raise InvalidArgumentError(
                f"IterableReader takes an iterable of feed dicts, got {type(iterable).__name__}"
                " (use ArrayReader for a dict of arrays)")
        self._iterable = iterable
        self._rewindable = not isinstance(iterable, Iterator)
        self._iterator: Iterator[Any] = iter(iterable)
        self._index = 0
        self.source = source

    @property
    def can_rewind(self) -> bool:
        """False for generators and iterators, which can be read only once."""
        return self._rewindable

    def get_next_with_labels(self) -> Optional[LabelledBatch]:
        """The next (batch, labels), labels None unless the item is a (dict, labels) pair."""
        item = next(self._iterator, None)
        if item is None:
            return None
        index = self._index
        self._index += 1
        labels = None
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Mapping):
            item, labels = item
            labels = None if labels is None else np.asarray(labels)
        if not isinstance(item, Mapping):
            raise CalibrationError(
                f"{self.source}: item {index} is a {type(item).__name__}; expected a dict {{input name: array}} "
                "or a (dict, labels) pair")
        return {str(k): np.asarray(v) for k, v in item.items()}, labels

    def get_next(self) -> Optional[Batch]:
        """The next feed dict, or None at the end."""
        item = self.get_next_with_labels()
        return None if item is None else item[0]

    def rewind(self) -> None:
        """Start over; refused for one-shot iterators, which cannot."""
        if not self._rewindable:
            raise CalibrationError(
                f"{self.source}: a generator or iterator can be read only once; pass a list, "
                "or wrap the reader in CachedDataset to read it once and replay it")
        self._iterator = iter(self._iterable)
        self._index = 0


def _batch_length(batch: Any) -> int:
    """Samples in a feed dict (its first array's leading axis); 0 when it cannot tell."""
    if not isinstance(batch, Mapping):
        return 0
    return next((v.shape[0] for v in batch.values() if isinstance(v, np.ndarray) and v.ndim), 0)


class ValidatingReader:
    """Wraps any reader: checks each batch against the model and stops after ``limit`` samples.

    A reader is a stream of unknown length, so its ``limit`` is its first
    samples; folders, files and arrays spread theirs in their own readers.

    The wrapped reader is used as is, so a user's onnxruntime reader needs no
    change; errors name ``source`` and the samples of the failing batch.
    """

    def __init__(self, reader: CalibrationDataReader, model_inputs: ModelInputs, *,
                 source: Optional[str] = None, limit: Optional[int] = None,
                 integer_inputs: Iterable[str] = ()) -> None:
        if not callable(getattr(reader, "get_next", None)):
            raise InvalidArgumentError(
                f"a calibration reader needs a get_next() method, got {type(reader).__name__}")
        self.reader = reader
        self.model_inputs = dict(model_inputs)
        self.integer_inputs = frozenset(integer_inputs)  # inputs the model takes as integers (token ids, masks)
        self.source = source or getattr(reader, "source", None) or type(reader).__name__
        self.limit = _check_positive("limit", limit)
        self._seen = 0

    @property
    def can_rewind(self) -> bool:
        """Whether rewind() works: the wrapped reader has rewind() and does not refuse it."""
        return callable(getattr(self.reader, "rewind", None)) and getattr(self.reader, "can_rewind", True)

    @property
    def labels(self) -> Optional[np.ndarray]:
        """The wrapped reader's labels (cut to ``limit``), when it exposes them."""
        labels = getattr(self.reader, "labels", None)
        if labels is None or self.limit is None:
            return labels
        return labels[: self.limit]

    @property
    def num_samples(self) -> Optional[int]:
        """Samples one pass yields, when the wrapped reader knows; else None."""
        count = getattr(self.reader, "num_samples", None)
        if count is None:
            return None
        return count if self.limit is None else min(count, self.limit)

    def get_next_with_labels(self) -> Optional[LabelledBatch]:
        """The next checked (batch, labels), or None at the end or once ``limit`` samples were given."""
        if self.limit is not None and self._seen >= self.limit:
            return None
        item = next_with_labels(self.reader)
        if item is None:
            return None
        batch, labels = item
        labels = None if labels is None else np.asarray(labels)
        start = self._seen
        size = _batch_length(batch)
        if self.limit is not None and start + size > self.limit:
            keep = self.limit - start
            batch = {k: (v[:keep] if isinstance(v, np.ndarray) and v.ndim else v) for k, v in batch.items()}
            labels = None if labels is None else labels[:keep]
            size = keep
        where = f"{self.source} (samples {start}-{start + size - 1})" if size else self.source
        validate_batch(batch, self.model_inputs, where, self.integer_inputs)
        if labels is not None and (labels.ndim == 0 or labels.shape[0] != size):
            count = 1 if labels.ndim == 0 else labels.shape[0]
            raise CalibrationError(f"{where}: {count} labels for a batch of {size} samples")
        self._seen += size
        return batch, labels

    def get_next(self) -> Optional[Batch]:
        """The next checked feed dict, or None at the end."""
        item = self.get_next_with_labels()
        return None if item is None else item[0]

    def rewind(self) -> None:
        """Rewind the wrapped reader; a reader without rewind() explains the alternative."""
        rewind = getattr(self.reader, "rewind", None)
        if not callable(rewind):
            raise CalibrationError(
                f"{self.source}: the reader has no rewind() and can be read only once; "
                "wrap it in CachedDataset to read it once and replay it")
        rewind()
        self._seen = 0

    def __iter__(self) -> Iterator[Batch]:
        """One full pass from the start."""
        self.rewind()
        while (batch := self.get_next()) is not None:
            yield batch
