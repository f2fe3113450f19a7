"""Checking calibration batches against the model's inputs before they reach onnxruntime.

onnxruntime's own messages for a bad feed ("Got invalid dimensions for
input") name neither the data source nor the fix; a NaN in the data is not
reported at all and silently poisons every score. Each check here raises one
CalibrationError that names the source, the input and what was expected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

import numpy as np

from ..errors import CalibrationError

logger = logging.getLogger(__name__)

Dim = Union[int, str, None]
"""One axis of a model input: an int when fixed, a name or None when dynamic."""
Dims = tuple[Dim, ...]
ModelInputs = Mapping[str, Optional[Dims]]
"""Input name to its dims; None for an input whose rank is unknown."""

_SMALL_CHANNELS = (1, 3)


def is_static(dim: Any) -> bool:
    """A fixed axis length (ints only; names and None are dynamic)."""
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0


def format_dims(dims: Optional[Dims]) -> str:
    """[N, 3, 224, 224] with dynamic axes shown by name, or '?'."""
    if dims is None:
        return "[unknown shape]"
    return "[" + ", ".join(str(int(d)) if is_static(d) else (str(d) if d else "?") for d in dims) + "]"


def guess_layout(dims: Optional[Dims]) -> Optional[str]:
    """'NCHW' or 'NHWC' for a rank-4 image input whose channel axis is recognisable, else None."""
    if dims is None or len(dims) != 4:
        return None
    first = is_static(dims[1]) and dims[1] in _SMALL_CHANNELS
    last = is_static(dims[3]) and dims[3] in _SMALL_CHANNELS
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    if first and last:
        return "NCHW"
    if not is_static(dims[1]) and is_static(dims[2]) and is_static(dims[3]):
        return "NCHW"
    return None


def _axis_names(dims: Dims) -> tuple[str, ...]:
    layout = guess_layout(dims)
    if layout == "NCHW":
        return ("batch", "channels", "height", "width")
    if layout == "NHWC":
        return ("batch", "height", "width", "channels")
    return ("batch",) + tuple(f"axis {i}" for i in range(1, len(dims)))


def fixed_batch(model_inputs: ModelInputs) -> Optional[int]:
    """The batch size the model's inputs fix (a static first dim), if any does."""
    for dims in model_inputs.values():
        if dims and is_static(dims[0]):
            return int(dims[0])
    return None


def model_input_shapes(model: Any) -> dict[str, Optional[Dims]]:
    """The inputs a feed needs, from an onnx.ModelProto or an onnxruntime InferenceSession.

    Graph inputs that are also initializers have defaults and are left out.
    """
    if hasattr(model, "get_inputs"):
        return {arg.name: (tuple(arg.shape) if arg.shape is not None else None) for arg in model.get_inputs()}
    graph = getattr(model, "graph", None)
    if graph is None:
        raise TypeError(f"expected an onnx.ModelProto or an onnxruntime.InferenceSession, got {type(model).__name__}")
    initializers = {init.name for init in graph.initializer}
    shapes: dict[str, Optional[Dims]] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            shapes[value.name] = None
            continue
        dims: list[Dim] = []
        for d in tensor.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        shapes[value.name] = tuple(dims)
    return shapes


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _layout_hint(shape: tuple[int, ...], dims: Dims) -> str:
    """Spot channels-last data for a channels-first model and the reverse."""
    layout = guess_layout(dims)
    if len(shape) != 4 or layout is None:
        return ""
    if layout == "NCHW" and shape[3] == dims[1] and shape[1] != dims[1]:
        return ("; the data looks channels-last (NHWC) but the model takes NCHW: set layout='NCHW' in Preprocess "
                "(no --nhwc on the command line)")
    if layout == "NHWC" and shape[1] == dims[3] and shape[3] != dims[3]:
        return ("; the data looks channels-first (NCHW) but the model takes NHWC: set layout='NHWC' in Preprocess "
                "(--nhwc on the command line)")
    return ""


