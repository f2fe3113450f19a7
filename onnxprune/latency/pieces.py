"""The timing sub-graph of one channel group at one kept width.

A group's width changes the cost of its *layers*: the producers whose
output channels it holds and the consumers that read them (for a residual
stream, every conv that writes or reads the stream). Those nodes are cut out
of the normalised model with :func:`onnxprune.graph.subgraph.extract`, their
weights sliced to the kept channels (depthwise convs get the matching
``group``), and fed random inputs of their real shapes at the measured batch.
Channel-wise ops between them (BatchNorm, activations) are left out:
onnxruntime fuses them into the convs or they cost little next to them.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.analysis import Analysis, Group
from ..graph.layout import node_attrs, weight_layout
from ..graph.subgraph import extract

logger = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def group_nodes(analysis: Analysis, group: Group) -> list[onnx.NodeProto]:
    """The producer and consumer layers of ``group`` in the normalised model, in graph order."""
    roots = set(group.units)
    inits = {t.name for t in analysis.proto.graph.initializer}
    out = []
    for node in analysis.proto.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        touched = False
        for name in (node.input[0], node.output[0]):
            lab = analysis.labels.get(name)
            if lab is not None and roots.intersection(analysis.root_of[lab.units].tolist()):
                touched = True
        if touched:
            out.append(node)
    return out


class WidthMasks:
    """Kept channels of every tensor of a group at one kept width, for timing only.

    Each tensor loses the share of the group's channels it holds that the
    width asks for (a residual stream of 16/32/64 channels over three stages
    shrinks in every stage) and keeps at least one channel. Pieces only need
    channel counts, so the masks need not match a real removal set.
    """

    def __init__(self, analysis: Analysis, group: Group, width: int) -> None:
        self.analysis = analysis
        self.roots = np.array(sorted(group.units), dtype=np.int64)
        self.share = 1.0 - width / max(len(group.units), 1)
        self._cache: dict[str, Optional[np.ndarray]] = {}

    def __call__(self, tensor: str) -> Optional[np.ndarray]:
        """Boolean mask of the kept channels of ``tensor``; None when it keeps them all."""
        if tensor not in self._cache:
            lab = self.analysis.labels.get(tensor)
            keep = None
            if lab is not None:
                mine = np.flatnonzero(np.isin(self.analysis.root_of[lab.units], self.roots))
                drop = min(int(round(len(mine) * self.share)), lab.units.shape[0] - 1)
                if drop > 0:
                    keep = np.ones(lab.units.shape[0], dtype=bool)
                    keep[mine[:drop]] = False
            self._cache[tensor] = keep
        return self._cache[tensor]


def build_piece(analysis: Analysis, nodes: Sequence[onnx.NodeProto], keep: WidthMasks,
                batch: int) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """The runnable sub-graph of ``nodes`` with the channels ``keep`` drops gone, and its input shapes.

    A node that cannot be sliced here (a grouped conv that is not depthwise)
    is timed at its dense width: the table then under-states that group's
    saving, never over-states it.
    """
    model = analysis.proto
    inits = {t.name: t for t in model.graph.initializer}
    sub, feeds = extract(model, list(nodes), [n.output[0] for n in nodes], name="latency_piece")
    new_inits: list[onnx.TensorProto] = []
    for node in sub.graph.node:
        attrs = node_attrs(node)
        layout = weight_layout(node.op_type, attrs)
        w = numpy_helper.to_array(inits[node.input[1]])
        keep_out = keep(node.output[0])
        keep_in = keep(node.input[0])
        group = int(attrs.get("group", 1))
        if node.op_type == "Conv" and group > 1:
            depthwise = w.shape[1] == 1 and group == analysis.probe.shapes[node.input[0]][1]
            if not depthwise:
                keep_out = keep_in = None  # left dense (see the docstring)
            elif keep_in is not None:
                for a in node.attribute:
                    if a.name == "group":
                        a.i = int(keep_in.sum())
            keep_in = None  # a depthwise weight has one input channel per group
        if keep_out is not None:
            w = np.take(w, np.flatnonzero(keep_out), axis=layout.out_axis)
        if keep_in is not None:
            w = np.take(w, np.flatnonzero(keep_in), axis=layout.in_axis)
        names = [f"{node.name}__latency_w"]
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(w), names[0]))
        node.input[1] = names[0]
        for i in range(2, len(node.input)):
            if node.input[i] not in inits:
                continue
            b = numpy_helper.to_array(inits[node.input[i]])
            if keep_out is not None and b.ndim == 1 and b.shape[0] == keep_out.shape[0]:
                b = b[keep_out]
            names.append(f"{node.name}__latency_b{i}")
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(b), names[-1]))
            node.input[i] = names[-1]
    del sub.graph.initializer[:]
    sub.graph.initializer.extend(new_inits)
    shapes = {}
    for name in feeds:
        shape = list(analysis.probe.shapes[name])
        shape[0] = batch
        lab = analysis.labels.get(name)
        mask = keep(name)
        if lab is not None and mask is not None:
            shape[lab.axis] = int(mask.sum())
        shapes[name] = tuple(shape)
    del sub.graph.output[:]
    for node in sub.graph.node:  # rank only: the sizes change with the width
        rank = len(analysis.probe.shapes.get(node.output[0], (0, 0)))
        sub.graph.output.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, [None] * rank))
    return sub, shapes
