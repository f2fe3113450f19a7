"""Channel-dependency analysis: which output channels can be removed, and with what.

The analysis walks the folded graph once in topological order and labels
channels (see :mod:`channels`), delegating each op to its rule in
:mod:`rules` (which sees this class only as a ``rules.AnalysisContext``). The result lists *prunable units* (coupled sets of channels),
grouped into *channel groups* (units that share tensors, e.g. a residual
stream), plus frozen groups with the reason they are left alone.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import InvalidArgumentError
from .channels import Labels, ShapeUnknownError, UnionFind, UnitInfo
from .depth import DropInfo, find_droppable
from .layout import weight_layout
from .probe import Probe
from .rules import rule_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerEdge:
    """A node input where channels are consumed (multiplied by weights)."""

    node: str
    input_index: int
    tensor: str


@dataclass
class Layer:
    """A producer (Conv/ConvTranspose/Gemm/MatMul) and its channel bookkeeping."""

    name: str
    op: str
    output: str
    input: str
    kernels: int
    macs: int
    params: int
    grouped: bool = False
    prunable_kernels: int = 0


@dataclass
class Group:
    """Units that live in the same tensors; removing any of them shrinks all these layers."""

    id: int
    name: str
    units: list[int]
    layers: list[str]
    frozen_reason: Optional[str] = None
    heads_of: Optional[str] = None  # the units are attention heads of this node's block (rules/attention.py)
    drop_refusal: Optional[str] = None  # why removing every channel would cut the graph (see graph/depth.py)

    @property
    def frozen(self) -> bool:
        return self.frozen_reason is not None

    @property
    def droppable(self) -> bool:
        """All channels may go: the group lives inside a residual branch, which then vanishes."""
        return not self.frozen and self.drop_refusal is None

    @property
    def drop_reason(self) -> Optional[str]:
        """Why the group must keep a channel (None when droppable)."""
        if self.frozen:
            return f"frozen: {self.frozen_reason}"
        return self.drop_refusal


class Analysis:
    """Result of the channel analysis on one (normalised) model.

    ``units`` are union-find roots of prunable classes; ``unit_kernels`` lists
    the (layer, channel) kernels each root removes. Implements
    :class:`~onnxprune.graph.rules.context.AnalysisContext` for the rules.
    """

    def __init__(self, proto: onnx.ModelProto, probe: Probe) -> None:
        self.proto = proto
        self.probe = probe
        self.graph: gs.Graph = gs.import_onnx(proto)
        self.uf = UnionFind()
        self.unit_info: list[UnitInfo] = []
        self.labels: dict[str, Labels] = {}
        self.consumers: list[ConsumerEdge] = []
        self.layers: dict[str, Layer] = {}
        self._frozen: list[tuple[np.ndarray, str]] = []
        self._const_users: dict[int, int] = {}
        self._heads: list[tuple[np.ndarray, str]] = []
        self._run()
        self.release_weights()

    # ---------------------------------------------------------------- API used by rules
    def shape(self, t: gs.Tensor) -> tuple[int, ...]:
        """Probed shape of ``t``; raises ShapeUnknownError when the probe saw none."""
        if isinstance(t, gs.Constant):
            return tuple(t.values.shape)
        shape = self.probe.shapes.get(t.name)
        if shape is None:
            raise ShapeUnknownError(t.name)
        return shape

    def get(self, t: gs.Tensor) -> Optional[Labels]:
        if t is None or isinstance(t, gs.Constant):
            return None
        return self.labels.get(t.name)

    def set(self, t: gs.Tensor, labels: Labels) -> None:
        self.labels[t.name] = labels

    def new_units(self, node: gs.Node, n: int, zero: bool = False) -> np.ndarray:
        start = len(self.unit_info)
        for j in range(n):
            self.uf.add()
            self.unit_info.append(UnitInfo(node.name, j, zero))
        return np.arange(start, start + n, dtype=np.int64)

    def unite(self, u: int, v: int) -> int:
        return self.uf.union(u, v)

    def known_ints(self, tensor_name: str) -> Optional[np.ndarray]:
        return self.probe.int_values.get(tensor_name)

    def freeze(self, units: np.ndarray, reason: str) -> None:
        if len(units):
            self._frozen.append((np.asarray(units, dtype=np.int64), reason))

    def freeze_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            lt = self.get(t)
            if lt is not None:
                self.freeze(lt.units, reason)

    def shared_const(self, t: gs.Tensor, node: gs.Node) -> bool:
        """A constant used by more than this one node cannot be sliced for this node alone."""
        return isinstance(t, gs.Constant) and len({id(n) for n in t.outputs}) > 1

    def add_consumer(self, node: gs.Node, index: int, t: gs.Tensor) -> None:
        self.consumers.append(ConsumerEdge(node.name, index, t.name))

    def mark_heads(self, units: np.ndarray, block: str) -> None:
        self._heads.append((np.asarray(units, dtype=np.int64), block))

    def add_producer(self, node: gs.Node, out: gs.Tensor, grouped: bool = False) -> None:
        w = node.inputs[1].values
        params = int(w.size) + sum(int(t.values.size) for t in node.inputs[2:] if isinstance(t, gs.Constant))
        self.layers[node.name] = Layer(node.name, node.op, out.name, node.inputs[0].name,
                                       int(self.shape(out)[self.labels[out.name].axis]),
                                       _macs(self, node), params, grouped)

    # ---------------------------------------------------------------- the walk
    def _run(self) -> None:
        for node in self.graph.nodes:
            try:
                rule_for(node.op, node.domain or "").propagate(self, node)
            except ShapeUnknownError as exc:  # only this: any other exception of a rule is a bug
                self.freeze_inputs(node, f"{node.op} {node.name!r}: shape of {exc.tensor!r} unknown")
        for out in self.graph.outputs:
            lt = self.get(out)
            if lt is not None:
                self.freeze(lt.units, f"reaches graph output {out.name!r}")
        self._finish()

    def release_weights(self) -> None:
        """Let go of the weight arrays the rules (or a criterion) read: a second copy of the proto's weights.

        onnx-graphsurgeon loads a constant on first access and keeps the array;
        pointing it back at its TensorProto (which the proto keeps anyway) makes
        it load again only if read again, so a big model is not held twice.
        """
        from onnx_graphsurgeon.ir.tensor import LazyValues
        inits = {t.name: t for t in self.proto.graph.initializer}
        for t in self.graph.tensors().values():
            if isinstance(t, gs.Constant) and t.name in inits and isinstance(t._values, np.ndarray) \
                    and t._values.nbytes >= 1024:
                t._values = LazyValues(inits[t.name])

    def _finish(self) -> None:
        uf = self.uf
        n = len(self.unit_info)
        roots = np.array([uf.find(u) for u in range(n)], dtype=np.int64)
        self.root_of = roots
        self.frozen_reason: dict[int, str] = {}
        for units, reason in self._frozen:
            for r in np.unique(roots[units]):
                self.frozen_reason.setdefault(int(r), reason)
        has_real = np.zeros(n, dtype=bool)
        for u, info in enumerate(self.unit_info):
            if not info.zero:
                has_real[roots[u]] = True
        # kernels of each root, per layer
        self.unit_kernels: dict[int, list[tuple[str, int]]] = {}
        for layer in self.layers.values():
            lab = self.labels[layer.output]
            for j, u in enumerate(lab.units):
                self.unit_kernels.setdefault(int(roots[u]), []).append((layer.name, j))
        self.units: list[int] = sorted(r for r in self.unit_kernels if has_real[r])
        # groups: connected components of units through shared labelled tensors
        comp = UnionFind()
        index = {r: comp.add() for r in self.units}
        for lab in self.labels.values():
            rs = [index[int(r)] for r in np.unique(roots[lab.units]) if int(r) in index]
            for r in rs[1:]:
                comp.union(rs[0], r)
        members: dict[int, list[int]] = {}
        for r in self.units:
            members.setdefault(comp.find(index[r]), []).append(r)
        self.groups: list[Group] = []
        self.group_of: dict[int, int] = {}
        for gid, (_, rs) in enumerate(sorted(members.items(), key=lambda kv: kv[1][0])):
            layers: list[str] = []
            for r in rs:
                for name, _ in self.unit_kernels[r]:
                    if name not in layers:
                        layers.append(name)
            reasons = [self.frozen_reason[r] for r in rs if r in self.frozen_reason]
            group = Group(gid, layers[0], rs, layers, reasons[0] if reasons else None)
            group.heads_of = next((block for units, block in self._heads if int(roots[units[0]]) in rs), None)
            self.groups.append(group)
            for r in rs:
                self.group_of[r] = gid
        for layer in self.layers.values():
            lab = self.labels[layer.output]
            layer.prunable_kernels = int(sum(1 for u in lab.units if self.is_prunable(int(roots[u]))))
        self.drops: dict[int, DropInfo] = find_droppable(self)

    # ---------------------------------------------------------------- queries
    def is_prunable(self, root: int) -> bool:
        return root in self.group_of and not self.groups[self.group_of[root]].frozen

    @property
    def prunable_units(self) -> list[int]:
        return [r for r in self.units if self.is_prunable(r)]

    @property
    def prunable_layers(self) -> list[Layer]:
        return [layer for layer in self.layers.values() if layer.prunable_kernels > 0]

    def exclude(self, patterns: Iterable[str]) -> None:
        """Freeze every group that contains a layer matching one of ``patterns`` (fnmatch)."""
        patterns = list(patterns)
        if not patterns:
            return
        matched = set()
        for group in self.groups:
            hit = [l for l in group.layers for p in patterns if fnmatch.fnmatchcase(l, p) or l == p]
            if hit and not group.frozen:
                group.frozen_reason = f"excluded by the user ({hit[0]})"
            matched.update(p for l in group.layers for p in patterns if fnmatch.fnmatchcase(l, p) or l == p)
        unknown = [p for p in patterns if p not in matched]
        if unknown:
            raise InvalidArgumentError(f"--exclude {unknown[0]!r} matches no layer in the model")
        for layer in self.layers.values():
            lab = self.labels[layer.output]
            layer.prunable_kernels = int(sum(1 for u in lab.units if self.is_prunable(int(self.root_of[u]))))

    def unit_of_kernel(self, layer: str, channel: int) -> int:
        lab = self.labels[self.layers[layer].output]
        return int(self.root_of[lab.units[channel]])

    def stays_in_unit(self, edge: ConsumerEdge) -> np.ndarray:
        """Per input channel of a consumer edge: True where everything it feeds is removed with it.

        A depthwise (or grouped) conv whose output channels belong to the
        same unit as their inputs: zeroing the input there changes nothing
        that survives the removal, so such an edge adds nothing to a unit's
        cost (energy) and needs no mask (oracle).
        """
        size = self.labels[edge.tensor].size
        node = next((n for n in self.graph.nodes if n.name == edge.node), None)
        if node is None or node.op != "Conv" or int(node.attrs.get("group", 1)) == 1 or edge.input_index != 0:
            return np.zeros(size, dtype=bool)
        out = node.outputs[0].name
        if out not in self.labels:
            return np.zeros(size, dtype=bool)
        groups = int(node.attrs["group"])
        r_in = self.root_of[self.labels[edge.tensor].units]
        r_out = self.root_of[self.labels[out].units]
        cin_g, cout_g = len(r_in) // groups, len(r_out) // groups
        return np.array([bool(np.all(r_out[(c // cin_g) * cout_g:(c // cin_g + 1) * cout_g] == r_in[c]))
                         for c in range(len(r_in))])

    def droppable_groups(self) -> list[Group]:
        """Groups whose every channel may be removed (the residual branch they live in then vanishes)."""
        return [g for g in self.groups if g.droppable]

    def dropped_groups(self, removed: Iterable[int]) -> list[int]:
        """Ids of the droppable groups that ``removed`` (unit roots) empties entirely."""
        rem = {int(r) for r in removed}
        return [gid for gid in self.drops if self.groups[gid].droppable
                and all(r in rem for r in self.groups[gid].units)]

    def keep_mask(self, tensor: str, removed: np.ndarray) -> Optional[np.ndarray]:
        lab = self.labels.get(tensor)
        if lab is None:
            return None
        return ~np.isin(self.root_of[lab.units], removed)


def _macs(a: Analysis, node: gs.Node) -> int:
    """Multiply-accumulates of one producer at the probed size, per sample.

    Each output element of Conv/Gemm/MatMul costs one weight row (every
    weight axis but C_out); each input element of ConvTranspose scatters
    through every weight axis but C_in.
    """
    layout = weight_layout(node.op, node.attrs)
    shape = node.inputs[1].values.shape

    def row(skip: int) -> int:
        return int(np.prod([d for i, d in enumerate(shape) if i != skip]))

    if node.op == "ConvTranspose":
        in_shape = a.shape(node.inputs[0])
        return int(np.prod(in_shape)) * row(layout.in_axis) // max(in_shape[0], 1)
    out_shape = a.shape(node.outputs[0])
    batch = out_shape[0] if out_shape else 1
    return int(np.prod(out_shape)) * row(layout.out_axis) // max(batch, 1)
