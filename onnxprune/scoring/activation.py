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
* ``energy_rel`` — the same change relative to the signal it lands on: each
  consumer's term divided by the per-position energy of the consumer's
  output, carried through per-channel affine ops (BatchNorm, constant
  Add/Mul) into the residual sum it joins. A change of one size matters
  less on a strong residual stream than on a weak one, and the pruned model
  is better as it stands (EfficientNet-Lite0, hidden channels, 70% of the
  MACs: 54.8% vs 43.2% top-1 without recovery), but least squares repairs
  the absolute criterion's choice better (65.2% vs 69.6%); see
  benchmarks/RESULTS.md.
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


_AFFINE = ("BatchNormalization", "Add", "Sub", "Mul", "Div")
_JOINS = ("Add", "Sum")


def landing_tensor(graph: gs.Graph, node: gs.Node) -> str:
    """Where a change of ``node``'s output ends up as a signal of its own.

    Followed through single-consumer per-channel affine ops (BatchNorm, Add/
    Sub/Mul/Div with a constant) and into the first join with another
    activation (a residual sum), whose output is the landing tensor.
    """
    t = node.outputs[0]
    while len(t.outputs) == 1:
        nxt = t.outputs[0]
        others = [x for x in nxt.inputs if x is not t]
        if nxt.op == "BatchNormalization" and nxt.inputs[0] is t:
            t = nxt.outputs[0]
        elif nxt.op in _AFFINE and others and all(isinstance(x, gs.Constant) for x in others):
            t = nxt.outputs[0]
        elif nxt.op in _JOINS:
            return nxt.outputs[0].name
        else:
            break
    return t.name


class ActivationStats:
    """Per-channel mean and variance of every consumed tensor, accumulated over batches.

    With ``landing``, also the per-position energy of the tensor each
    consumer's change lands on (for the relative ``energy`` criterion).
    """

    def __init__(self, analysis: Analysis, providers=None, landing: bool = False) -> None:
        self.analysis = analysis
        self.tensors = sorted({e.tensor for e in analysis.consumers})
        nodes = {n.name: n for n in analysis.graph.nodes}
        self.landing = {e.node: landing_tensor(analysis.graph, nodes[e.node]) for e in analysis.consumers} \
            if landing else {}
        self.landing_tensors = sorted(set(self.landing.values()))
        self.land_sum = {t: 0.0 for t in self.landing_tensors}
        model = onnx.ModelProto()
        model.CopyFrom(analysis.proto)
        have = {o.name for o in model.graph.output}
        for t in self.tensors + [x for x in self.landing_tensors if x not in self.tensors]:
            if t not in have:
                model.graph.output.append(helper.make_tensor_value_info(
                    t, analysis.probe.dtypes.get(t) or onnx.TensorProto.FLOAT, None))
        self.session = make_session(model, providers)
        self.s1 = {t: 0.0 for t in self.tensors}
        self.s2 = {t: 0.0 for t in self.tensors}
        self.n = {t: 0 for t in self.tensors}
        self.samples = 0

    def add_batch(self, feeds: dict[str, np.ndarray]) -> None:
        wanted = self.tensors + [x for x in self.landing_tensors if x not in self.tensors]
        outs = dict(zip(wanted, self.session.run(wanted, feeds)))
        for t in self.landing_tensors:
            v = outs[t].astype(np.float64)
            channels = v.shape[self._channel_axis(t, v)] if v.ndim > 1 else 1
            positions = max(v.size // max(v.shape[0] * channels, 1), 1)
            self.land_sum[t] += float((v ** 2).sum()) / positions  # summed over samples: energy per position
        for t in self.tensors:
            v = outs[t]
            axis = self.analysis.labels[t].axis
            v = np.moveaxis(v.astype(np.float64), axis, 0).reshape(v.shape[axis], -1)
            self.s1[t] = self.s1[t] + v.sum(1)
            self.s2[t] = self.s2[t] + (v ** 2).sum(1)
            self.n[t] += v.shape[1]
        self.samples += next(iter(feeds.values())).shape[0]

    def _channel_axis(self, t: str, v: np.ndarray) -> int:
        """Channel axis of a landing tensor: from the analysis where it is labelled, else 1 (NCHW / [N, F])."""
        lab = self.analysis.labels.get(t)
        return lab.axis if lab is not None and lab.axis < v.ndim else 1

    def _column_energy(self, t: str) -> np.ndarray:
        """Sum over the consumers of ``t`` of the squared norm of each input channel's weights,
        each consumer's divided by the energy where its change lands when landing energies were kept."""
        a = self.analysis
        nodes = {n.name: n for n in a.graph.nodes}
        size = a.labels[t].size
        total = np.zeros(size)
        for e in a.consumers:
            if e.tensor != t:
                continue
            node = nodes[e.node]
            scale = 1.0
            if self.landing:
                scale = 1.0 / max(self.land_sum[self.landing[e.node]] / max(self.samples, 1), 1e-30)
            total += scale * self._edge_energy(node, e)
        return total

    def _edge_energy(self, node: gs.Node, e) -> np.ndarray:
        """Squared norm of the weights each input channel of ``node`` multiplies (zero where it stays in the unit)."""
        a = self.analysis
        W = np.asarray(node.inputs[1].values, dtype=np.float64)
        if node.op == "Conv":
            g = int(node.attrs.get("group", 1))
            if g == 1:
                return (W ** 2).reshape(W.shape[0], W.shape[1], -1).sum((0, 2))
            # grouped: input channel c feeds the out-channels of its group only
            per = (W ** 2).reshape(W.shape[0], W.shape[1], -1).sum(2)  # [C_out, C_in/g]
            cout_g = W.shape[0] // g
            col = np.concatenate([per[k * cout_g:(k + 1) * cout_g].sum(0) for k in range(g)])
            return col * ~a.stays_in_unit(e)
        if node.op == "ConvTranspose":
            return (W ** 2).reshape(W.shape[0], -1).sum(1)
        if node.op == "Gemm":
            return (W ** 2).sum(0 if int(node.attrs.get("transB", 0)) else 1)
        return (W ** 2).sum(1)  # MatMul [K, N]

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
    stats = ActivationStats(analysis, providers, landing=(kind == "energy_rel"))
    for feeds in batches:
        stats.add_batch(feeds)
    return stats.scores("energy" if kind.startswith("energy") else kind)
