"""MACs and parameters of a model under a removal set, without rebuilding it.

Selection evaluates thousands of candidate removal sets; rebuilding the model
for each would be far too slow. Each producer's MACs and parameters scale
with the fraction of its output channels kept and, for ungrouped layers, the
fraction of its input channels kept, so a removal set is costed with a few
numpy operations per layer. Activation-by-activation MatMuls (attention
scores and context) scale with the heads they keep, and count as fixed
MACs where their heads are not units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .analysis import Analysis
from .channels import ShapeUnknownError


@dataclass
class _LayerCost:
    name: str
    macs: int
    weight: int
    bias: int
    out_roots: np.ndarray
    in_roots: np.ndarray | None


class CostModel:
    """Per-sample MACs and parameter counts of the analysed model for any removal set."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        roots = analysis.root_of
        self.layers: list[_LayerCost] = []
        nodes = {n.name: n for n in analysis.graph.nodes}
        for layer in analysis.layers.values():
            node = nodes[layer.name]
            w = int(np.prod(node.inputs[1].shape))  # the shape only: reading values would load every weight
            b = layer.params - w
            out_roots = roots[analysis.labels[layer.output].units]
            lab_in = analysis.labels.get(layer.input)
            in_roots = None if (lab_in is None or layer.grouped) else roots[lab_in.units]
            self.layers.append(_LayerCost(layer.name, layer.macs, w, b, out_roots, in_roots))
        self.fixed_macs = 0
        for name, macs, out in _activation_matmuls(analysis):
            lab = analysis.labels.get(out)
            if lab is None:
                self.fixed_macs += macs
            else:  # heads on a batch axis: removing one removes its share of the products
                self.layers.append(_LayerCost(name, macs, 0, 0, roots[lab.units], None))
        covered = {id(t) for node in analysis.graph.nodes if node.name in analysis.layers
                   for t in node.inputs[1:] if isinstance(t, gs.Constant)}
        self.fixed_params = sum(int(np.prod(t.shape)) for t in analysis.graph.tensors().values()
                                if isinstance(t, gs.Constant) and id(t) not in covered
                                and np.issubdtype(t.dtype, np.floating))
        self.dense_macs, self.dense_params = self.evaluate(np.zeros(0, dtype=np.int64))

    def evaluate(self, removed: np.ndarray) -> tuple[int, int]:
        """(MACs per sample, parameters) when the units ``removed`` (roots) are gone."""
        removed = np.asarray(removed, dtype=np.int64)
        macs, params = self.fixed_macs, self.fixed_params
        for lc in self.layers:
            f_out = 1.0 if not len(removed) else float((~np.isin(lc.out_roots, removed)).mean())
            f_in = 1.0
            if lc.in_roots is not None and len(removed):
                f_in = float((~np.isin(lc.in_roots, removed)).mean())
            macs += lc.macs * f_out * f_in
            params += lc.weight * f_out * f_in + lc.bias * f_out
        return int(round(macs)), int(round(params))

    def unit_savings(self) -> dict[int, tuple[float, float]]:
        """First-order (MACs, params) saved by removing each unit alone."""
        saved: dict[int, list[float]] = {}
        for lc in self.layers:
            for arr, is_out in ((lc.out_roots, True), (lc.in_roots, False)):
                if arr is None:
                    continue
                u, c = np.unique(arr, return_counts=True)
                per = c / arr.shape[0]
                p_scale = (lc.weight + (lc.bias if is_out else 0))
                for r, f in zip(u.tolist(), per.tolist()):
                    s = saved.setdefault(r, [0.0, 0.0])
                    s[0] += lc.macs * f
                    s[1] += p_scale * f
        return {r: (v[0], v[1]) for r, v in saved.items()}


def _activation_matmuls(analysis: Analysis) -> list[tuple[str, int, str]]:
    """(name, MACs per sample, output) of every MatMul between two activations."""
    found = []
    for node in analysis.graph.nodes:
        if node.op != "MatMul" or node.name in analysis.layers:
            continue
        try:
            a_shape = analysis.shape(node.inputs[0])
            out_shape = analysis.shape(node.outputs[0])
        except ShapeUnknownError:
            continue
        batch = out_shape[0] if len(out_shape) > 2 else 1
        found.append((node.name, int(np.prod(out_shape)) * int(a_shape[-1]) // max(batch, 1), node.outputs[0].name))
    return found
