"""Where output and input channels live in each producer's weight.

Conv stores its weight as [C_out, C_in/group, k...], ConvTranspose as
[C_in, C_out/group, k...], Gemm as [K, N] or (transB=1) [N, K], and MatMul's
constant right operand as [K, N]. Every module that slices, scores or
re-fits weights asks here instead of re-deriving the axis, so a new
producer op is taught in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import onnx
from onnx import helper


@dataclass(frozen=True)
class WeightLayout:
    """Axes of a producer's weight tensor."""

    out_axis: int  # axis of the weight that indexes output channels
    in_axis: int  # axis that indexes input channels / features


_CONV = WeightLayout(0, 1)
_SWAPPED = WeightLayout(1, 0)


def weight_layout(op: str, attrs: Mapping[str, Any]) -> Optional[WeightLayout]:
    """The layout of ``op``'s weight (input 1), or None for an op that is not a producer."""
    if op == "Conv":
        return _CONV
    if op in ("ConvTranspose", "MatMul"):
        return _SWAPPED
    if op == "Gemm":
        return _CONV if int(attrs.get("transB", 0)) else _SWAPPED
    return None


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A NodeProto's attributes as a plain dict (strings decoded), like ``gs.Node.attrs``."""
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out


def _layout(op: str, attrs: Mapping[str, Any]) -> WeightLayout:
    layout = weight_layout(op, attrs)
    if layout is None:
        raise ValueError(f"{op} has no weight layout (not a Conv/ConvTranspose/Gemm/MatMul)")
    return layout


def as_matrix(op: str, attrs: Mapping[str, Any], w: np.ndarray) -> np.ndarray:
    """The weight as [C_out, features]: row o holds everything output channel o multiplies.

    A grouped ConvTranspose [C_in, C_out/g, k...] becomes [C_out, C_in/g * k]
    (the same row layout as a grouped Conv).
    """
    layout = _layout(op, attrs)
    w = np.asarray(w)
    group = int(attrs.get("group", 1))
    if op == "ConvTranspose" and group != 1:
        cin_g, cout_g = w.shape[0] // group, w.shape[1]
        blocks = w.reshape(group, cin_g, cout_g, *w.shape[2:])
        return np.swapaxes(blocks, 1, 2).reshape(group * cout_g, -1)
    return np.moveaxis(w, layout.out_axis, 0).reshape(w.shape[layout.out_axis], -1)


def from_matrix(op: str, attrs: Mapping[str, Any], m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`as_matrix`: the [C_out, features] matrix back in a weight of ``shape``."""
    layout = _layout(op, attrs)
    m = np.asarray(m)
    shape = tuple(int(d) for d in shape)
    group = int(attrs.get("group", 1))
    if op == "ConvTranspose" and group != 1:
        cin_g, cout_g = shape[0] // group, shape[1]
        blocks = m.reshape(group, cout_g, cin_g, *shape[2:])
        return np.ascontiguousarray(np.swapaxes(blocks, 1, 2).reshape(shape))
    moved = (shape[layout.out_axis],) + tuple(d for i, d in enumerate(shape) if i != layout.out_axis)
    return np.ascontiguousarray(np.moveaxis(m.reshape(moved), 0, layout.out_axis))
