"""Bring any exported model into one canonical form before analysis.

Exporters differ: PaddlePaddle stores every weight in a ``Constant`` node,
PyTorch computes ``Pad`` amounts in shape sub-graphs, some models carry stale
value_info. Folding constants turns all of these into plain constant tensors
the channel analysis can read and rewrite; shape inference then gives dtypes
for every tensor. The folded model computes the same function and is what
onnxprune rewrites and writes out.
"""

from __future__ import annotations

import gc
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import InvalidModelError
from .external import infer_large, needs_external, serialized_size, weight_stub
from .shape_targets import constant_reshape_targets

logger = logging.getLogger(__name__)


def _drop_io_value_info(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without value_info entries for graph inputs/outputs.

    They only repeat the declared type, and when stale they override it on
    import: onnxconverter_common's float16 conversion with keep_io_types
    leaves a float16 value_info for a float32 graph output.
    """
    io = {v.name for v in list(proto.graph.input) + list(proto.graph.output)}
    if not any(v.name in io for v in proto.graph.value_info):
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    kept = [v for v in out.graph.value_info if v.name not in io]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    return out


def to_graph(proto: onnx.ModelProto) -> gs.Graph:
    """Import a proto into onnx-graphsurgeon with all constants folded.

    Folding an If with a constant condition inlines its branch and renames the
    branch's tensors inside the proto it was imported from, so a model with
    sub-graphs is imported from a copy: the caller's proto must stay as it was.
    """
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in proto.graph.node for a in node.attribute):
        proto = _copy(proto)
    graph = gs.import_onnx(_drop_io_value_info(proto))
    _constant_nodes_to_constants(graph)
    try:
        graph.fold_constants(fold_shapes=True, error_ok=True)
    except Exception as exc:  # noqa: BLE001 - folding is best effort; analysis refuses what stays unknown
        logger.warning("constant folding stopped early: %s", exc)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _constant_nodes_to_constants(graph: gs.Graph) -> None:
    """Replace ``Constant`` nodes by constant tensors (Paddle stores all weights this way)."""
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        attrs = node.attrs
        if "value" in attrs:
            value = attrs["value"]
            arr = value.values if isinstance(value, gs.Constant) else np.asarray(value)
        elif "value_float" in attrs:
            arr = np.array(attrs["value_float"], dtype=np.float32)
        elif "value_floats" in attrs:
            arr = np.array(attrs["value_floats"], dtype=np.float32)
        elif "value_int" in attrs:
            arr = np.array(attrs["value_int"], dtype=np.int64)
        elif "value_ints" in attrs:
            arr = np.array(attrs["value_ints"], dtype=np.int64)
        else:
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name, np.asarray(arr))
        for consumer in list(out.outputs):
            for i, inp in enumerate(consumer.inputs):
                if inp is out:
                    consumer.inputs[i] = const
        for i, g_out in enumerate(graph.outputs):
            if g_out is out:
                # A constant graph output: keep the node, nothing to prune there.
                break
        else:
            node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)


def to_proto(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph, keeping the original model's metadata, IR version and opsets."""
    proto = gs.export_onnx(graph, do_type_check=False)
    proto.ir_version = like.ir_version
    del proto.opset_import[:]
    proto.opset_import.extend(like.opset_import)
    proto.producer_name = like.producer_name
    proto.producer_version = like.producer_version
    proto.doc_string = like.doc_string
    proto.model_version = like.model_version
    del proto.metadata_props[:]
    proto.metadata_props.extend(like.metadata_props)
    del proto.functions[:]
    proto.functions.extend(like.functions)
    return proto


_COLLECT_ABOVE = 64 << 20


def _stub_weights(graph: gs.Graph) -> dict[str, onnx.TensorProto | np.ndarray]:
    """Point the graph's large constants at stubs; returns {name: the TensorProto or array they hold}.

    onnx-graphsurgeon's export copies every initializer twice (into the graph,
    then the graph into the model), and protobuf keeps the first copy's memory
    as long as the model lives: a big model's weights would be held three
    times at once. Exported as stubs, they are copied in once after.
    """
    from onnx_graphsurgeon.ir.tensor import LazyValues
    sources: dict[str, onnx.TensorProto | np.ndarray] = {}
    for t in graph.tensors().values():
        if not isinstance(t, gs.Constant) or t.data_location is not None:
            continue
        values = t._values
        if isinstance(values, LazyValues):
            if isinstance(values.tensor, onnx.TensorProto) and values.tensor.HasField("raw_data") \
                    and values.nbytes >= _STUB_ABOVE:
                sources[t.name] = values.tensor
                t._values = LazyValues(weight_stub(values.tensor, int(values.nbytes)))
        elif isinstance(values, np.ndarray) and values.nbytes >= _STUB_ABOVE and values.dtype in _PLAIN:
            stub = onnx.TensorProto()
            stub.name, stub.data_type = t.name, _PLAIN[values.dtype]
            stub.dims.extend(values.shape)
            sources[t.name] = values
            t._values = LazyValues(weight_stub(stub, int(values.nbytes)))
    return sources


_PLAIN = {np.dtype(d): onnx.helper.np_dtype_to_tensor_dtype(np.dtype(d))
          for d in ("float32", "float16", "float64", "int8", "uint8", "int32", "int64")}
_STUB_ABOVE = 1 << 20


def export_freeing(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """:func:`to_proto`, then the graph's arrays freed at once: its nodes and tensors refer to each
    other, so without a collection a big model's loaded weights would wait for the garbage collector.

    Unloaded large weights are exported as stubs and copied in afterwards (:func:`_stub_weights`)."""
    sources = _stub_weights(graph)
    proto = to_proto(graph, like)
    for t in proto.graph.initializer:
        source = sources.get(t.name)
        if isinstance(source, onnx.TensorProto):
            name = t.name
            t.CopyFrom(source)
            t.name = name
        elif source is not None:
            t.ClearField("data_location")
            del t.external_data[:]
            t.raw_data = np.ascontiguousarray(source, dtype=source.dtype.newbyteorder("<")).tobytes()
    graph.nodes.clear()
    graph.inputs.clear()
    graph.outputs.clear()
    if serialized_size(proto) > _COLLECT_ABOVE:  # a collection costs time; only worth it for big weights
        gc.collect()
    return proto


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that never fails the pipeline: unknown shapes are probed later."""
    try:
        if needs_external(proto):
            return infer_large(proto, check_type=False, strict_mode=False, data_prop=True)
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        logger.warning("onnx shape inference failed (%s); continuing with probed shapes", exc)
        return proto


def _fold_reshape_targets(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant targets for Reshapes whose run-time target only copies dims (:mod:`.shape_targets`).

    Runs on the shape-inferred model: which dims a ``Shape`` slice reads depends on the rank.
    """
    inits = {t.name for t in proto.graph.initializer}
    if not any(n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] not in inits for n in proto.graph.node):
        return proto
    graph = gs.import_onnx(proto)
    if not constant_reshape_targets(graph):
        return proto
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return infer_shapes(export_freeing(graph, proto))


def normalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Folded, cleaned, topologically sorted, shape-inferred copy of ``proto``."""
    graph = to_graph(proto)
    names: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in names:
            node.name = f"{node.op}_{i}" if not node.name else f"{node.name}_{i}"
        names.add(node.name)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
            tensor.shape = None
    out = infer_shapes(export_freeing(graph, proto))
    out = _fold_reshape_targets(out)
    if not out.graph.node:
        raise InvalidModelError("the model folds to a constant: nothing to prune")
    return out
