"""Unstructured sparsity: N2D2- and torch.nn.utils.prune-style weight pruning of ONNX models.

``sparsify`` zeros a fraction of the Conv / Gemm / MatMul weights (fillers
random, iternonstruct, l1, ln; per layer or global; static or gradual with a
least-squares re-fit), composes with earlier passes, stores ONNX sparse
tensors where that makes the file smaller and onnxruntime agrees, and
records the history in the model's metadata for ``sparsity_info``.
"""

from __future__ import annotations

from .api import save_masks, sparsify, sparsity_info
from .config import FILLERS, MODES, SCOPES, SUPPORTED_OP_TYPES, SparsifyConfig
from .results import LayerStats, SparsifyResult, SparsityInfo, StorageDecision, VerificationReport, WeightInfo

__all__ = [
    "FILLERS",
    "MODES",
    "SCOPES",
    "SUPPORTED_OP_TYPES",
    "LayerStats",
    "SparsifyConfig",
    "SparsifyResult",
    "SparsityInfo",
    "StorageDecision",
    "VerificationReport",
    "WeightInfo",
    "save_masks",
    "sparsify",
    "sparsity_info",
]

