"""Whole-model time predicted from the group tables, with the cross terms a sum of groups misses.

A layer between two pruned groups (a block conv reading a narrowed residual
stream and writing a narrowed hidden layer) costs about the *product* of
what each narrowing leaves, not the sum of two savings: adding group deltas
predicted twice the real saving on ResNet-56 at half the time. Each layer's
share of the model's time is taken as its share of the MACs; a group's
table gives the relative speed r_g(w) = T_g(w) / T_g(n) of its layers at
width w (odd widths and all); a layer's time scales with r of the group on
its output side times r of the group on its input side.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Optional

from ..graph.analysis import Analysis
from .table import LatencyTable


class LatencyModel:
    """predict(widths) in ms, and the separable per-group costs the knapsack grid works on."""

    def __init__(self, analysis: Analysis, table: LatencyTable) -> None:
        self.table = table
        self.dense_ms = table.dense.median
        total = max(sum(layer.macs for layer in analysis.layers.values()), 1)
        self.terms: list[tuple[float, Optional[int], Optional[int]]] = []
        constant = 0.0
        for layer in analysis.layers.values():
            share = layer.macs / total
            out_g = self._dominant(analysis, layer.output)
            in_g = None if layer.grouped else self._dominant(analysis, layer.input)
            if out_g is None and in_g is None:
                constant += share
            else:
                self.terms.append((share, out_g, in_g))
        self.constant_ms = self.dense_ms * constant

    def _dominant(self, analysis: Analysis, tensor: str) -> Optional[int]:
        lab = analysis.labels.get(tensor)
        if lab is None:
            return None
        counts = Counter(analysis.group_of.get(int(r)) for r in analysis.root_of[lab.units])
        counts.pop(None, None)
        for g, _ in counts.most_common():
            if g in self.table.groups:
                return g
        return None

    def ratio(self, gid: Optional[int], width: Optional[int]) -> float:
        """r_g(w): the group's layers' time at ``width`` over their time at full width."""
        if gid is None or width is None:
            return 1.0
        gl = self.table.groups[gid]
        if width == 0:  # a dropped branch (depth hook): its layers are gone
            return 0.0
        return gl.ms(width) / gl.dense if gl.dense > 0 else 1.0

    def predict(self, widths: Mapping[int, int]) -> float:
        """Predicted whole-model time (ms) with each group ``g`` at ``widths[g]`` (missing: dense)."""
        t = self.constant_ms
        for share, out_g, in_g in self.terms:
            t += self.dense_ms * share * self.ratio(out_g, widths.get(out_g)) * (
                self.ratio(in_g, widths.get(in_g)) if in_g != out_g else 1.0)
        return t

    def group_cost(self, gid: int, width: int, current: Mapping[int, int] = {}) -> float:
        """Separable stand-in around ``current`` widths: the group's part of its layers' time at ``width``.

        A layer with a group on each side counts half for each, times the
        other side's ratio at its current width, so at a fixed point the
        costs add up to :meth:`predict` (less the constant part).
        """
        c = 0.0
        r = self.ratio(gid, width)
        for share, out_g, in_g in self.terms:
            sides = {out_g, in_g} - {None}
            if gid not in sides:
                continue
            if len(sides) == 1:
                c += self.dense_ms * share * r
            else:
                other = (sides - {gid}).pop()
                c += self.dense_ms * share * r * self.ratio(other, current.get(other)) / 2
        return float(c)
