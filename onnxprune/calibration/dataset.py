"""The one calibration path every command takes: any source -> a checked, cached, replayable dataset.

``prune``, ``score``, ``sparsify`` and the HALCON handle all come through
``load_calibration``: a folder of images, an .npy/.npz (uint8 images or float
model inputs), arrays, an onnxruntime CalibrationDataReader or an iterable of
feed dicts is opened by ``open_calibration`` (checked against the model's
inputs) and cached, because finite-difference scoring and recovery read the
samples many times. ``Calibration.augmented`` adds random-resized-crop and
flip copies of image samples (:mod:`.augment`) for least squares.
"""

from __future__ import annotations

import logging
import re
from itertools import islice
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import onnx

from ..errors import CalibrationError
from .augment import Augment, augment_arrays
from ..graph.probe import input_dtypes
from .cache import DEFAULT_CACHE_BYTES, CachedDataset
from .preprocess import Preprocess
from .readers import DEFAULT_BATCH_SIZE, ArrayReader
from .source import open_calibration
from .validate import fixed_batch, is_static, model_input_shapes

logger = logging.getLogger(__name__)


def spread(n: int, k: int) -> np.ndarray:
    """``k`` row indices spread evenly over ``n`` rows (what :meth:`Calibration.split` holds back)."""
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


