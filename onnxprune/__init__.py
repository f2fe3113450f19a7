"""onnxprune: exact structured (channel) pruning of ONNX models, from the model file alone."""

from .api import InspectReport, PruneResult, apply_plan, inspect, prune_model
from .errors import (CalibrationError, InvalidArgumentError, InvalidModelError, NothingToPruneError,
                     OnnxPruneError, UnsupportedModelError, VerificationError)
from .plan import PruningPlan
from .selection import Constraints, Target

__version__ = "0.1.0"

__all__ = [
    "inspect", "prune_model", "apply_plan", "PruningPlan", "PruneResult", "InspectReport",
    "Target", "Constraints",
    "OnnxPruneError", "InvalidModelError", "UnsupportedModelError", "InvalidArgumentError",
    "NothingToPruneError", "VerificationError", "CalibrationError",
]
