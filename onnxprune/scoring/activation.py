"""Cheap data-driven criteria for comparison with the oracle (Molchanov et al., Table 1).

* ``bn_scale`` — |gamma| of the BatchNormalization that follows a kernel
  (Liu et al. 2017, network slimming); needs no data.
* ``activation_mean`` / ``activation_std`` — mean and standard deviation of
  a unit's channels where they are consumed, over calibration samples and
  spatial positions, summed over the places the unit is consumed.
* ``energy`` — E[x_j^2] x ||W[:, j]||^2 summed over the consumers where the
  removal leaves the unit: the expected squared change of one output
  position of the consumer when channel j is zeroed. Per position, not per
  map: most of a removed channel's effect (its mean) is the same at every
  position, so what reaches a pooled output does not grow with the map size
  (on EfficientNet-Lite0 the per-map total ranked high-resolution blocks far
  too high: 23.6% vs 38.4% top-1 at 70% of the MACs, benchmarks/RESULTS.md).
  A local, one-pass stand-in for the oracle on models too large to run the
  oracle often (thousands of units).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..graph.analysis import Analysis
from ..runtime import make_session


def bn_scale_scores(analysis: Analysis) -> dict[int, float]:
    """Sum of |gamma| of the BatchNorm directly after each kernel (0 where there is none)."""
    first_bn: dict[str, np.ndarray] = {}
    for node in analysis.graph.nodes:
        if node.op == "BatchNormalization" and isinstance(node.inputs[1], gs.Constant):
            src = node.inputs[0]
            if src.inputs and src.inputs[0].name in analysis.layers:
                first_bn[src.inputs[0].name] = np.abs(np.asarray(node.inputs[1].values, dtype=np.float64))
    scores: dict[int, float] = {}
    for r in analysis.prunable_units:
        scores[r] = float(sum(first_bn[l][c] for l, c in analysis.unit_kernels[r] if l in first_bn))
    return scores


class ActivationStats:
    """Per-channel mean and variance of every consumed tensor, accumulated over batches."""

    def __init__(self, analysis: Analysis, providers=None) -> None:
        self.analysis = analysis
        self.tensors = sorted({e.tensor for e in analysis.consumers})
        model = onnx.ModelProto()
        model.CopyFrom(analysis.proto)
        have = {o.name for o in model.graph.output}
        for t in self.tensors:
            if t not in have:
                model.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
        self.session = make_session(model, providers)
        self.s1 = {t: 0.0 for t in self.tensors}
        self.s2 = {t: 0.0 for t in self.tensors}
        self.n = {t: 0 for t in self.tensors}
        self.samples = 0

    def add_batch(self, feeds: dict[str, np.ndarray]) -> None:
        outs = self.session.run(self.tensors, feeds)
        for t, v in zip(self.tensors, outs):
            axis = self.analysis.labels[t].axis
            v = np.moveaxis(v.astype(np.float64), axis, 0).reshape(v.shape[axis], -1)
            self.s1[t] = self.s1[t] + v.sum(1)
            self.s2[t] = self.s2[t] + (v ** 2).sum(1)
            self.n[t] += v.shape[1]
        self.samples += next(iter(feeds.values())).shape[0]

    def _column_energy(self, t: str) -> np.ndarray:
        """Sum over the consumers of ``t`` of the squared norm of each input channel's weights."""
        a = self.analysis
        nodes = {n.name: n for n in a.graph.nodes}
        size = a.labels[t].size
        total = np.zeros(size)
        for e in a.consumers:
            if e.tensor != t:
                continue
            node = nodes[e.node]
            W = np.asarray(node.inputs[1].values, dtype=np.float64)
            if node.op == "Conv":
                g = int(node.attrs.get("group", 1))
                if g == 1:
                    total += (W ** 2).sum(axis=(0, 2, 3)) if W.ndim == 4 else (W ** 2).reshape(W.shape[0], W.shape[1], -1).sum((0, 2))
                else:  # grouped: input channel c feeds the out-channels of its group only
                    per = (W ** 2).reshape(W.shape[0], W.shape[1], -1).sum(2)  # [C_out, C_in/g]
                    cout_g = W.shape[0] // g
                    col = np.concatenate([per[k * cout_g:(k + 1) * cout_g].sum(0) for k in range(g)])
                    total += col * ~a.stays_in_unit(e)
            elif node.op == "ConvTranspose":
                total += (W ** 2).reshape(W.shape[0], -1).sum(1)
            elif node.op == "Gemm":
                total += (W ** 2).sum(0 if int(node.attrs.get("transB", 0)) else 1)
            else:  # MatMul [K, N]
                total += (W ** 2).sum(1)
        return total

    def scores(self, kind: str = "mean") -> dict[int, float]:
        a = self.analysis
        out = {r: 0.0 for r in a.prunable_units}
        for t in self.tensors:
            mean = self.s1[t] / max(self.n[t], 1)
            sq = self.s2[t] / max(self.n[t], 1)
            if kind == "mean":
                val = np.abs(mean)
            elif kind == "std":
                val = np.sqrt(np.maximum(sq - mean ** 2, 0.0))
            else:  # per output position (see the module docstring)
                val = sq * self._column_energy(t)
            roots = a.root_of[a.labels[t].units]
            for r, x in zip(roots.tolist(), val.tolist()):
                if r in out:
                    out[r] += x
        return out


def activation_scores(analysis: Analysis, batches: Iterable[dict[str, np.ndarray]], kind: str = "mean",
                      providers=None) -> dict[int, float]:
    stats = ActivationStats(analysis, providers)
    for feeds in batches:
        stats.add_batch(feeds)
    return stats.scores(kind)
