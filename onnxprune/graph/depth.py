"""Depth as a lever: which channel groups may lose *every* channel, and what then replaces them.

Channel pruning keeps at least one channel per tensor (HALCON's rule): a
tensor of width 0 would cut the graph. A group that lives only inside a
residual branch is different. Before (ResNet basic block)::

    x -> Conv1 -> Relu -> Conv2 -> Add(., x) -> ...

With every channel of Conv1 removed, Conv2 reads zeros, so its output is
its bias at every position, and whatever pointwise ops follow (Relu, BN,
Mul by a constant) turn that into another constant ``c``. After::

    x -> Add(x, c) -> ...        (Identity when c is 0)

Conv1, Conv2 and the ops only they feed disappear. This is exact against
the masked reference (the original with the group's channels zeroed where
consumed), which computes the same ``c`` in Conv2 and adds it.

:func:`find_droppable` proves this per group, or says why not; the surgery
calls :func:`drop_branches`. A group is droppable only when every tensor
that would lose all its channels (the group's *zero tensors*) feeds only
nodes that disappear with it (their outputs are zero tensors too) or layers
(Conv/ConvTranspose/Gemm/MatMul) whose output becomes a constant; every
such constant flows only through pointwise ops into an ``Add`` whose other
operand is a live tensor of the Add's full output shape (no broadcasting
up), or into nodes that disappear. Nothing of it may reach a graph output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from .channels import ShapeUnknownError

logger = logging.getLogger(__name__)

# ops that map a (spatially uniform) constant to a constant value by value: the chain from a zero-fed layer to
# the residual Add may hold only these
POINTWISE = frozenset((
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "ThresholdedRelu", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Clip", "BatchNormalization",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean",
))
_ZERO_FED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class DropInfo:
    """What removing every channel of one group does to the graph.

    ``tensors``: tensors left without a channel; ``dead``: nodes that vanish
    with them; ``zero_fed``: layers that then read only zeros (their output
    is a constant); ``constant_nodes``: those layers and the pointwise ops
    after them (they vanish too, their value is folded); ``adds``: (Add node,
    input index) where the folded constant replaces the branch.
    """

    group: int
    tensors: frozenset[str]
    dead: tuple[str, ...]
    zero_fed: tuple[str, ...]
    constant_nodes: tuple[str, ...]
    adds: tuple[tuple[str, int], ...]


def _zero_tensors(analysis) -> dict[int, set[str]]:
    """Group id -> labelled tensors all of whose channels belong to that group."""
    out: dict[int, set[str]] = {}
    roots = analysis.root_of
    for name, lab in analysis.labels.items():
        gids = {analysis.group_of.get(int(r)) for r in np.unique(roots[lab.units])}
        if len(gids) == 1 and None not in gids:
            out.setdefault(gids.pop(), set()).add(name)
    return out


def _variables(node: gs.Node) -> list[gs.Tensor]:
    return [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]


def _examine(analysis, gid: int, zero: set[str]) -> tuple[DropInfo | None, str | None]:
    """(DropInfo, None) when the group can go entirely, else (None, why not)."""
    status = dict.fromkeys(zero, "zero")
    dead: list[str] = []
    zero_fed: list[str] = []
    constant: list[str] = []
    adds: list[tuple[str, int]] = []
    for node in analysis.graph.nodes:
        ins = _variables(node)
        if not any(t.name in status for t in ins):
            continue
        outs = [o.name for o in node.outputs]
        if outs and all(o in zero for o in outs):
            dead.append(node.name)
            continue
        live = [t for t in ins if t.name not in status]
        zero_in = [t for t in ins if status.get(t.name) == "zero"]
        if live:
            if node.op == "Add" and len(node.inputs) == 2 and not zero_in and len(live) == 1:
                other = live[0]
                try:
                    same = analysis.shape(other) == analysis.shape(node.outputs[0])
                except ShapeUnknownError as exc:
                    return None, f"residual Add {node.name!r}: shape of {exc.tensor!r} unknown"
                if not same:
                    return None, f"residual Add {node.name!r} broadcasts its other operand"
                idx = next(i for i, t in enumerate(node.inputs) if t is not other)
                adds.append((node.name, idx))
                continue
            what = "the group's channels" if zero_in else "the constant left of the branch"
            return None, f"{node.op} {node.name!r} combines {what} with a live tensor (only a residual Add may)"
        if zero_in:
            if node.op not in _ZERO_FED or node.name not in analysis.layers or node.inputs[0].name not in zero \
                    or len(zero_in) != 1 or int(node.attrs.get("group", 1)) != 1:
                return None, f"{node.op} {node.name!r} reads the group's channels and is not a layer that can read zeros"
            zero_fed.append(node.name)
        elif node.op not in POINTWISE:
            return None, f"the branch's constant flows through {node.op} {node.name!r}, which is not pointwise"
        constant.append(node.name)
        for o in outs:
            status[o] = "constant"
    for out in analysis.graph.outputs:
        if out.name in status:
            return None, f"its channels reach graph output {out.name!r}"
    if not adds:
        return None, "no residual Add takes over from the branch"
    return DropInfo(gid, frozenset(zero), tuple(dead), tuple(zero_fed), tuple(constant), tuple(adds)), None


def find_droppable(analysis) -> dict[int, DropInfo]:
    """Set ``drop_refusal`` on every group of ``analysis``; return DropInfo of the droppable ones."""
    zero = _zero_tensors(analysis)
    drops: dict[int, DropInfo] = {}
    for group in analysis.groups:
        if group.id not in zero:
            group.drop_refusal = "every tensor of the group also carries channels of other groups"
            continue
        info, why = _examine(analysis, group.id, zero[group.id])
        group.drop_refusal = why
        if info is not None:
            drops[group.id] = info
    return drops


def _zero_input_value(analysis, node: gs.Node) -> np.ndarray:
    """A layer's output when its input is all zeros, with size-1 non-channel axes: its bias (or 0)."""
    out = node.outputs[0]
    rank = len(analysis.shape(out))
    axis = analysis.labels[out.name].axis
    n = analysis.shape(out)[axis]
    dtype = node.inputs[1].values.dtype
    shape = [1] * rank
    shape[axis] = n
    value = np.zeros(shape, dtype=dtype)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if isinstance(bias, gs.Constant) and node.op != "MatMul":
        b = np.asarray(bias.values, dtype=np.float64)
        if node.op == "Gemm":
            b = float(node.attrs.get("beta", 1.0)) * np.broadcast_to(b, (1, n))
        value = value + b.reshape(shape).astype(dtype)
    return value.astype(dtype)


