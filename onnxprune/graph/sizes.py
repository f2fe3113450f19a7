"""Concrete sizes for a model's dynamic input dims, from what the file records, before any guess.

A data-free run must probe a model whose height/width are symbolic. The file
often says which size it was made for; the candidates, in order:

1. value_info: a stale entry for the input itself, or for a tensor that an
   elementwise op (Cast, Sub, Div, ...) or a Transpose makes from the input,
   with fixed dims;
2. exporter metadata: ``metadata_props`` whose key names a shape or size
   (``input_shape``, ``imgsz``, ``image_size`` ...) and whose value holds
   integers (a full shape, the dynamic dims, or one size for all of them);
3. fixed dims: another input of the same rank whose spatial dims are fixed
   (an image and its mask);
4. the default (:data:`~onnxprune.graph.probe.DEFAULT_SPATIAL`).

The first candidate onnxruntime can run is used; when none runs, the error
asks for ``--input-shape``.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

import onnx

from ..errors import InvalidArgumentError, InvalidModelError
from .session import make_session
from .probe import PROBE_BATCH, graph_input_dims, random_inputs, resolve_input_shapes

logger = logging.getLogger(__name__)

Recorded = dict[str, dict[int, int]]  # input name -> {axis: size} for its dynamic axes
_SAME_SHAPE = {"Cast", "Identity", "Sub", "Div", "Mul", "Add", "Relu", "Clip", "BatchNormalization"}
_KEY = re.compile(r"shape|size|imgsz|resolution", re.IGNORECASE)


def _dynamic_axes(dims: list) -> list[int]:
    return [i for i, d in enumerate(dims) if i > 0 and not isinstance(d, int)]


def _fixed(vi: onnx.ValueInfoProto) -> Optional[list[int]]:
    """Dims of a value_info, 0 for a symbolic one; None when it has no shape."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]


def _take(dims: list, values: list[int]) -> dict[int, int]:
    """Sizes for the dynamic axes of ``dims`` from a recorded shape of the same rank (0 = unknown)."""
    return {i: int(values[i]) for i in _dynamic_axes(dims) if i < len(values) and int(values[i]) > 0}


def _from_value_info(proto: onnx.ModelProto, inputs: dict[str, list]) -> Recorded:
    infos = {vi.name: vi for vi in proto.graph.value_info}
    out: Recorded = {}
    for name, dims in inputs.items():
        shapes = []
        if name in infos:
            shapes.append(_fixed(infos[name]))
        for node in proto.graph.node:
            if not node.input or node.input[0] != name or not node.output or node.output[0] not in infos:
                continue
            shape = _fixed(infos[node.output[0]])
            if shape is None or len(shape) != len(dims):
                continue
            if node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                if perm is None or sorted(perm) != list(range(len(dims))):
                    continue
                back = [0] * len(dims)
                for j, p in enumerate(perm):
                    back[p] = shape[j]
                shapes.append(back)
            elif node.op_type in _SAME_SHAPE:
                shapes.append(shape)
        for shape in shapes:
            if shape is not None and len(shape) == len(dims):
                sizes = _take(dims, shape)
                if sizes:
                    out[name] = sizes
                    break
    return out


def _from_metadata(proto: onnx.ModelProto, inputs: dict[str, list]) -> list[tuple[str, Recorded]]:
    found = []
    for prop in proto.metadata_props:
        if not _KEY.search(prop.key) or len(prop.value) > 200:
            continue
        values = [int(v) for v in re.findall(r"-?\d+", prop.value)]
        if not values:
            continue
        rec: Recorded = {}
        for name, dims in inputs.items():
            if len(inputs) > 1 and name not in prop.key:
                continue
            axes = _dynamic_axes(dims)
            if not axes:
                continue
            if len(values) == len(dims):
                sizes = _take(dims, values)
            elif len(values) == len(axes):
                sizes = {a: v for a, v in zip(axes, values) if v > 0}
            elif len(values) == 1 and values[0] > 0:
                sizes = {a: values[0] for a in axes}
            elif len(values) == 2 and len(dims) == 4 and len(axes) == 2:  # (H, W) of an image
                sizes = {a: v for a, v in zip(axes, values) if v > 0}
            else:
                continue
            if sizes:
                rec[name] = sizes
        if rec:
            found.append((f"metadata {prop.key!r}", rec))
    return found


def _from_other_inputs(inputs: dict[str, list]) -> Recorded:
    out: Recorded = {}
    for name, dims in inputs.items():
        for other, odims in inputs.items():
            if other != name and len(odims) == len(dims):
                sizes = {a: odims[a] for a in _dynamic_axes(dims) if a >= 2 and isinstance(odims[a], int)}
                if sizes:
                    out[name] = sizes
                    break
    return out


def recorded_sizes(proto: onnx.ModelProto) -> list[tuple[str, Recorded]]:
    """Candidate sizes for the dynamic (non-batch) axes, each with where it comes from, best first."""
    inputs = graph_input_dims(proto)
    if not any(_dynamic_axes(d) for d in inputs.values()):
        return []
    found = []
    vi = _from_value_info(proto, inputs)
    if vi:
        found.append(("value_info", vi))
    found += _from_metadata(proto, inputs)
    other = _from_other_inputs(inputs)
    if other:
        found.append(("fixed dims of another input", other))
    return found


def choose_input_shapes(proto: onnx.ModelProto, given: Optional[dict[str, list[int]]] = None,
                        batch: int = PROBE_BATCH) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes to probe with: the user's, else the first recorded size that runs, else the default."""
    given = dict(given or {})
    dims = graph_input_dims(proto)
    if all(name in given or not _dynamic_axes(d) for name, d in dims.items()):
        return resolve_input_shapes(proto, given, batch)
    candidates = [(src, resolve_input_shapes(proto, given, batch, recorded=rec))
                  for src, rec in recorded_sizes(proto)]
    candidates.append(("default", resolve_input_shapes(proto, given, batch, recorded={}, warn=False)))
    try:
        session = make_session(proto, ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        raise InvalidModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    tried: list[dict] = []
    error = ""
    for source, shapes in candidates:
        if shapes in tried:
            continue
        tried.append(shapes)
        try:
            session.run(None, random_inputs(proto, shapes))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.info("input sizes %s (%s) do not run: %s", shapes, source, error)
            continue
        if source == "default":
            for name, shape in shapes.items():
                for axis in _dynamic_axes(dims[name]):
                    if name not in given:
                        logger.warning("input %s dim %d is dynamic and the file records no size; probing with %d "
                                       "(pass input_shapes / --input-shape to choose)", name, axis, shape[axis])
        else:
            logger.info("dynamic input sizes from %s: %s", source, shapes)
        return shapes
    sizes = "; ".join(", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in s.items()) for s in tried)
    raise InvalidArgumentError(f"the model's input sizes are dynamic and none of the sizes tried runs ({sizes}: "
                               f"{error}); pass --input-shape NAME:1x3xHxW")
