"""Exception types of onnxprune.

Every failure a user can cause (bad file, bad argument, bad calibration data)
surfaces as one of these with a message that says what to do; the CLI prints
the message on one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""


class InvalidModelError(OnnxPruneError):
    """The file is missing, not ONNX, truncated, or fails the ONNX checker."""


class UnsupportedModelError(OnnxPruneError):
    """The model is valid ONNX but outside what onnxprune handles (quantized, fp16, old opset)."""


class InvalidArgumentError(OnnxPruneError, ValueError):
    """An argument is out of range or inconsistent (percentage, budget, paths, plan)."""


class NothingToPruneError(OnnxPruneError):
    """The model has no prunable convolution kernel."""


class VerificationError(OnnxPruneError):
    """The rewritten model failed a check; nothing was written."""


class CalibrationError(OnnxPruneError):
    """Calibration data is missing, unreadable, or does not fit the model."""
