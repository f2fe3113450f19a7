"""Run-time Reshape targets that only copy dims of the reshaped tensor become constants.

Before: X -> Shape -> Gather(0) | Slice(0:1) -> (Cast, Unsqueeze) -> Concat(., [200]) -> Reshape(X, .)
After:  Reshape(X, [0, 200])

Exporters (Paddle's PP-OCR heads, ``x.view(x.size(0), C)`` in PyTorch)
compute the target of a flattening Reshape at run time: the batch entry
from ``Shape(X)``, the channel entry a constant. The channel analysis
cannot rewrite a target computed at run time, so the group would freeze.
A target entry that reads dim ``p`` of the reshaped tensor itself and sits
at position ``p`` of the target is exactly what ``0`` means in a Reshape
target (copy that dim; ``allowzero`` must be 0), so the whole target folds
to a constant that the Reshape rule can rewrite. Anything else (a dim of
another tensor, a moved dim, arithmetic on dims) is left as it is, and the
analysis freezes the group with its reason.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

_INT_CASTS = {6, 7}  # INT32, INT64: casts that keep a dim value


def _through_casts(t: gs.Tensor) -> gs.Tensor:
    """Skip integer Casts and Unsqueeze/Squeeze of a 0-d/1-d index tensor (they keep the values)."""
    while isinstance(t, gs.Variable) and len(t.inputs) == 1:
        node = t.inputs[0]
        if node.op == "Cast" and int(node.attrs.get("to", 0)) in _INT_CASTS:
            t = node.inputs[0]
        elif node.op in ("Unsqueeze", "Squeeze"):
            t = node.inputs[0]
        else:
            break
    return t


def shape_source(t: gs.Tensor, rank_of: Optional[Callable[[gs.Tensor], int]] = None
                 ) -> Optional[tuple[gs.Tensor, list[int]]]:
    """(X, dims) when the 1-d (or 0-d) tensor ``t`` holds dims ``dims`` of ``Shape(X)``, else None.

    X's rank comes from ``rank_of`` (e.g. probed shapes), else from its inferred shape."""
    t = _through_casts(t)
    if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if node.op not in ("Gather", "Slice") or not node.inputs:
        return None
    src = _through_casts(node.inputs[0])
    if not isinstance(src, gs.Variable) or len(src.inputs) != 1 or src.inputs[0].op != "Shape":
        return None
    shape_node = src.inputs[0]
    data = shape_node.inputs[0]
    rank = rank_of(data) if rank_of is not None else None if data.shape is None else len(data.shape)
    if rank is None:  # the rank decides what a slice of the shape reads
        return None
    dims = _dims_read(node, shape_node, rank)
    return None if dims is None else (data, dims)


def _shape_dims(t: gs.Tensor, data: gs.Tensor) -> Optional[list[int]]:
    """The dims of ``data`` that the 1-d (or 0-d) tensor ``t`` holds, if it is read off ``Shape(data)``."""
    found = shape_source(t)
    return found[1] if found is not None and found[0] is data else None


def _dims_read(node: gs.Node, shape_node: gs.Node, rank: int) -> Optional[list[int]]:
    """The dims of a rank-``rank`` tensor that a Gather or Slice of its ``Shape`` picks."""
    start = int(shape_node.attrs.get("start", 0))
    end = shape_node.attrs.get("end")
    dims = list(range(rank))[slice(start, None if end is None else int(end))]
    if node.op == "Gather":
        idx = node.inputs[1]
        if not isinstance(idx, gs.Constant) or int(node.attrs.get("axis", 0)) != 0:
            return None
        values = np.asarray(idx.values).reshape(-1)
        return [dims[int(v)] for v in values] if all(-len(dims) <= int(v) < len(dims) for v in values) else None
    consts = [i for i in node.inputs[1:]]
    if not all(isinstance(c, gs.Constant) for c in consts) or len(consts) < 2:
        return None
    starts, ends = (np.asarray(c.values).reshape(-1) for c in consts[:2])
    axes = np.asarray(consts[2].values).reshape(-1) if len(consts) > 2 else np.zeros(1, np.int64)
    steps = np.asarray(consts[3].values).reshape(-1) if len(consts) > 3 else np.ones(1, np.int64)
    if len(starts) != 1 or int(axes[0]) not in (0, -1) or int(steps[0]) == 0:  # a shape is 1-d
        return None
    return dims[slice(int(starts[0]), int(ends[0]), int(steps[0]))]


def _constant_target(reshape: gs.Node) -> Optional[np.ndarray]:
    """The constant equivalent of a run-time Reshape target, or None when there is none."""
    data, target = reshape.inputs[0], reshape.inputs[1]
    if int(reshape.attrs.get("allowzero", 0)) != 0 or not isinstance(target, gs.Variable):
        return None
    if len(target.inputs) != 1 or target.inputs[0].op != "Concat":
        return None
    concat = target.inputs[0]
    parts: list[int] = []
    for piece in concat.inputs:
        if isinstance(piece, gs.Constant):
            parts.extend(int(v) for v in np.asarray(piece.values).reshape(-1))
            continue
        dims = _shape_dims(piece, data)
        if dims is None:
            return None
        for d in dims:
            if d != len(parts):  # only a dim copied to its own position is what 0 means
                return None
            parts.append(0)
    if sum(1 for v in parts if v == -1) > 1:
        return None
    return np.array(parts, dtype=np.int64)


def constant_reshape_targets(graph: gs.Graph) -> int:
    """Replace every foldable run-time Reshape target by its constant; returns how many were replaced."""
    count = 0
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) < 2:
            continue
        const = _constant_target(node)
        if const is None:
            continue
        node.inputs[1] = gs.Constant(f"{node.name}__target", const)
        count += 1
    if count:
        logger.info("%d run-time Reshape target(s) folded to constants", count)
    return count
