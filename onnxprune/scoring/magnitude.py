"""Weight-magnitude criterion (Li et al. 2017), combined over coupled kernels.

A unit may remove kernels of several layers at once (a residual stream);
its score is the sum of its kernels' norms, each divided by the mean kernel
norm of its own layer so that layers with large fan-in do not dominate a
global ranking.
"""

from __future__ import annotations

import numpy as np

from ..graph.analysis import Analysis


def kernel_norms(analysis: Analysis, p: int = 1) -> dict[str, np.ndarray]:
    """Per layer, the Lp norm of each output kernel (a ConvTranspose kernel lives on axis 1)."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    out: dict[str, np.ndarray] = {}
    for layer in analysis.layers.values():
        node = nodes[layer.name]
        W = np.asarray(node.inputs[1].values, dtype=np.float64)
        if node.op == "ConvTranspose":
            W = np.moveaxis(W, 1, 0)
        elif node.op == "Gemm" and not int(node.attrs.get("transB", 0)):
            W = W.T
        elif node.op == "MatMul":
            W = W.T
        flat = W.reshape(W.shape[0], -1)
        out[layer.name] = np.abs(flat).sum(1) if p == 1 else np.sqrt((flat ** 2).sum(1))
    return out


def magnitude_scores(analysis: Analysis, p: int = 1) -> dict[int, float]:
    """Layer-normalised Lp magnitude of every prunable unit."""
    norms = kernel_norms(analysis, p)
    scale = {name: float(v.mean()) or 1.0 for name, v in norms.items()}
    scores: dict[int, float] = {}
    for r in analysis.prunable_units:
        scores[r] = float(sum(norms[l][c] / scale[l] for l, c in analysis.unit_kernels[r]))
    return scores
