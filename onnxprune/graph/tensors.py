"""Checks on every tensor a model file declares, made before any of its data is read.

An ONNX file is untrusted input: its external-data entries name files to
open, and its dims say how much memory to allocate. Everything here runs on
the proto loaded *without* external data, so a location outside the model's
folder (``../../x``, an absolute path, a symlink out) is refused before
anything opens it, and a tensor that claims more bytes than its file holds,
or absurd dims, is refused before anything allocates for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

from ..errors import InvalidModelError

# A single tensor or input of more elements than this (16 G) is taken as hostile, not as a model.
MAX_ELEMENTS = 1 << 34


def iter_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto of ``graph`` and its sub-graphs: initializers, sparse parts, attribute values."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            elif attr.type == AttributeProto.GRAPH:
                yield from iter_tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_tensors(g)


def _itemsize(data_type: int) -> Optional[int]:
    """Bytes per element of a fixed-size type; None for strings and sub-byte types."""
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return None
    size = np.dtype(dtype).itemsize
    bits = {TensorProto.INT4, TensorProto.UINT4}
    return None if data_type in bits else size


def element_count(dims, what: str, source: str) -> int:
    """Product of ``dims``, refusing negative or absurd sizes (without overflowing)."""
    count = 1
    for d in dims:
        d = int(d)
        if d < 0:
            raise InvalidModelError(f"{source}: {what} has a negative dimension ({list(dims)})")
        count *= d
        if count > MAX_ELEMENTS:
            raise InvalidModelError(f"{source}: {what} declares absurd dimensions {list(dims)} "
                                    f"(more than {MAX_ELEMENTS:,} elements)")
    return count


def _external_info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _inside(base: Path, location: str, name: str, source: str) -> Path:
    """The data file of one tensor, refused unless it resolves (symlinks too) inside ``base``."""
    if not location:
        raise InvalidModelError(f"{source}: tensor {name!r} has external data without a location")
    if os.path.isabs(location) or Path(location).drive or location.startswith(("/", "\\")):
        raise InvalidModelError(f"{source}: tensor {name!r} points at the absolute path {location!r}; "
                                "external data must sit in the model's folder")
    root = base.resolve()
    target = (base / location).resolve()
    if target != root and root not in target.parents:
        how = "through a symlink out of" if ".." not in Path(location).parts else "outside"
        raise InvalidModelError(f"{source}: tensor {name!r} points {how} the model's folder ({location!r}); refused")
    if not target.is_file():
        raise InvalidModelError(f"{source}: external data file {location!r} of tensor {name!r} is missing")
    return target


def check_tensors(proto: onnx.ModelProto, base: Optional[Path], source: str) -> bool:
    """Refuse hostile tensors before any data is read; True when some tensor has external data.

    ``base`` is the model's folder (None for a proto given in memory, which may
    then hold no external references).
    """
    has_external = False
    for t in iter_tensors(proto.graph):
        count = element_count(t.dims, f"tensor {t.name!r}", source)
        size = _itemsize(t.data_type)
        if t.data_location == TensorProto.EXTERNAL:
            has_external = True
            if base is None:
                raise InvalidModelError(f"{source}: tensor {t.name!r} refers to external data, "
                                        "but the model was given in memory; load it from its file")
            info = _external_info(t)
            path = _inside(base, info.get("location", ""), t.name, source)
            try:
                offset = int(info.get("offset", 0) or 0)
                length = int(info["length"]) if info.get("length") else None
            except ValueError:
                raise InvalidModelError(f"{source}: tensor {t.name!r} has a malformed external offset/length") from None
            need = count * size if size is not None else None
            if offset < 0 or (length is not None and length < 0):
                raise InvalidModelError(f"{source}: tensor {t.name!r} has a negative external offset/length")
            if length is not None and need is not None and length != need:
                raise InvalidModelError(f"{source}: tensor {t.name!r} declares {length:,} bytes, "
                                        f"its shape {list(t.dims)} needs {need:,}")
            avail = path.stat().st_size - offset
            want = length if length is not None else need
            if want is not None and want > avail:
                raise InvalidModelError(f"{source}: tensor {t.name!r} needs {want:,} bytes but its data file "
                                        f"{path.name!r} holds {max(avail, 0):,} from offset {offset:,}")
        elif t.HasField("raw_data") and size is not None and len(t.raw_data) != count * size:
            raise InvalidModelError(f"{source}: tensor {t.name!r} holds {len(t.raw_data):,} bytes, "
                                    f"its shape {list(t.dims)} needs {count * size:,}")
    return has_external


def check_input_dims(proto: onnx.ModelProto, source: str) -> None:
    """Refuse graph inputs whose fixed dims alone are absurd (the probe would allocate them)."""
    for vi in proto.graph.input:
        # Paddle writes dynamic dims as -1: only the positive, fixed ones count
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value") and d.dim_value > 0]
        element_count(dims, f"input {vi.name!r}", source)