def branch_constants(analysis, info: DropInfo) -> dict[tuple[str, int], np.ndarray]:
    """The constant each of ``info.adds`` receives once the group is gone.

    Evaluated by onnxruntime, which also runs the masked reference the
    surgery is checked against (onnx's reference evaluator computes
    BatchNormalization differently enough to fail that check).
    """
    from .session import make_session

    nodes = {n.name: n for n in analysis.graph.nodes}
    by_output = {n.output[0]: n for n in analysis.proto.graph.node if n.output}
    inits = {t.name: t for t in analysis.proto.graph.initializer}
    fed = set(info.zero_fed)
    protos, tensors, needed = [], [], set()
    for name in info.constant_nodes:
        node = nodes[name]
        if name in fed:
            tensors.append(numpy_helper.from_array(_zero_input_value(analysis, node), node.outputs[0].name))
            continue
        proto = by_output[node.outputs[0].name]
        protos.append(proto)
        needed.update(i for i in proto.input if i in inits)
    tensors += [inits[n] for n in sorted(needed)]
    wanted = [(a, i, nodes[a].inputs[i].name) for a, i in info.adds]
    outputs = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in dict.fromkeys(w[2] for w in wanted)]
    graph = helper.make_graph(protos, "branch_constant", [], outputs, tensors)
    model = helper.make_model(graph, opset_imports=list(analysis.proto.opset_import))
    model.ir_version = analysis.proto.ir_version
    values = dict(zip([o.name for o in outputs], make_session(model).run(None, {})))
    return {(a, i): np.asarray(values[t]) for a, i, t in wanted}


def drop_branches(analysis, graph: gs.Graph, removed: np.ndarray) -> list[int]:
    """Rewire every residual Add of a fully removed droppable group in ``graph`` (an import of analysis.proto).

    The branch operand becomes its folded constant (at the original width:
    the Add's channel rule slices it like any per-channel constant), or the
    Add becomes an Identity of the other operand when that constant is 0.
    The vanished nodes are left for ``graph.cleanup()``. Returns the groups dropped.
    """
    dropped = analysis.dropped_groups(removed)
    nodes = {n.name: n for n in graph.nodes}
    for gid in dropped:
        info = analysis.drops[gid]
        for (add_name, idx), value in branch_constants(analysis, info).items():
            add = nodes[add_name]
            other = add.inputs[1 - idx]
            if not np.any(value):
                add.op, add.attrs, add.inputs = "Identity", {}, [other]
                continue
            dtype = other.dtype if other.dtype is not None else np.float32
            add.inputs[idx] = gs.Constant(f"{add_name}__dropped_branch", np.ascontiguousarray(value.astype(dtype)))
        logger.info("group %d (%s) dropped: %d node(s) removed", gid, analysis.groups[gid].name,
                    len(info.dead) + len(info.constant_nodes))
    return dropped
