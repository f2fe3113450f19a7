"""Finding, reading and writing the prunable weights of a model.

A weight is the constant input of a Conv / ConvTranspose / Gemm / MatMul.
Exporters keep constants in three places: ``graph.initializer`` (PyTorch),
``graph.sparse_initializer`` (our own sparse output) and ``Constant`` nodes
(PaddlePaddle); all three are handled, and a tensor consumed by several
nodes is one weight, sparsified once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.layout import node_attrs, weight_layout

logger = logging.getLogger(__name__)

INITIALIZER = "initializer"
SPARSE_INITIALIZER = "sparse_initializer"
CONSTANT = "constant"
CONSTANT_SPARSE = "constant_sparse"


@dataclass(frozen=True)
class WeightRef:
    """Where one prunable weight lives and who consumes it."""

    name: str
    source: str
    shape: tuple[int, ...]
    consumers: tuple[tuple[int, int], ...]  # (node index, input slot)
    op_types: tuple[str, ...]
    node_names: tuple[str, ...]
    order: int  # index of the first consumer in the (topologically sorted) node list
    out_axis: int  # axis of the output channels, for the structured-zero count
    constant_node: int | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def shared(self) -> bool:
        return len(self.consumers) > 1


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A printable name for a node, also for exporters that leave names empty."""
    return node.name or f"{node.op_type}#{index}"


