"""onnxruntime on a device: I/O binding for scoring; sessions come from :mod:`onnxprune.graph.session`.

``ort``, ``default_providers`` and ``make_session`` are re-exported here for
the code above the graph layer.
"""

from __future__ import annotations

from typing import Sequence

from .graph.session import default_providers, make_session, ort

__all__ = ["DeviceRunner", "default_providers", "make_session", "ort"]


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
