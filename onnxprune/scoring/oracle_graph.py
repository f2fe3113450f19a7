"""The oracle's graphs: mask inputs on consumed channels, per-channel activity outputs, suffix models.

Every consumed channel tensor is multiplied by a per-sample mask input, so
one session serves every unit; a suffix model is the part of that graph
after a unit's first mask (built with :func:`onnxprune.graph.subgraph.extract`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from ..graph.io import opset_version
from ..graph.subgraph import extract_reached


@dataclass
class MaskInput:
    name: str
    tensor: str
    shape_tail: tuple[int, ...]   # mask shape without the batch dim, e.g. (C, 1, 1)
    axis: int                     # channel axis in the tensor (== axis in the mask)
    roots: np.ndarray             # root id of every channel
    dtype: np.dtype = np.dtype(np.float32)  # of the tensor (float16 in a float16 body)


def suffix_model(model: onnx.ModelProto, start: int, keep_masks: Optional[set[int]],
                 is_batched: Callable[[str], bool],
                 dtypes: Mapping[str, int]) -> tuple[onnx.ModelProto, list[str], list[int]]:
    """Nodes from ``start`` on, plus the prefix nodes that compute non-batch inputs (shape tensors); the
    names it is fed and the positions of the model outputs it computes (another head, finished before
    ``start``, is unchanged by the units of this suffix: the caller takes it from the unperturbed run).

    Shape tensors may encode the batch size; recomputing them inside the
    suffix from (tiled) activations keeps them consistent with the tiled batch.
    Mask multiplications of units outside ``keep_masks`` are left out: in
    this suffix they would only multiply by one, and every Mul is a full
    pass over a tiled activation that also splits onnxruntime's fused
    (blocked-layout) conv chains.
    """
    g = model.graph
    all_nodes = list(g.node)
    if keep_masks is not None:
        bypass: dict[str, str] = {}
        kept = []
        for i, n in enumerate(all_nodes):
            if n.op_type == "Mul" and n.name.startswith("__oracle_mul_") and i >= start \
                    and int(n.name.rsplit("_", 1)[1]) not in keep_masks:
                bypass[n.output[0]] = n.input[0]
                continue
            kept.append(n)
        if bypass:  # only nodes from ``start`` on were dropped, so ``start`` still indexes the same node
            renamed = []
            for n in kept:
                if any(x in bypass for x in n.input):
                    m = onnx.NodeProto()
                    m.CopyFrom(n)
                    for j, x in enumerate(m.input):
                        m.input[j] = bypass.get(x, x)
                    n = m
                renamed.append(n)
            all_nodes = renamed
    inits = {t.name: t for t in g.initializer}
    producer = {o: i for i, n in enumerate(all_nodes) for o in n.output}
    chosen = set(range(start, len(all_nodes)))
    while True:
        produced = {o for i in chosen for o in all_nodes[i].output}
        extra = set()
        for i in chosen:
            for name in all_nodes[i].input:
                if name and name not in produced and name not in inits and not is_batched(name):
                    if name in producer:
                        extra.add(producer[name])
        if not extra - chosen:
            break
        chosen |= extra
    nodes = [all_nodes[i] for i in sorted(chosen)]
    types = {k: v for k, v in dtypes.items() if v}
    return extract_reached(model, nodes, [o.name for o in g.output], types=types, name="suffix")


def add_activity_outputs(model: onnx.ModelProto, masks: Sequence[MaskInput]) -> list[str]:
    """Append, for every mask, an output [N, C]: the largest |value| of each channel on each sample.

    Computed in the graph so the full run returns a few numbers per channel
    instead of every consumed activation.
    """
    opset = opset_version(model)
    names = []
    for i, mk in enumerate(masks):
        rank = len(mk.shape_tail) + 1
        axes = [d for d in range(1, rank) if d != mk.axis]
        absolute = f"__oracle_abs_{i}"
        out = f"__oracle_activity_{i}"
        model.graph.node.append(helper.make_node("Abs", [mk.tensor], [absolute], name=absolute))
        if not axes:
            model.graph.node.append(helper.make_node("Identity", [absolute], [out], name=out))
        elif opset >= 18:
            axes_name = f"__oracle_axes_{i}"
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes, dtype=np.int64), axes_name))
            model.graph.node.append(helper.make_node("ReduceMax", [absolute, axes_name], [out], name=out, keepdims=0))
        else:
            model.graph.node.append(helper.make_node("ReduceMax", [absolute], [out], name=out, axes=axes, keepdims=0))
        model.graph.output.append(helper.make_tensor_value_info(out, helper.np_dtype_to_tensor_dtype(mk.dtype), None))
        names.append(out)
    return names
