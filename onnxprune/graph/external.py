"""Models whose weights live beside them (ONNX external data), handled without copying the weights.

protobuf cannot serialise a message of 2 GiB or more, so a big model is
written (and handed to onnxruntime or the checker) as a *skeleton*: the
graph with each large tensor replaced by a stub that names its bytes in a
data file. :func:`write_with_external_data` streams the weights one tensor at
a time, so writing costs no second copy of them; :func:`skeleton` gives the
stubs plus the arrays for onnxruntime's ``add_initializer``.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

logger = logging.getLogger(__name__)

SIZE_THRESHOLD = 1024  # bytes; smaller tensors stay inline (shape inference reads the small ones)
_ALIGN = 64


def _stub(t: TensorProto) -> TensorProto:
    """Name, type and dims of ``t`` without its data."""
    stub = TensorProto()
    stub.name = t.name
    stub.data_type = t.data_type
    stub.dims.extend(t.dims)
    if t.doc_string:
        stub.doc_string = t.doc_string
    return stub


def _is_large(t: TensorProto, threshold: int) -> bool:
    return t.HasField("raw_data") and len(t.raw_data) >= threshold


def _copy_field(dst, desc, value) -> None:
    if desc.is_repeated:
        getattr(dst, desc.name).extend(value)
    elif desc.type == desc.TYPE_MESSAGE:
        getattr(dst, desc.name).CopyFrom(value)
    else:
        setattr(dst, desc.name, value)


def _shell(proto: onnx.ModelProto, on_initializer: Callable[[TensorProto], TensorProto]) -> onnx.ModelProto:
    """A copy of ``proto`` whose top-level initializers are whatever ``on_initializer`` makes of them.

    Only the graph's initializers are touched (normalisation has turned
    Constant nodes into initializers), so the copy costs the graph's structure,
    never its weights.
    """
    out = onnx.ModelProto()
    for desc, value in proto.ListFields():
        if desc.name != "graph":
            _copy_field(out, desc, value)
    graph = out.graph
    for desc, value in proto.graph.ListFields():
        if desc.name != "initializer":
            _copy_field(graph, desc, value)
    for t in proto.graph.initializer:
        graph.initializer.append(on_initializer(t))
    return out


def write_with_external_data(proto: onnx.ModelProto, model_path: Path, data_name: str,
                             threshold: int = SIZE_THRESHOLD, *, align: int = _ALIGN,
                             weights: Optional[onnx.ModelProto] = None) -> None:
    """Write ``proto`` to ``model_path`` and its large tensors to ``data_name`` in the same folder.

    The proto itself is left as it was (onnx's own saver strips the caller's
    tensors in place). ``weights``: where a :func:`skeleton` stub of ``proto``
    finds its bytes (the model the skeleton was made from).
    """
    data_path = model_path.parent / data_name
    source = {t.name: t for t in weights.graph.initializer} if weights is not None else {}
    with open(data_path, "wb") as f:
        def external(t: TensorProto) -> TensorProto:
            if _is_stub(t) and t.name in source:
                t = source[t.name]
            if not _is_large(t, threshold):
                return t
            pad = (-f.tell()) % align
            f.write(b"\0" * pad)
            offset = f.tell()
            data = t.raw_data
            f.write(data)
            stub = _stub(t)
            stub.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, value
            return stub

        shell = _shell(proto, external)
        f.flush()
    model_path.write_bytes(shell.SerializeToString())


STUB_LOCATION = "onnxprune-weights.bin"


def skeleton(proto: onnx.ModelProto, threshold: int = SIZE_THRESHOLD, *,
             with_arrays: bool = True) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The graph with large initializers as stubs pointing at external data, and (``with_arrays``)
    those initializers as arrays.

    onnxruntime takes the arrays through ``add_external_initializers``, so a
    session over a big model needs no serialised copy of it; the checker and
    shape inference need only the stubs.
    """
    arrays: dict[str, np.ndarray] = {}

    def strip(t: TensorProto) -> TensorProto:
        if not _is_large(t, threshold):
            return t
        if with_arrays:
            arrays[t.name] = numpy_helper.to_array(t)
        return weight_stub(t, len(t.raw_data))

    return _shell(proto, strip), arrays


