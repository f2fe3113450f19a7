"""Physically remove a set of prunable units from a normalised model.

Before: Conv(W[C_out, C_in]) -> BN -> Relu -> Conv(W2[C2, C_out])
After:  the removed output channels are gone from W, BN's four vectors and
W2's input axis; every other op whose constants or attributes depend on the
channel count (Concat consumers, Split sizes, Slice bounds, channel Pad
amounts, Reshape targets, grouped-conv ``group``) is rewritten by its rule in
:mod:`onnxprune.graph.rules`. A droppable group removed entirely takes its
residual branch with it (:mod:`onnxprune.graph.depth`). Shapes are re-inferred, dead nodes dropped and
the graph toposorted.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis import Analysis
from .channels import Labels
from .depth import drop_branches
from .external import skeleton
from .normalize import export_freeing, infer_shapes
from .probe import np_dtype
from .rules import rule_for

logger = logging.getLogger(__name__)


class Surgery:
    """The :class:`~onnxprune.graph.rules.context.RewriteContext` a rule's ``rewrite`` sees.

    Kept-channel masks of the analysed tensors, their labels and shapes, and
    a constant setter that never changes a constant another node still uses.
    """

    def __init__(self, analysis: Analysis, removed: Iterable[int]) -> None:
        self.analysis = analysis
        self.removed = np.array(sorted({int(r) for r in removed}), dtype=np.int64)
        self._keep: dict[str, Optional[np.ndarray]] = {}
        self._fresh = 0

    def keep(self, t: gs.Tensor) -> Optional[np.ndarray]:
        """Boolean mask of the kept channels of ``t``; None when nothing of it changes."""
        if t is None or isinstance(t, gs.Constant):
            return None
        if t.name not in self._keep:
            mask = self.analysis.keep_mask(t.name, self.removed)
            self._keep[t.name] = None if mask is None or mask.all() else mask
        return self._keep[t.name]

    def labels(self, t: gs.Tensor) -> Optional[Labels]:
        return self.analysis.get(t)

    def shape(self, t: gs.Tensor) -> tuple[int, ...]:
        return self.analysis.shape(t)

    def set_const(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Replace a constant input of ``node``; a constant shared with other nodes is copied first."""
        old = node.inputs[index]
        values = np.ascontiguousarray(np.asarray(values).astype(old.values.dtype, copy=False))
        if len({id(n) for n in old.outputs}) > 1:
            self._fresh += 1
            node.inputs[index] = gs.Constant(f"{old.name}__pruned{self._fresh}", values)
        else:
            old.values = values


def prune_channels(analysis: Analysis, removed: Iterable[int]) -> onnx.ModelProto:
    """Return the model with every channel of the ``removed`` unit roots deleted."""
    removed = list(removed)
    graph = gs.import_onnx(analysis.proto)
    surgery = Surgery(analysis, removed)
    if len(surgery.removed):
        if drop_branches(analysis, graph, surgery.removed):
            graph.cleanup(remove_unused_graph_inputs=False)  # the emptied branches go before any rule sees them
        labelled = analysis.labels
        for node in graph.nodes:
            touches = any(getattr(t, "name", None) in labelled for t in list(node.inputs) + list(node.outputs))
            if touches:
                rule_for(node.op, node.domain or "").rewrite(surgery, node)
    keep_names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep_names:
            tensor.shape = None
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return infer_shapes(export_freeing(graph, analysis.proto))


def masked_reference(analysis: Analysis, removed: Iterable[int], *, stubs: bool = False) -> onnx.ModelProto:
    """The original model with the removed channels zeroed where they are consumed.

    This is the definition of exact surgery: the pruned model must compute
    the same outputs as this model (invariant 1). ``stubs``: the reference's
    large weights are :func:`~onnxprune.graph.external.skeleton` stubs naming
    those of ``analysis.proto`` (a session takes them from there), so a big
    model's weights are not copied a second time.
    """
    removed_arr = np.array(sorted({int(r) for r in removed}), dtype=np.int64)
    graph = gs.import_onnx(skeleton(analysis.proto, with_arrays=False)[0] if stubs else analysis.proto)
    nodes = {n.name: n for n in graph.nodes}
    tensors = graph.tensors()
    for i, edge in enumerate(analysis.consumers):
        keep = analysis.keep_mask(edge.tensor, removed_arr)
        if keep is None or keep.all():
            continue
        lab = analysis.labels[edge.tensor]
        rank = len(analysis.probe.shapes[edge.tensor])
        shape = [1] * rank
        shape[lab.axis] = keep.shape[0]
        dtype = np_dtype(analysis.probe.dtypes.get(edge.tensor, 0))  # float16 in a float16 body
        mask = gs.Constant(f"__onnxprune_mask_{i}", keep.astype(dtype).reshape(shape))
        src = tensors[edge.tensor]
        dst = gs.Variable(f"{edge.tensor}__masked_{i}", dtype=dtype)
        graph.nodes.append(gs.Node("Mul", f"__onnxprune_mask_mul_{i}", inputs=[src, mask], outputs=[dst]))
        nodes[edge.node].inputs[edge.input_index] = dst
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return export_freeing(graph, analysis.proto)