def sparse_to_array(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """Dense numpy array of an ONNX sparse tensor (linear or coordinate indices)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), shape)
    dense[indices] = values
    return dense.reshape(shape)


def array_to_sparse(array: np.ndarray, name: str) -> onnx.SparseTensorProto:
    """ONNX sparse tensor with linear int64 indices (the only index type the checker accepts)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    nz = np.flatnonzero(flat)
    values = numpy_helper.from_array(flat[nz].copy(), name)
    indices = numpy_helper.from_array(nz.astype(np.int64), f"{name}.indices")
    return helper.make_sparse_tensor(values, indices, list(array.shape))


def sparse_nbytes(nnz: int) -> int:
    """Payload bytes of a float32 sparse tensor: 4 per value plus 8 per int64 index."""
    return 12 * int(nnz)


class ConstantIndex:
    """Name -> place of every constant tensor of the main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.initializers = {t.name: i for i, t in enumerate(graph.initializer)}
        self.sparse = {t.values.name: i for i, t in enumerate(graph.sparse_initializer)}
        self.constants: dict[str, int] = {}
        for i, node in enumerate(graph.node):
            if node.op_type == "Constant" and len(node.output) == 1:
                names = {a.name for a in node.attribute}
                if "value" in names or "sparse_value" in names:
                    self.constants[node.output[0]] = i

    def source(self, name: str) -> str | None:
        if name in self.initializers:
            return INITIALIZER
        if name in self.sparse:
            return SPARSE_INITIALIZER
        if name in self.constants:
            return CONSTANT
        return None

    def __contains__(self, name: str) -> bool:
        return self.source(name) is not None


def _place(model: onnx.ModelProto, consts: ConstantIndex, name: str) -> tuple[str | None, int | None]:
    """(storage, Constant node index) of a constant; a Constant node holding a sparse_value is CONSTANT_SPARSE."""
    source = consts.source(name)
    const_node = consts.constants.get(name)
    if source == CONSTANT and any(a.name == "sparse_value" for a in model.graph.node[const_node].attribute):
        source = CONSTANT_SPARSE
    return source, const_node


def _weight_slot(node: onnx.NodeProto, consts: ConstantIndex) -> int | None:
    if node.op_type in ("Conv", "ConvTranspose"):
        return 1 if len(node.input) > 1 and node.input[1] in consts else None
    if node.op_type in ("Gemm", "MatMul"):
        a = len(node.input) > 0 and node.input[0] in consts
        b = len(node.input) > 1 and node.input[1] in consts
        if a and b:
            return None  # constant-folding leftover, not a layer
        if b:
            return 1
        if a:
            return 0
    return None


def _out_axis(node: onnx.NodeProto, slot: int) -> int:
    """Axis of the output channels of the weight in ``slot`` (for the structured-zero count)."""
    attrs = node_attrs(node)
    if slot == 0:  # a constant left operand of Gemm / MatMul: its rows are the outputs
        return (1 if attrs.get("transA", 0) else 0) if node.op_type == "Gemm" else -2
    layout = weight_layout(node.op_type, attrs)
    # The layout counts axes of a 2-D MatMul weight [K, N]; from the end they also hold for batched [..., K, N].
    return layout.out_axis - 2 if node.op_type == "MatMul" else layout.out_axis


def _shape_and_type(model: onnx.ModelProto, name: str, consts: ConstantIndex) -> tuple[tuple[int, ...], int]:
    source = consts.source(name)
    if source == INITIALIZER:
        t = model.graph.initializer[consts.initializers[name]]
        return tuple(int(d) for d in t.dims), t.data_type
    if source == SPARSE_INITIALIZER:
        s = model.graph.sparse_initializer[consts.sparse[name]]
        return tuple(int(d) for d in s.dims), s.values.data_type
    node = model.graph.node[consts.constants[name]]
    for attr in node.attribute:
        if attr.name == "value":
            return tuple(int(d) for d in attr.t.dims), attr.t.data_type
        if attr.name == "sparse_value":
            return tuple(int(d) for d in attr.sparse_tensor.dims), attr.sparse_tensor.values.data_type
    return (), 0


def find_weights(model: onnx.ModelProto, op_types: tuple[str, ...],
                 exclude: tuple[str, ...] = ()) -> tuple[list[WeightRef], list[str]]:
    """The float32 weights consumed by ``op_types`` nodes, minus the excluded ones.

    ``exclude`` holds node or weight names, glob patterns allowed. Returns the
    weights in topological order of their first consumer, and notes on what
    was skipped and why.
    """
    consts = ConstantIndex(model)
    found: dict[str, dict] = {}
    notes: list[str] = []
    used_patterns: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if node.op_type not in op_types:
            continue
        slot = _weight_slot(node, consts)
        if slot is None:
            continue
        name = node.input[slot]
        entry = found.setdefault(name, {"consumers": [], "ops": [], "nodes": [], "order": index,
                                        "out_axis": _out_axis(node, slot), "excluded": False})
        entry["consumers"].append((index, slot))
        entry["ops"].append(node.op_type)
        entry["nodes"].append(node_label(node, index))
        for pattern in exclude:
            if fnmatch.fnmatchcase(node.name, pattern) or fnmatch.fnmatchcase(name, pattern):
                entry["excluded"] = True
                used_patterns.add(pattern)
    refs: list[WeightRef] = []
    for name, entry in found.items():
        if entry["excluded"]:
            notes.append(f"{name}: excluded")
            continue
        shape, dtype = _shape_and_type(model, name, consts)
        if dtype != onnx.TensorProto.FLOAT:
            notes.append(f"{name}: skipped, not float32")
            continue
        if len(shape) < 1 or int(np.prod(shape, dtype=np.int64)) < 2:
            notes.append(f"{name}: skipped, fewer than 2 values")
            continue
        source, const_node = _place(model, consts, name)
        refs.append(WeightRef(
            name=name, source=source, shape=shape, consumers=tuple(entry["consumers"]),
            op_types=tuple(entry["ops"]), node_names=tuple(entry["nodes"]), order=entry["order"],
            out_axis=entry["out_axis"], constant_node=const_node,
        ))
    for pattern in exclude:
        if pattern not in used_patterns:
            notes.append(f"exclude pattern {pattern!r} matched no {'/'.join(op_types)} node or weight")
            logger.warning("exclude pattern %r matched no node or weight", pattern)
    refs.sort(key=lambda r: r.order)
    return refs, notes


def read_weight(model: onnx.ModelProto, ref: WeightRef) -> np.ndarray:
    """The weight as a dense float32 array, whatever its storage."""
    graph = model.graph
    if ref.source == INITIALIZER:
        tensor = next(t for t in graph.initializer if t.name == ref.name)
        return numpy_helper.to_array(tensor).astype(np.float32, copy=True)
    if ref.source == SPARSE_INITIALIZER:
        sparse = next(s for s in graph.sparse_initializer if s.values.name == ref.name)
        return sparse_to_array(sparse).astype(np.float32, copy=True)
    node = graph.node[ref.constant_node]
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t).astype(np.float32, copy=True)
        if attr.name == "sparse_value":
            return sparse_to_array(attr.sparse_tensor).astype(np.float32, copy=True)
    raise KeyError(ref.name)


def write_weights(model: onnx.ModelProto, refs: list[WeightRef], arrays: dict[str, np.ndarray],
                  sparse: frozenset[str] = frozenset()) -> list[WeightRef]:
    """Store ``arrays`` in place of the weights; names in ``sparse`` as ONNX sparse tensors.

    Returns the refs updated to their new storage (initializers keep their
    position in the graph so diffs of the model stay small).
    """
    graph = model.graph
    by_name = {r.name: r for r in refs}
    dense_inits: dict[str, onnx.TensorProto] = {}
    sparse_inits: dict[str, onnx.SparseTensorProto] = {}
    updated: list[WeightRef] = []
    for name, array in arrays.items():
        ref = by_name[name]
        array = np.asarray(array, dtype=np.float32).reshape(ref.shape)
        as_sparse = name in sparse
        if ref.source in (CONSTANT, CONSTANT_SPARSE):
            node = graph.node[ref.constant_node]
            kept = [a for a in node.attribute if a.name not in ("value", "sparse_value")]
            del node.attribute[:]
            node.attribute.extend(kept)
            if as_sparse:
                node.attribute.append(helper.make_attribute("sparse_value", array_to_sparse(array, name)))
            else:
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(array, name)))
            source = CONSTANT_SPARSE if as_sparse else CONSTANT
        elif as_sparse:
            sparse_inits[name] = array_to_sparse(array, name)
            source = SPARSE_INITIALIZER
        else:
            dense_inits[name] = numpy_helper.from_array(array, name)
            source = INITIALIZER
        updated.append(WeightRef(
            name=ref.name, source=source, shape=ref.shape, consumers=ref.consumers, op_types=ref.op_types,
            node_names=ref.node_names, order=ref.order, out_axis=ref.out_axis, constant_node=ref.constant_node,
        ))
    if dense_inits and not sparse_inits:
        # Dense stays dense (every re-fit step): overwrite in place, no rebuild of the list.
        for tensor in graph.initializer:
            if tensor.name in dense_inits:
                tensor.CopyFrom(dense_inits.pop(tensor.name))
    if dense_inits or sparse_inits:
        moving = set(dense_inits) | set(sparse_inits)
        new_dense: list[onnx.TensorProto] = []
        for tensor in graph.initializer:
            if tensor.name in dense_inits:
                new_dense.append(dense_inits.pop(tensor.name))
            elif tensor.name not in moving:
                new_dense.append(tensor)
        new_dense.extend(dense_inits.values())  # weights that were sparse before
        new_sparse: list[onnx.SparseTensorProto] = []
        for tensor in graph.sparse_initializer:
            if tensor.values.name in sparse_inits:
                new_sparse.append(sparse_inits.pop(tensor.values.name))
            elif tensor.values.name not in moving:
                new_sparse.append(tensor)
        new_sparse.extend(sparse_inits.values())
        del graph.initializer[:]
        graph.initializer.extend(new_dense)
        del graph.sparse_initializer[:]
        graph.sparse_initializer.extend(new_sparse)
    untouched = [r for r in refs if r.name not in arrays]
    return sorted(updated + untouched, key=lambda r: r.order)


def constant_ref(model: onnx.ModelProto, name: str, consts: ConstantIndex | None = None) -> WeightRef:
    """A WeightRef for any constant (a bias), so the weight readers and writers apply to it."""
    source, const_node = _place(model, consts if consts is not None else ConstantIndex(model), name)
    ref = WeightRef(name=name, source=source or INITIALIZER, shape=(), consumers=(), op_types=(), node_names=(),
                    order=0, out_axis=0, constant_node=const_node)
    return dataclasses.replace(ref, shape=tuple(read_weight(model, ref).shape))