@dataclass
class Calibration:
    """Calibration samples cached in memory, replayable for every scoring pass."""

    dataset: CachedDataset
    batch_size: int
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    """Inputs the model takes in another type than float32 (float16, int64 token ids): cast on the way out."""

    def batches(self) -> list[tuple[dict[str, np.ndarray], Optional[np.ndarray]]]:
        """Every batch with its labels, in the model's input types."""
        return [(self._cast(f), y) for f, y in self.dataset.batches_with_labels(self.batch_size)]

    def feeds(self, *, first: Optional[int] = None, last: Optional[int] = None) -> list[dict[str, np.ndarray]]:
        """The batches without labels; ``first``/``last``: only that many from the start or the end (only
        those are cast, so a check on one batch does not copy the whole set)."""
        pairs = self.dataset.batches_with_labels(self.batch_size)  # slices of the cache, one at a time
        raw = [f for f, _ in (islice(pairs, first) if first is not None else pairs)]
        if last is not None:
            raw = raw[-last:] if last else []
        return [self._cast(f) for f in raw]

    def _cast(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.dtypes:
            return feeds
        return {k: v.astype(self.dtypes[k]) if k in self.dtypes else v for k, v in feeds.items()}

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self.dataset.labels

    def input_shapes(self) -> Optional[dict[str, tuple[int, ...]]]:
        """Shapes of one sample batch (batch axis 1): the sizes to probe a dynamic model with."""
        first = next(iter(self.dataset.batches(1)), None)
        return {k: tuple(v.shape) for k, v in first.items()} if first else None

    def __len__(self) -> int:
        return len(self.dataset)

    def split(self, held: int) -> tuple["Calibration", "Calibration"]:
        """(the rest, ``held`` samples spread evenly over the data): rows held back from scoring and fitting,
        so fidelity is measured on samples the run never saw (never the last or first N of a sorted file)."""
        n = len(self)
        held = int(min(max(held, 0), n - 1))
        if held <= 0:
            return self, self
        pick = spread(n, held)
        rest = np.setdiff1d(np.arange(n), pick)
        arrays = self.dataset.inputs
        labels = self.labels
        return tuple(self._subset(arrays, labels, idx, what)
                     for idx, what in ((rest, "fit"), (pick, "held back")))  # type: ignore[return-value]

    def subset(self, idx: np.ndarray, what: str) -> "Calibration":
        """The rows ``idx`` (in order) as a calibration of their own; ``what`` names them in the source."""
        return self._subset(self.dataset.inputs, self.labels, np.asarray(idx, dtype=np.int64), what)

    def _subset(self, arrays: dict, labels: Optional[np.ndarray], idx: np.ndarray, what: str) -> "Calibration":
        reader = ArrayReader({k: v[idx] for k, v in arrays.items()},
                             labels=labels[idx] if labels is not None else None, batch_size=self.batch_size,
                             source=f"{self.dataset.source} ({what})",
                             integer_inputs=tuple(arrays))  # cached: already model inputs (token ids stay ints)
        return Calibration(CachedDataset(reader, self.dataset.max_bytes), self.batch_size, self.dtypes)

    def augmented(self, rounds: int, seed: int = 0, spec: Optional[Augment] = None) -> "Calibration":
        """These samples, each followed by ``rounds`` random-resized-crop / flip copies (seeded).

        For image inputs only (CalibrationError otherwise); the copies are
        cached like the originals and count against the same memory budget.
        """
        spec = spec if spec is not None else Augment(rounds=rounds, seed=seed)
        if spec.rounds == 0:
            return self
        batches = self.batches()
        names = list(batches[0][0])
        arrays = {k: np.concatenate([f[k] for f, _ in batches]) for k in names}
        labels = self.labels
        arrays, labels = augment_arrays(arrays, labels, spec)
        reader = ArrayReader(arrays, labels=labels, batch_size=self.batch_size, source=f"{self.dataset.source} (augmented)")
        return Calibration(CachedDataset(reader, self.dataset.max_bytes * (spec.rounds + 1)), self.batch_size)


def recorded_image_size(model: onnx.ModelProto) -> Optional[tuple[int, int]]:
    """(height, width) from the exporter's metadata ``imgsz`` (Ultralytics writes e.g. "[320, 320]"), if any."""
    for prop in model.metadata_props:
        if prop.key == "imgsz" and len(prop.value) < 40:
            values = [int(v) for v in re.findall(r"\d+", prop.value)]
            if len(values) in (1, 2) and all(v > 0 for v in values):
                return (values[0], values[-1])
    return None


def with_model_size(preprocess: Optional[Preprocess], model: onnx.ModelProto) -> Optional[Preprocess]:
    """``preprocess`` with the size the model was exported for, when it gives none and the model's image
    input has a dynamic height or width (a folder of images then needs no --size)."""
    if preprocess is None or preprocess.size is not None:
        return preprocess
    inputs = list(model_input_shapes(model).values())
    if len(inputs) != 1 or not inputs[0] or len(inputs[0]) != 4:
        return preprocess
    dims = inputs[0]
    hw = dims[2:4] if preprocess.layout == "NCHW" else dims[1:3]
    size = recorded_image_size(model)
    if size is None or all(is_static(d) for d in hw):
        return preprocess
    logger.info("image size %dx%d from the model's metadata 'imgsz' (give --size to choose another)", *size)
    return replace(preprocess, size=tuple(size))


def load_calibration(source: Any, model: onnx.ModelProto, *, preprocess: Optional[Preprocess] = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, limit: Optional[int] = None,
                     cache_bytes: int = DEFAULT_CACHE_BYTES) -> Calibration:
    """Open and cache any calibration source (reader, folder, .npy/.npz, arrays, iterable).

    A model whose inputs fix the batch size (most static exports: 1) is
    calibrated in batches of that size whatever ``batch_size`` says: the
    model takes nothing else, and a user should not have to find the flag.
    """
    dtypes = {k: v for k, v in input_dtypes(model).items() if v != np.float32}
    if isinstance(source, Calibration):
        return source
    inputs = model_input_shapes(model)
    preprocess = with_model_size(preprocess, model)
    fixed = fixed_batch(inputs)
    if fixed is not None and fixed != batch_size:  # a static export: the model takes nothing else
        logger.info("the model fixes its batch size to %d: calibrating in batches of %d (not %d)",
                    fixed, fixed, batch_size)
        batch_size = fixed
    if isinstance(source, CachedDataset):
        return Calibration(source, batch_size, dtypes)
    integers = [k for k, v in input_dtypes(model).items() if v.kind in "iu"]
    reader = open_calibration(source, inputs, preprocess=preprocess, batch_size=batch_size, limit=limit,
                              integer_inputs=integers)
    dataset = CachedDataset(reader, cache_bytes, limit=limit)
    if len(dataset) == 0:
        raise CalibrationError("the calibration data holds no samples")
    return Calibration(dataset, batch_size, dtypes)
