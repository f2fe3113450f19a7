"""One entry point from "what the user pointed at" to a checked calibration reader.

The CLI's ``--calib DIR|FILE`` and the API's ``calibration_data_reader``
argument accept a folder of images, a .npy/.npz file, in-memory arrays, an
onnxruntime-style reader or an iterable of feed dicts; ``open_calibration``
picks the reader and wraps it so every batch is checked against the model
before onnxruntime sees it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import CalibrationError, InvalidArgumentError
from .folder import ImageFolderReader
from .preprocess import Preprocess
from .readers import DEFAULT_BATCH_SIZE, ArrayReader, IterableReader, ValidatingReader, _check_positive, load_arrays
from .validate import ModelInputs, fixed_batch, guess_layout, is_static

logger = logging.getLogger(__name__)


def _default_preprocess(preprocess: Optional[Preprocess], source: str, dims: Any = None) -> Preprocess:
    """The given Preprocess, else the default: x/255, NCHW, RGB, or grayscale for a 1-channel model."""
    if preprocess is not None:
        if not isinstance(preprocess, Preprocess):
            raise InvalidArgumentError(f"preprocess must be a Preprocess, got {type(preprocess).__name__}")
        return preprocess
    layout = guess_layout(dims) if dims and len(dims) == 4 else None
    channels = dims[1] if layout == "NCHW" else (dims[3] if layout == "NHWC" else None)
    if channels == 1:
        logger.info("%s: no Preprocess given: grayscale (the model takes one channel), x/255, no mean/std", source)
        return Preprocess(grayscale=True, layout=layout)
    logger.warning("%s: no Preprocess given: images become RGB, x/255, no mean/std, NCHW; "
                   "pass --scale/--mean/--std (Python: preprocess=Preprocess(...)) "
                   "if the model expects another normalization", source)
    return Preprocess()


def _array_preprocess(preprocess: Preprocess, dims: Any) -> Preprocess:
    """Give uint8 arrays the model's fixed height/width when the Preprocess has no size."""
    if preprocess.size is not None or not dims or len(dims) != 4:
        return preprocess
    layout = guess_layout(dims) or preprocess.layout
    height, width = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    if is_static(height) and is_static(width):
        return replace(preprocess, size=(int(height), int(width)))
    return preprocess


