"""onnxruntime session creation, shared by verification, scoring and reports.

onnxruntime and onnxruntime-gpu install the same module; we import it lazily
so the message for a missing runtime is ours, and pick CUDA when present.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import onnx

from .errors import OnnxPruneError

logger = logging.getLogger(__name__)


def ort():
    """Import onnxruntime or explain how to install it."""
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - depends on the environment
        raise OnnxPruneError(
            "onnxruntime is not installed: pip install 'onnxprune[cpu]' (or 'onnxprune[gpu]' for CUDA)"
        ) from None
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU, then CPU. ONNXPRUNE_PROVIDER overrides."""
    rt = ort()
    forced = os.environ.get("ONNXPRUNE_PROVIDER")
    available = rt.get_available_providers()
    if forced:
        return [forced, "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(model: onnx.ModelProto | bytes, providers: Sequence[str] | None = None,
                 *, threads: int = 0, optimize: bool = True):
    """An InferenceSession on a model held in memory."""
    rt = ort()
    so = rt.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not optimize:
        so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return rt.InferenceSession(data, so, providers=list(providers or default_providers()))
