"""``--recover distill``: the dense model teaches the pruned one on unlabeled calibration rows.

:mod:`.settings` (no torch), :mod:`.engine` (ONNX <-> torch by initializer
name), :mod:`.train` (the loop). PyTorch and onnx2torch are an optional extra:
``pip install "onnxprune[distill]"``.
"""

from .settings import DistillSettings

__all__ = ["DistillSettings"]