def open_calibration(source: Any, model_inputs: ModelInputs, preprocess: Optional[Preprocess] = None,
                     batch_size: Optional[int] = None, limit: Optional[int] = None,
                     integer_inputs: Iterable[str] = ()) -> ValidatingReader:
    """A checked reader over ``source`` for a model with ``model_inputs`` {name: dims}.

    ``source`` is a folder of images (one model input), a .npy/.npz file, a
    numpy array or dict of arrays, an object with ``get_next()`` (used
    unchanged), or an iterable of feed dicts. ``preprocess`` applies to
    images and uint8 arrays (integer arrays of ``integer_inputs``, the inputs
    the model takes as integers — token ids, masks — go in unchanged); ``batch_size`` (default 32, or the model's
    fixed batch size) to folders and arrays; ``limit`` caps the samples read:
    spread evenly over a folder, file or arrays, the first ones of a reader or iterable.
    """
    if not isinstance(model_inputs, Mapping) or not model_inputs:
        raise InvalidArgumentError("model_inputs must be a non-empty dict {input name: dims}")
    batch_size = _check_positive("batch_size", batch_size)
    limit = _check_positive("limit", limit)
    fixed = fixed_batch(model_inputs)
    if fixed is not None and batch_size is not None and batch_size != fixed:
        raise InvalidArgumentError(f"the model has a fixed batch size of {fixed}: use --batch-size {fixed} "
                                   f"(batch_size={fixed} in Python)")
    size = batch_size or fixed or DEFAULT_BATCH_SIZE
    drop_last = fixed is not None
    names = list(model_inputs)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise CalibrationError(f"{path}: no such file or folder")
        if path.is_dir():
            if len(names) != 1:
                raise CalibrationError(
                    f"{path}: an image folder feeds one input, but the model has {len(names)} "
                    f"({', '.join(names)}): give an .npz with one array per input name, or a reader")
            dims = model_inputs[names[0]]
            if dims is None:
                raise CalibrationError(
                    f"{path}: model input '{names[0]}' has no known shape; give arrays or a reader instead")
            reader: Any = ImageFolderReader(path, names[0], dims, _default_preprocess(preprocess, str(path), dims),
                                            batch_size=size, limit=limit, drop_last=drop_last)
            return ValidatingReader(reader, model_inputs, source=str(path), integer_inputs=integer_inputs)
        if path.suffix.lower() not in (".npy", ".npz"):
            raise CalibrationError(
                f"{path}: unsupported calibration file; give a folder of images or a .npy/.npz file")
        arrays, labels = load_arrays(path, names)
        return _from_arrays(arrays, labels, model_inputs, preprocess, size, limit, drop_last, str(path),
                            integer_inputs)

    if isinstance(source, (np.ndarray, Mapping)):
        return _from_arrays(source, None, model_inputs, preprocess, size, limit, drop_last, "<arrays>",
                            integer_inputs)

    if callable(getattr(source, "get_next", None)):
        if preprocess is not None:
            raise InvalidArgumentError("preprocess applies to images and arrays; a reader yields model inputs as is")
        if batch_size is not None:
            logger.warning("batch_size is ignored for a reader: its batches are used as they come")
        return ValidatingReader(source, model_inputs, source=type(source).__name__, limit=limit,
                                integer_inputs=integer_inputs)

    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        if preprocess is not None:
            raise InvalidArgumentError("preprocess applies to images and arrays; an iterable yields model inputs as is")
        return ValidatingReader(IterableReader(source), model_inputs, source="<iterable>", limit=limit,
                                integer_inputs=integer_inputs)

    raise InvalidArgumentError(
        "calibration source must be a folder of images, a .npy/.npz file, arrays, a reader with get_next(), "
        f"or an iterable of feed dicts; got {type(source).__name__}")


def _from_arrays(arrays: Any, labels: Optional[np.ndarray], model_inputs: ModelInputs,
                 preprocess: Optional[Preprocess], batch_size: int, limit: Optional[int], drop_last: bool,
                 source: str, integer_inputs: Iterable[str] = ()) -> ValidatingReader:
    names = list(model_inputs)
    if isinstance(arrays, Mapping):
        named = {str(k): np.asarray(v) for k, v in arrays.items()}
        input_name = None
    else:
        if len(names) != 1:
            raise CalibrationError(
                f"{source}: one array for a model with {len(names)} inputs ({', '.join(names)}): "
                "give one array per input name")
        named = {names[0]: np.asarray(arrays)}
        input_name = names[0]
    integer_inputs = frozenset(integer_inputs)
    has_images = any(np.issubdtype(a.dtype, np.integer) for n, a in named.items() if n not in integer_inputs)
    if has_images:
        preprocess = _default_preprocess(preprocess, source,
                                         model_inputs.get(next(iter(named))) if len(named) == 1 else None)
        if len(named) == 1:
            preprocess = _array_preprocess(preprocess, model_inputs.get(next(iter(named))))
    elif preprocess is not None:
        raise InvalidArgumentError(
            f"{source}: preprocess applies to uint8 image arrays; this data is float and is used as model input unchanged")
    data = named if input_name is None else named[input_name]
    reader = ArrayReader(data, input_name, labels=labels, batch_size=batch_size, preprocess=preprocess,
                         limit=limit, drop_last=drop_last, source=source, integer_inputs=integer_inputs)
    if drop_last and reader.num_samples == 0:
        raise CalibrationError(f"{source}: fewer samples than the model's fixed batch size {batch_size}")
    return ValidatingReader(reader, model_inputs, source=source, integer_inputs=integer_inputs)