def validate_batch(batch: Any, model_inputs: ModelInputs, source: str = "calibration data",
                   integer_inputs: Iterable[str] = ()) -> None:
    """Raise CalibrationError unless ``batch`` is a feed the model accepts.

    Checks input names, dtype (float32 or float16; integers for the
    ``integer_inputs`` the model takes as integers, e.g. token ids), rank, every fixed axis (batch,
    channels, height, width), the batch axis agreeing across inputs, and
    that every value is finite.
    """
    if not isinstance(batch, Mapping):
        raise CalibrationError(
            f"{source}: a batch must be a dict {{input name: array}}, got {type(batch).__name__}")
    expected = ", ".join(f"'{n}' {format_dims(d)}" for n, d in model_inputs.items())
    unknown = [n for n in batch if n not in model_inputs]
    missing = [n for n in model_inputs if n not in batch]
    if len(unknown) == 1 and len(missing) == 1:
        raise CalibrationError(
            f"{source}: the data has input '{unknown[0]}' but the model's input is '{missing[0]}' "
            f"{format_dims(model_inputs[missing[0]])}: name the data '{missing[0]}' (input_name='{missing[0]}')")
    if unknown:
        raise CalibrationError(
            f"{source}: the model has no input named {', '.join(repr(n) for n in unknown)}; it expects {expected}")
    if missing:
        raise CalibrationError(
            f"{source}: the data has no value for model input {', '.join(repr(n) for n in missing)}; "
            f"the model expects {expected}")
    batch_sizes: dict[str, int] = {}
    for name, dims in model_inputs.items():
        value = batch[name]
        where = f"{source}: input '{name}'"
        if not isinstance(value, np.ndarray):
            raise CalibrationError(f"{where} is a {type(value).__name__}, expected a numpy array")
        integral = name in integer_inputs and (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_)
        if value.dtype not in (np.float32, np.float16) and not integral:  # float16 models: fed float16 (cast)
            if np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_:
                hint = ("; integer pixels need preprocessing (Preprocess: scale, mean, std) to become float32"
                        if value.dtype == np.uint8 else "; convert with .astype(np.float32)")
            elif np.issubdtype(value.dtype, np.floating):
                hint = "; convert with .astype(np.float32)"
            else:
                hint = ""
            raise CalibrationError(f"{where} has dtype {value.dtype}, expected float32{hint}")
        if value.ndim == 0:
            raise CalibrationError(f"{where} is a scalar, expected an array of shape {format_dims(dims)}")
        if value.shape[0] == 0:
            raise CalibrationError(f"{where} is an empty batch (shape {_fmt_shape(value.shape)})")
        batch_sizes[name] = value.shape[0]
        if dims is not None:
            if value.ndim != len(dims):
                hint = ""
                if value.ndim == len(dims) - 1:
                    hint = "; a single sample without a batch axis? add one with array[None]"
                raise CalibrationError(
                    f"{where} has rank {value.ndim} (shape {_fmt_shape(value.shape)}), expected rank {len(dims)} "
                    f"{format_dims(dims)}{hint}")
            names = _axis_names(dims)
            for axis, (got, want) in enumerate(zip(value.shape, dims)):
                if not is_static(want) or got == want:
                    continue
                if axis == 0:
                    raise CalibrationError(
                        f"{where} has a batch of {got} but the model has a fixed batch size of {want}: "
                        f"use --batch-size {want} (batch_size={want} in Python)")
                hint = _layout_hint(value.shape, dims)
                if not hint and names[axis] == "channels" and {got, want} == {1, 3}:
                    hint = ("; set Preprocess(grayscale=True) for a 1-channel model"
                            if want == 1 else "; set Preprocess(grayscale=False) for a 3-channel model")
                raise CalibrationError(
                    f"{where} has shape {_fmt_shape(value.shape)}, expected {format_dims(dims)}: "
                    f"wrong {names[axis]} ({got} instead of {want}){hint}")
        finite = np.isfinite(value)
        if not finite.all():
            bad = int(value.size - np.count_nonzero(finite))
            first = int(np.argwhere(~finite)[0][0])
            raise CalibrationError(
                f"{where} has {bad} NaN/Inf value(s) (first in sample {first} of the batch); "
                "calibration data must be finite")
    if len(set(batch_sizes.values())) > 1:
        sizes = ", ".join(f"'{n}': {b}" for n, b in batch_sizes.items())
        raise CalibrationError(f"{source}: inputs disagree on the batch size ({sizes})")
