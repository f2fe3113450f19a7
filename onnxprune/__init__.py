"""onnxprune: exact structured (channel) pruning of ONNX models, from the model file alone."""

from .pruning.api import InspectReport, PruneResult, apply_plan, inspect, prune_model
from .errors import (CalibrationError, InvalidArgumentError, InvalidModelError, NothingToPruneError,
                     OnnxPruneError, UnsupportedModelError, VerificationError)
from .graph.rules import register_channel_rule
from .pruning.plan import PruningPlan
from .allocation.selection import Constraints, Target

__version__ = "0.1.0"

__all__ = [
    "inspect", "prune_model", "apply_plan", "PruningPlan", "PruneResult", "InspectReport",
    "Target", "Constraints", "register_channel_rule",
    "OnnxPruneError", "InvalidModelError", "UnsupportedModelError", "InvalidArgumentError",
    "NothingToPruneError", "VerificationError", "CalibrationError",
]

from .halcon import (PruningHandle, add_pruning_batch, create_pruning, gen_pruned_model, get_pruning_param,
                     set_pruning_param)
from .pruning.pipeline import PruneConfig, prune_static

__all__ += ["PruneConfig", "prune_static", "PruningHandle", "create_pruning", "set_pruning_param",
            "get_pruning_param", "add_pruning_batch", "gen_pruned_model"]

from .sparsity import SparsifyConfig, sparsify, sparsity_info

__all__ += ["sparsify", "sparsity_info", "SparsifyConfig"]

from .pruning.sweep import sweep

__all__ += ["sweep"]
