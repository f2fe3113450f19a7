"""Exception types of onnxprune.

Every failure a user can cause (bad file, bad argument, bad calibration data)
surfaces as one of these with a message that says what to do; the CLI prints
the message on one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

# Exit codes of the command line (README, "Command line"): one per outcome a script can act on.
EXIT_OK = 0
EXIT_BAD_INPUT = 2  # any OnnxPruneError: one line on stderr, nothing written
EXIT_BELOW_FLOOR = 3  # the pruned model is below the fidelity floor: nothing written
EXIT_INTERRUPTED = 130


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""

    exit_code = EXIT_BAD_INPUT


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


class BelowFloorError(OnnxPruneError):
    """The pruned model's fidelity to the dense model is below the floor; nothing was written (exit code 3).

    ``result`` holds the run (model, plan, report) so a caller can still look at what was refused.
    """

    exit_code = EXIT_BELOW_FLOOR

    def __init__(self, message: str, result=None) -> None:
        super().__init__(message)
        self.result = result
