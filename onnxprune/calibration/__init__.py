"""Calibration data for scoring: readers, preprocessing, checks and a many-pass cache.

Any object with onnxruntime's ``get_next()`` is a calibration reader, so a
reader written for ``quantize_static`` works unchanged; ``open_calibration``
turns a folder, an .npy/.npz file, arrays or a reader into a checked reader,
and ``CachedDataset`` makes any reader replayable for the many passes of
finite-difference scoring.
"""

from __future__ import annotations

from .augment import Augment
from .cache import DEFAULT_CACHE_BYTES, CachedDataset
from .dataset import Calibration, load_calibration
from .folder import ImageFolderReader, find_images, image_geometry, read_labels_file
from .preprocess import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    load_image,
    normalize,
    preprocess_image,
)
from .readers import (
    DEFAULT_BATCH_SIZE,
    ArrayReader,
    BatchReader,
    CalibrationDataReader,
    IterableReader,
    RewindableReader,
    ValidatingReader,
    load_arrays,
    next_with_labels,
    spread_indices,
)
from .source import open_calibration
from .validate import Dims, ModelInputs, format_dims, model_input_shapes, validate_batch

__all__ = [
    "ArrayReader",
    "spread_indices",
    "Augment",
    "Calibration",
    "load_calibration",
    "BatchReader",
    "CachedDataset",
    "CalibrationDataReader",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CACHE_BYTES",
    "Dims",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderReader",
    "IterableReader",
    "ModelInputs",
    "Preprocess",
    "RewindableReader",
    "ValidatingReader",
    "find_images",
    "format_dims",
    "image_geometry",
    "load_arrays",
    "load_image",
    "model_input_shapes",
    "next_with_labels",
    "normalize",
    "open_calibration",
    "preprocess_image",
    "read_labels_file",
    "validate_batch",
]
