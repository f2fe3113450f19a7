"""An in-memory, many-pass copy of a calibration reader, bounded by a byte budget.

onnxruntime's readers can be read once, and reading images again means
decoding them again; finite-difference scoring makes one pass per candidate.
CachedDataset reads any reader once and replays it as often as needed. The
budget stops a too-large source with an error that says how to fit it,
instead of swapping the machine to a halt.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Mapping
from typing import Optional

import numpy as np

from ..errors import CalibrationError, InvalidArgumentError
from .readers import Batch, CalibrationDataReader, LabelledBatch, _check_positive, next_with_labels

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 2 * 1024 ** 3
"""2 GiB: about 10,000 ImageNet-size float32 samples."""


def format_bytes(count: int) -> str:
    """Human-readable size: 1.5 GiB, 12.0 MiB, 300 B."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


class CachedDataset:
    """All samples of a reader in memory, replayable in batches of any size.

    Reads ``reader`` from its current position to its end (or ``limit``
    samples) when created, copying every array, and raises CalibrationError
    once the data would exceed ``max_bytes``. Every input must keep the same
    per-sample shape across batches. The batches it yields are views of the
    cache: read them, do not write to them. It is itself a rewindable reader
    (``get_next``/``rewind``), with batches of ``batch_size``.
    """

    def __init__(self, reader: CalibrationDataReader, max_bytes: int = DEFAULT_CACHE_BYTES, *,
                 limit: Optional[int] = None, batch_size: Optional[int] = None,
                 source: Optional[str] = None) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes <= 0:
            raise InvalidArgumentError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        if not callable(getattr(reader, "get_next", None)):
            raise InvalidArgumentError(f"CachedDataset needs a reader with get_next(), got {type(reader).__name__}")
        self.max_bytes = int(max_bytes)
        self.source = source or getattr(reader, "source", None) or type(reader).__name__
        limit = _check_positive("limit", limit)
        self._chunks: list[Batch] = []
        self._offsets: list[int] = [0]
        label_parts: list[np.ndarray] = []
        self._names: list[str] = []
        self._sample_shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.nbytes = 0
        has_labels: Optional[bool] = None
        index = 0
        while limit is None or self._offsets[-1] < limit:
            item = next_with_labels(reader)
            if item is None:
                break
            batch, labels = self._check(item, index, limit)
            if has_labels is None:
                has_labels = labels is not None
            elif has_labels != (labels is not None):
                raise CalibrationError(f"{self.source}: batch {index} {'has' if labels is not None else 'lacks'} "
                                       "labels unlike the batches before it")
            size = next(iter(batch.values())).shape[0]
            needed = sum(a.nbytes for a in batch.values()) + (0 if labels is None else labels.nbytes)
            if self.nbytes + needed > self.max_bytes:
                self._over_budget(self.nbytes + needed, self._offsets[-1] + size,
                                  getattr(reader, "num_samples", None), limit)
            self._chunks.append({k: np.array(v, copy=True) for k, v in batch.items()})
            if labels is not None:
                label_parts.append(np.array(labels, copy=True))
            self.nbytes += needed
            self._offsets.append(self._offsets[-1] + size)
            index += 1
        if not self._chunks:
            raise CalibrationError(
                f"{self.source}: the reader gave no batches (is it empty, or already read to its end? "
                "call rewind() first)")
        self._labels = np.concatenate(label_parts) if label_parts else None
        first = next(iter(self._chunks[0].values())).shape[0]
        self.batch_size = _check_positive("batch_size", batch_size) or first
        self._pos = 0
        logger.info("%s: cached %d samples (%s)", self.source, len(self), format_bytes(self.nbytes))

    def _check(self, item: LabelledBatch, index: int, limit: Optional[int]) -> LabelledBatch:
        """Batches must be stackable: same inputs, same per-sample shapes and dtypes."""
        batch, labels = item
        where = f"{self.source}: batch {index}"
        if not isinstance(batch, Mapping) or not batch:
            raise CalibrationError(f"{where} is {type(batch).__name__ if batch is not None else None}, "
                                   "expected a non-empty dict {input name: array}")
        batch = {k: np.asarray(v) for k, v in batch.items()}
        if any(v.ndim == 0 for v in batch.values()):
            raise CalibrationError(f"{where}: every input needs a batch axis")
        sizes = {v.shape[0] for v in batch.values()}
        if len(sizes) != 1:
            raise CalibrationError(f"{where}: inputs disagree on the batch size ({sorted(sizes)})")
        size = sizes.pop()
        if limit is not None and self._offsets[-1] + size > limit:
            size = limit - self._offsets[-1]
            batch = {k: v[:size] for k, v in batch.items()}
            labels = None if labels is None else labels[:size]
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim == 0 or labels.shape[0] != size:
                raise CalibrationError(f"{where}: {labels.size} labels for {size} samples")
        if not self._names:
            self._names = list(batch)
            self._sample_shapes = {k: (v.shape[1:], v.dtype) for k, v in batch.items()}
            return batch, labels
        if sorted(batch) != sorted(self._names):
            raise CalibrationError(f"{where} has inputs {sorted(batch)}, but batch 0 had {sorted(self._names)}")
        for name, value in batch.items():
            shape, dtype = self._sample_shapes[name]
            if value.shape[1:] != shape or value.dtype != dtype:
                raise CalibrationError(
                    f"{where}: input '{name}' has samples of shape {list(value.shape[1:])} {value.dtype}, "
                    f"but batch 0 had {list(shape)} {dtype}; CachedDataset needs one fixed size per input "
                    "(resize images to one size with Preprocess(size=...))")
        return batch, labels

    def _over_budget(self, needed: int, samples: int, total: Optional[int], limit: Optional[int]) -> None:
        per_sample = max(1, needed // samples)
        fits = max(1, self.max_bytes // per_sample)
        if isinstance(total, (int, np.integer)) and total > 0:
            total = min(int(total), limit) if limit else int(total)
            raise_to = f"max_bytes={per_sample * total} for all {total} samples"
        else:
            raise_to = "a larger max_bytes"
        raise CalibrationError(
            f"{self.source}: calibration data exceeds the cache budget of {format_bytes(self.max_bytes)} "
            f"(max_bytes={self.max_bytes}) after {samples} samples, at about {format_bytes(per_sample)} per sample: "
            f"pass {raise_to}, or read fewer samples (limit={fits} fits)")

    def __len__(self) -> int:
        """Number of samples."""
        return self._offsets[-1]

    @property
    def num_samples(self) -> int:
        """Number of samples (same as len())."""
        return self._offsets[-1]

    @property
    def input_names(self) -> list[str]:
        """The model inputs each batch feeds."""
        return list(self._names)

    @property
    def labels(self) -> Optional[np.ndarray]:
        """Labels of all samples in order, or None when the reader gave none."""
        return self._labels

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """Every input as one array of all samples (merged into one block on first use)."""
        if len(self._chunks) > 1:
            self._chunks = [{k: np.concatenate([c[k] for c in self._chunks]) for k in self._names}]
            self._offsets = [0, self._offsets[-1]]
        return dict(self._chunks[0])

    def _slice(self, start: int, stop: int) -> Batch:
        """Samples [start, stop) across chunks; a view when they lie in one chunk."""
        first = bisect.bisect_right(self._offsets, start) - 1
        last = bisect.bisect_left(self._offsets, stop) - 1
        if first == last:
            base = self._offsets[first]
            return {k: v[start - base:stop - base] for k, v in self._chunks[first].items()}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self._names}
        for i in range(first, last + 1):
            lo = max(start, self._offsets[i]) - self._offsets[i]
            hi = min(stop, self._offsets[i + 1]) - self._offsets[i]
            for k in self._names:
                parts[k].append(self._chunks[i][k][lo:hi])
        return {k: np.concatenate(v) for k, v in parts.items()}

    def batches_with_labels(self, batch_size: Optional[int] = None, *,
                            drop_last: bool = False) -> Iterator[tuple[Batch, Optional[np.ndarray]]]:
        """One pass of (batch, labels) pairs; call again for another pass."""
        size = _check_positive("batch_size", batch_size) or self.batch_size
        total = len(self)
        for start in range(0, total, size):
            stop = min(start + size, total)
            if drop_last and stop - start < size:
                return
            labels = None if self._labels is None else self._labels[start:stop]
            yield self._slice(start, stop), labels

    def batches(self, batch_size: Optional[int] = None, *, drop_last: bool = False) -> Iterator[Batch]:
        """One pass of feed dicts of ``batch_size`` samples (default: the reader's batch size)."""
        for batch, _ in self.batches_with_labels(batch_size, drop_last=drop_last):
            yield batch

    def __iter__(self) -> Iterator[Batch]:
        """One pass in batches of ``batch_size``."""
        return self.batches()

    def get_next_with_labels(self) -> Optional[LabelledBatch]:
        """Reader protocol: the next (batch, labels) of ``batch_size`` samples, None at the end."""
        if self._pos >= len(self):
            return None
        start, stop = self._pos, min(self._pos + self.batch_size, len(self))
        self._pos = stop
        return self._slice(start, stop), None if self._labels is None else self._labels[start:stop]

    def get_next(self) -> Optional[Batch]:
        """Reader protocol: the next feed dict, None at the end."""
        item = self.get_next_with_labels()
        return None if item is None else item[0]

    def rewind(self) -> None:
        """Start the reader protocol over from the first sample."""
        self._pos = 0
