"""Cutting a graph into runnable pieces, and exposing its intermediate tensors.

The probe, recovery, the oracle and sparse re-fitting all run part of a
model, or read tensors that are not graph outputs. onnxruntime runs every
node of a graph whether its result is needed or not, reads outer-scope names
inside If/Loop/Scan bodies, and wants each graph input typed; getting one of
these wrong gives a model that runs slowly or not at all, so it is done here
once.
"""

from __future__ import annotations

from typing import Collection, Mapping, Optional, Sequence, Union

import onnx
from onnx import helper

__all__ = ["expose", "free_inputs", "extract", "extract_reached", "prefix", "implicit_inputs"]


def implicit_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope names read by the subgraphs of an If/Loop/Scan node (in order, may repeat)."""
    names: list[str] = []
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            local |= {t.values.name for t in g.sparse_initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                names.extend(x for x in list(n.input) + implicit_inputs(n) if x and x not in local)
    return names


def _reads(node: onnx.NodeProto) -> list[str]:
    return [x for x in list(node.input) + implicit_inputs(node) if x]


def _model_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    g = model.graph
    return {vi.name: vi.type for vi in list(g.value_info) + list(g.input) + list(g.output) if vi.type.ByteSize()}


def _typed(name: str, known: Mapping[str, onnx.TypeProto], types: Optional[Mapping[str, int]],
           default: Optional[int]) -> onnx.ValueInfoProto:
    """A value info for ``name``: the model's type (without its shape), else ``types``, else ``default``.

    Sizes are dropped on purpose (only the rank is kept): a piece is often
    run at another batch size than the one shape inference saw. ``default=None`` leaves the type unset
    (onnxruntime then takes whatever the producing node gives).
    """
    t = known.get(name)
    if t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type:
        vi = helper.make_tensor_value_info(name, t.tensor_type.elem_type, None)
        if t.tensor_type.HasField("shape"):  # keep the rank (the checker wants a shape), not the sizes
            for _ in t.tensor_type.shape.dim:
                vi.type.tensor_type.shape.dim.add()
        return vi
    if t is not None and not t.HasField("tensor_type"):
        vi = onnx.ValueInfoProto(name=name)
        vi.type.CopyFrom(t)
        return vi
    if types is not None and types.get(name):
        return helper.make_tensor_value_info(name, int(types[name]), None)
    if default is None:
        return onnx.ValueInfoProto(name=name)
    return helper.make_tensor_value_info(name, default, None)


def expose(model: onnx.ModelProto, names: Sequence[str],
           types: Optional[Mapping[str, int]] = None) -> onnx.ModelProto:
    """A copy of ``model`` with the named tensors added as graph outputs (each once).

    The element type comes from ``types``, else the model's value info, else FLOAT.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    known = _model_types(model)
    for name in names:
        if not name or name in have:
            continue
        if types is not None and types.get(name):
            out.graph.output.append(helper.make_tensor_value_info(name, int(types[name]), None))
        else:
            out.graph.output.append(_typed(name, known, None, onnx.TensorProto.FLOAT))
        have.add(name)
    return out


def free_inputs(nodes: Sequence[onnx.NodeProto], known: Collection[str]) -> list[str]:
    """Names the nodes read that none of them produces and that are not in ``known``, in first-use order.

    Outer-scope names read inside If/Loop/Scan bodies count as reads.
    """
    produced = {o for n in nodes for o in n.output if o}
    known = set(known)
    names: list[str] = []
    seen: set[str] = set()
    for n in nodes:
        for x in _reads(n):
            if x not in produced and x not in known and x not in seen:
                seen.add(x)
                names.append(x)
    return names


def extract(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto],
            outputs: Sequence[Union[str, onnx.ValueInfoProto]], *,
            types: Optional[Mapping[str, int]] = None, name: str = "subgraph") -> tuple[onnx.ModelProto, list[str]]:
    """A runnable model of exactly ``nodes`` (in the given order), and the names it must be fed.

    Its inputs are the free inputs of ``nodes`` (typed from the model's value
    info, else ``types``, else FLOAT); the initializers they use are copied
    once; opset imports, IR version and local functions come from ``model``.
    An output given by name is typed like an input, or left untyped when
    nothing is known about it. Every output must be computed by ``nodes`` or
    be one of its inputs (ValueError otherwise: onnxruntime would reject the
    model with a message that names no cause); :func:`extract_reached`
    keeps only the outputs a cut computes.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    sparse = {t.values.name: t for t in g.sparse_initializer}
    feeds = free_inputs(nodes, set(inits) | set(sparse))
    available = {o for n in nodes for o in n.output if o} | set(feeds)
    missing = [o for o in (x.name if isinstance(x, onnx.ValueInfoProto) else x for x in outputs) if o not in available]
    if missing:
        raise ValueError(f"{name}: output(s) {', '.join(missing)} are not computed by its {len(nodes)} node(s)")
    known = _model_types(model)
    used = {x for n in nodes for x in _reads(n)}
    graph = onnx.GraphProto(name=name)
    graph.node.extend(nodes)
    # the model's own inputs keep their declared shapes (valid at any batch the model takes, and
    # onnxruntime plans the same kernels as for the whole model); other cut points keep only their rank
    declared = {i.name: i for i in g.input}
    graph.input.extend(declared[x] if x in declared else _typed(x, known, types, onnx.TensorProto.FLOAT)
                       for x in feeds)
    for o in outputs:
        graph.output.append(o if isinstance(o, onnx.ValueInfoProto) else _typed(o, known, types, None))
    graph.initializer.extend(t for t in g.initializer if t.name in used)
    graph.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in used)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)
    return out, feeds


def extract_reached(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], outputs: Sequence[str], *,
                    types: Optional[Mapping[str, int]] = None,
                    name: str = "subgraph") -> tuple[onnx.ModelProto, list[str], list[int]]:
    """:func:`extract` with only those of ``outputs`` the nodes compute, and their positions in ``outputs``.

    A suffix of a multi-output model (per-level detection heads, multi-task
    heads) that starts after a head's last node cannot compute that head;
    nothing in the suffix changes it either, so a caller takes it from a run
    of the whole model. At least one output must be computed.
    """
    produced = {o for n in nodes for o in n.output if o}
    kept = [i for i, o in enumerate(outputs) if o in produced]
    if not kept:
        raise ValueError(f"{name}: its {len(nodes)} node(s) compute none of the outputs {', '.join(outputs)}")
    sub, feeds = extract(model, nodes, [outputs[i] for i in kept], types=types, name=name)
    return sub, feeds, kept


def prefix(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """Only the nodes ``outputs`` depend on (onnxruntime runs every node of a graph, needed or not)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    need: set[int] = set()
    stack = list(outputs)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in need:
            continue
        need.add(i)
        stack.extend(_reads(nodes[i]))
    sub, _ = extract(model, [nodes[i] for i in sorted(need)], list(outputs), name="prefix")
    return sub