def weight_stub(t: TensorProto, length: int) -> TensorProto:
    """A stub of ``t`` (``length`` bytes of raw data) as :func:`skeleton` makes them."""
    stub = _stub(t)
    stub.data_location = TensorProto.EXTERNAL
    for key, value in (("location", STUB_LOCATION), ("offset", "0"), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def _is_stub(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == STUB_LOCATION for e in t.external_data)


PAGE = 4096  # onnxruntime maps external data whose offset is page-aligned instead of reading it


def session_file(model: onnx.ModelProto, folder: Path, weights: Optional[onnx.ModelProto] = None) -> Path:
    """``model`` written into ``folder`` for onnxruntime to open by path, weights page-aligned beside it.

    onnxruntime copies weights handed to it as arrays (the arrays and its copy
    are both held while the session is built) but maps page-aligned external
    data from the file: a session then holds the weights once, as file pages
    the kernel can drop. ``weights`` as in :func:`write_with_external_data`.
    """
    path = folder / "model.onnx"
    write_with_external_data(model, path, "model.onnx.data", align=PAGE, weights=weights)
    return path


def release_memory() -> None:
    """Collect cyclic garbage (onnx-graphsurgeon graphs hold arrays in cycles) and hand freed heap back.

    Called before a big model's session is built, where the peak is: what
    was freed but not yet returned would otherwise count on top of it.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the collection alone
        pass


def check_skeleton(stubs: onnx.ModelProto) -> None:
    """The ONNX checker on a skeleton: it wants the data file to exist, never reads it, so an empty one does."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as tmp:
        (Path(tmp) / STUB_LOCATION).write_bytes(b"")
        (Path(tmp) / "model.onnx").write_bytes(stubs.SerializeToString())
        onnx.checker.check_model(str(Path(tmp) / "model.onnx"))


def infer_large(proto: onnx.ModelProto, **options) -> onnx.ModelProto:
    """Shape inference on a model too big to serialise: run on its skeleton, copy the types back.

    Returns ``proto`` itself with value_info and output types filled in.
    """
    inferred = onnx.shape_inference.infer_shapes(skeleton(proto, with_arrays=False)[0], **options)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    for mine, theirs in zip(proto.graph.output, inferred.graph.output):
        mine.type.CopyFrom(theirs.type)
    return proto


LIMIT = 1_800_000_000  # bytes; protobuf refuses 2 GiB, and a margin keeps the skeleton's own size out of it


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


_CONTAINERS = (onnx.ModelProto, onnx.GraphProto, onnx.NodeProto, onnx.FunctionProto, onnx.AttributeProto)


def serialized_size(message) -> int:
    """``message.ByteSize()`` without serialising the whole message.

    protobuf's ``ByteSize`` serialises the message into a growing buffer
    first: for a big model that briefly holds twice its weights. Here the
    containers (model, graph, node, attribute) are summed field by field, so
    only one tensor at a time is serialised; the figure is exact.
    """
    if not isinstance(message, _CONTAINERS):
        return message.ByteSize()
    scalars = type(message)()
    size = 0
    for desc, value in message.ListFields():
        if desc.type != desc.TYPE_MESSAGE:
            _copy_field(scalars, desc, value)
            continue
        tag = _varint_len(desc.number << 3)
        for item in (value if desc.is_repeated else [value]):
            n = serialized_size(item)
            size += tag + _varint_len(n) + n
    return size + scalars.ByteSize()


def needs_external(proto: onnx.ModelProto) -> bool:
    """True when ``proto`` cannot be serialised in one piece (tests lower LIMIT to exercise the path)."""
    return serialized_size(proto) > LIMIT
