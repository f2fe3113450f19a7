"""onnxruntime session creation, shared by verification, scoring and reports.

onnxruntime and onnxruntime-gpu install the same module; we import it lazily
so the message for a missing runtime is ours, and pick CUDA when present.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import onnx

from .errors import OnnxPruneError
from .graph.external import needs_external, release_memory, session_file

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


class DeviceRunner:
    """Runs a session with I/O binding so inputs reused across runs stay on the device.

    On CUDA the oracle's tiled activations are uploaded once per cut and
    bound by reference in every run; only the small masks travel each time.
    On the CPU provider binding saves nothing, so plain ``run`` is used
    unless ``binding`` forces the bound path (tests use that to check it).
    """

    def __init__(self, session, binding: bool | None = None) -> None:
        self.session = session
        providers = session.get_providers()
        self.device = "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"
        self.binding = (self.device == "cuda") if binding is None else binding

    def upload(self, array):
        """The array as the session will read it: an OrtValue on the device when binding."""
        if not self.binding:
            return array
        return ort().OrtValue.ortvalue_from_numpy(array, self.device, 0)

    def run(self, outputs: Sequence[str], feeds: dict) -> list:
        if not self.binding:
            return self.session.run(list(outputs), feeds)
        rt = ort()
        io = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, rt.OrtValue):
                io.bind_ortvalue_input(name, value)
            else:
                io.bind_cpu_input(name, value)
        for name in outputs:
            io.bind_output(name, "cpu")
        self.session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()
