"""onnxruntime sessions over a model held in memory: the one place graph/ (and everything above) opens one.

It lives in graph/ so the graph layer stands alone (probing shapes, sizes and
droppable branches needs a session); :mod:`onnxprune.runtime` re-exports it.
onnxruntime and onnxruntime-gpu install the same module; it is imported
lazily so the message for a missing runtime is ours, and CUDA is picked when
present.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import onnx

from ..errors import OnnxPruneError
from .external import needs_external, release_memory, session_file


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
                 *, threads: int = 0, optimize: bool = True, spin: bool = True,
                 initializers: Optional[dict] = None, weights: Optional[onnx.ModelProto] = None):
    """An InferenceSession on a model held in memory.

    ``spin=False`` stops idle worker threads from spinning: sessions timed in
    turn would otherwise steal each other's cores. A model too big to
    serialise (over 2 GB) is written to a temporary folder with its weights as
    page-aligned external data and opened by path: onnxruntime maps that data
    instead of copying it, so the session adds the weights once, not twice
    (:func:`onnxprune.graph.external.session_file`); the folder is deleted as
    soon as the session is built (the mapping outlives the file's name).
    ``weights`` is the model a skeleton ``model`` takes its weights from;
    ``initializers`` hands a skeleton's weights over as arrays instead.
    """
    rt = ort()
    so = rt.SessionOptions()
    so.log_severity_level = 4  # failures come back as exceptions; the CLI prints them as one line
    if threads:
        so.intra_op_num_threads = threads
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = list(providers or default_providers())
    if initializers is None and isinstance(model, onnx.ModelProto) and (weights is not None or needs_external(model)):
        release_memory()
        with tempfile.TemporaryDirectory(prefix="onnxprune-session-", ignore_cleanup_errors=True) as tmp:
            path = session_file(model, Path(tmp), weights)
            return rt.InferenceSession(str(path), so, providers=providers)
    if initializers:
        names = list(initializers)
        so.add_external_initializers(names, [rt.OrtValue.ortvalue_from_numpy(initializers[n]) for n in names])
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return rt.InferenceSession(data, so, providers=providers)
