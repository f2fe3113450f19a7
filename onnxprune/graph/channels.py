"""Channel labels and the union-find that couples them.

Every channel of every activation tensor on a prunable path carries a *unit*
id. A unit is born as one output channel of a producer (Conv, ConvTranspose,
Gemm, MatMul with constant weights) or as one zero channel inserted by a
channel ``Pad``. Ops that combine tensors elementwise (residual Add, SE gate
Mul) unite the units they put on top of each other; ops that only move
channels (Concat, Split, Slice, Pad, Flatten, Reshape, Transpose) rearrange
the labels. A *prunable unit* is then one union-find class: removing it
deletes every channel labelled with it, in every tensor, which keeps every
shape consistent and every surviving value exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Labels:
    """Unit ids of the channels of one tensor, along ``axis`` (non-negative)."""

    axis: int
    units: np.ndarray  # int64, one entry per position along ``axis`` (may repeat)

    @property
    def size(self) -> int:
        return int(self.units.shape[0])


@dataclass
class UnitInfo:
    """Where a unit was born: a producer's output channel, or a zero channel of a Pad."""

    node: str
    channel: int
    zero: bool = False


class ShapeUnknownError(Exception):
    """The probe saw no shape for a tensor a rule needs.

    Its own class, not a KeyError: the analysis turns exactly this into a
    freeze reason, while any other exception from a rule is a bug and must
    surface.
    """

    def __init__(self, tensor: str) -> None:
        super().__init__(tensor)
        self.tensor = tensor

    def __str__(self) -> str:
        return repr(self.tensor)


class UnionFind:
    """Union-find over unit ids with path halving."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, u: int) -> int:
        parent = self.parent
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return ra

    def roots(self, units: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(u)) for u in units), dtype=np.int64, count=len(units))
