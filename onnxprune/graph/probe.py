"""Concrete shapes of every tensor, measured by running the model once.

Static shape inference cannot see through dynamic Reshape targets or Paddle's
dynamic spatial dims. Running onnxruntime once on a small random batch with
every intermediate tensor exposed gives exact shapes (and the values of small
integer tensors such as Reshape targets), which the channel analysis needs
to prove what a Reshape or Flatten does to the channel axis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx

from ..errors import InvalidArgumentError, InvalidModelError
from .session import make_session
from .external import needs_external, skeleton
from .subgraph import expose
from .tensors import MAX_ELEMENTS

logger = logging.getLogger(__name__)

PROBE_BATCH = 2
DEFAULT_SPATIAL = 224
_SMALL_INT = 64


@dataclass
class Probe:
    """Shapes (batch ``PROBE_BATCH``) and small integer values of every tensor."""

    input_shapes: dict[str, tuple[int, ...]]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    int_values: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)


def graph_input_dims(proto: onnx.ModelProto) -> dict[str, list]:
    """Declared dims of the real (non-initializer) inputs: int or the symbolic name/None."""
    inits = {t.name for t in proto.graph.initializer}
    dims: dict[str, list] = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        shape = inp.type.tensor_type.shape
        dims[inp.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                          for d in shape.dim]
    return dims


def fixed_batch_of(proto: onnx.ModelProto) -> Optional[int]:
    """The batch size the model's inputs fix (a static first dim, as static exports have), if any does."""
    for dims in graph_input_dims(proto).values():
        if dims and isinstance(dims[0], int):
            return dims[0]
    return None


def resolve_input_shapes(proto: onnx.ModelProto, given: dict[str, list[int]] | None = None,
                         batch: int = PROBE_BATCH, *, recorded: Optional[dict[str, dict[int, int]]] = None,
                         warn: bool = True) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: user-given ones, else declared dims with batch and ``recorded`` sizes
    ({input: {axis: size}}, see :mod:`.sizes`), else the spatial default."""
    recorded = recorded or {}
    given = dict(given or {})
    out: dict[str, tuple[int, ...]] = {}
    for name, dims in graph_input_dims(proto).items():
        if name in given:
            shape = list(given.pop(name))
            if len(shape) != len(dims):
                raise InvalidArgumentError(f"input shape for {name!r} has rank {len(shape)}, the model expects {len(dims)}")
            for i, (s, d) in enumerate(zip(shape, dims)):
                if isinstance(d, int) and i > 0 and s != d:
                    raise InvalidArgumentError(f"input {name!r} dim {i} is fixed to {d} in the model, got {s}")
            if dims:  # the batch is the probe's, or the model's own where it fixes one
                shape[0] = dims[0] if isinstance(dims[0], int) else batch
            if any(int(s) < 1 for s in shape) or int(np.prod([float(s) for s in shape])) > MAX_ELEMENTS:
                raise InvalidArgumentError(f"input shape for {name!r} {shape} must have dims >= 1 and at most "
                                           f"{MAX_ELEMENTS:,} elements")
            out[name] = tuple(int(s) for s in shape)
            continue
        shape = []
        for i, d in enumerate(dims):
            if isinstance(d, int):
                shape.append(d)
            elif i == 0:
                shape.append(batch)
            elif i in recorded.get(name, {}):
                shape.append(int(recorded[name][i]))
            else:
                shape.append(DEFAULT_SPATIAL)
                if warn:
                    logger.warning("input %s dim %d is dynamic; probing with %d (pass input_shapes to choose)",
                                   name, i, DEFAULT_SPATIAL)
        out[name] = tuple(shape)
    if given:
        raise InvalidArgumentError(f"unknown input name(s) {sorted(given)}; the model has {sorted(out)}")
    return out


_NP_OF_ONNX = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.BOOL: np.bool_,
}


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX element type (0, unknown, is float32)."""
    return np.dtype(_NP_OF_ONNX.get(elem_type or onnx.TensorProto.FLOAT, np.float32))


def input_dtypes(proto: onnx.ModelProto) -> dict[str, np.dtype]:
    """numpy dtype of every real (non-initializer) input: what a feed must hold (float16 models too)."""
    inits = {t.name for t in proto.graph.initializer}
    return {i.name: np_dtype(i.type.tensor_type.elem_type) for i in proto.graph.input if i.name not in inits}


def random_inputs(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs of the given shapes (ints get zeros)."""
    rng = np.random.default_rng(seed)
    types = input_dtypes(proto)
    feeds = {}
    for name, shape in shapes.items():
        dtype = types.get(name, np.dtype(np.float32))
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds


def probe(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> Probe:
    """Run the model once with every typed intermediate tensor exposed as an output."""
    result = Probe(input_shapes=dict(input_shapes))
    typed = {vi.name: vi.type.tensor_type.elem_type for vi in proto.graph.value_info
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        typed[vi.name] = vi.type.tensor_type.elem_type
    weights = None
    if needs_external(proto):  # expose a skeleton: copying a big model costs its size again
        weights, proto = proto, skeleton(proto, with_arrays=False)[0]
    guessed = _guess_types(proto, typed)
    session = None
    if guessed:  # contrib ops (com.microsoft attention) stop onnx's type inference: try their inputs' type
        try:
            exposed, session = _session({**typed, **guessed}, proto, weights)
            typed.update(guessed)
        except Exception:  # noqa: BLE001 - a wrong guess: expose only what inference typed
            logger.debug("probe: guessed output types rejected, exposing inferred types only")
    if session is None:
        try:
            exposed, session = _session(typed, proto, weights)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
            raise InvalidModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    names = [o.name for o in exposed.graph.output]
    feeds = random_inputs(proto, input_shapes)
    try:
        values = session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001
        raise InvalidModelError(
            f"onnxruntime cannot run the model on inputs {input_shapes}: {str(exc).splitlines()[0]} "
            "(give the input size explicitly)") from None
    for name, arr in zip(names, values):
        arr = np.asarray(arr)
        result.shapes[name] = tuple(arr.shape)
        result.dtypes[name] = typed.get(name, 0)
        if np.issubdtype(arr.dtype, np.integer) and arr.size <= _SMALL_INT:
            result.int_values[name] = arr.copy()
    for name, shape in input_shapes.items():
        result.shapes[name] = tuple(shape)
    return result


def _session(typed: dict[str, int], proto: onnx.ModelProto, weights):
    """The model with every typed intermediate tensor exposed, and its session."""
    exposed = expose(proto, [out for node in proto.graph.node for out in node.output if out in typed], typed)
    del exposed.graph.value_info[:]
    return exposed, make_session(exposed, ["CPUExecutionProvider"], optimize=False, weights=weights)


def _guess_types(proto: onnx.ModelProto, typed: dict[str, int]) -> dict[str, int]:
    """Element types for outputs inference left untyped: the type of the node's first typed input, in order."""
    known = dict(typed)
    known.update({t.name: t.data_type for t in proto.graph.initializer})
    guessed: dict[str, int] = {}
    for node in proto.graph.node:
        src = next((known[i] for i in node.input if i in known), 0)
        for out in node.output:
            if out and out not in known and src:
                known[out] = guessed[out] = src
    return guessed
