"""Settings of unstructured sparsification, validated once when built.

Every field is checked in ``__post_init__`` so that a bad value fails before
any model is loaded, with a message that names the flag to change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

from ..errors import InvalidArgumentError

logger = logging.getLogger(__name__)

FILLERS = ("random", "iternonstruct", "l1", "ln")
SCOPES = ("layer", "global")
MODES = ("static", "gradual")  # what the history records of a run: one step or several
SUPPORTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class SparsifyConfig:
    """How to choose the weights to zero, and how to store the result.

    threshold: fraction of the weights (``ln``: of the slices) that are zero
        after the pass, per layer or over all layers (``scope="global"``);
        zeros already in the weights count, like N2D2's masks.
    relative: read ``threshold`` as a fraction of the weights still non-zero
        (torch's PruningContainer) instead of a fraction of all weights.
    steps, gradual_start, gradual_gamma: the schedule, in the pruning
        verb's words — at once (the default), in ``steps`` equal steps, or
        N2D2's Gradual mode ``gradual_start, gradual_start + gradual_gamma,
        ...`` up to ``threshold`` (both given); the survivors are re-fitted
        between steps when calibration data is given.
    delta: iternonstruct zeroes every |w| <= k*delta for the smallest k
        reaching the threshold (N2D2's Delta).
    n, dim: norm order and axis of the ``ln`` filler (torch's ln_structured).
    op_types, nodes_to_exclude: which nodes' weights are pruned;
        ``nodes_to_exclude`` (onnxruntime's name) takes node or weight names,
        glob patterns allowed.
    dense: store ordinary dense initializers even where sparse tensors
        would be smaller (torch's ``prune.remove``).
    refit: least-squares re-fit of the surviving weights after each step,
        when calibration data is given (ignored otherwise); it uses
        ``refit_samples`` samples, at most ``refit_rows`` sampled output
        positions per layer, a ridge of ``refit_ridge`` (relative to the mean
        Gram diagonal) toward the original weights, and rejects a layer's fit
        that is worse on the ``refit_holdout`` fraction of samples held back.
    """

    threshold: float = 0.5
    filler: str = "l1"
    scope: str = "layer"
    steps: int = 1
    gradual_start: Optional[float] = None
    gradual_gamma: Optional[float] = None
    delta: float = 0.001
    n: float = 2.0
    dim: int = 0
    relative: bool = False
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    nodes_to_exclude: tuple[str, ...] = ()
    seed: int = 0
    dense: bool = False
    refit: bool = True
    refit_samples: int = 256
    refit_rows: int = 8192
    refit_ridge: float = 1e-3
    refit_holdout: float = 0.2

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the dataclass hashable and immutable.
        object.__setattr__(self, "op_types", _as_tuple(self.op_types, "op_types"))
        object.__setattr__(self, "nodes_to_exclude", _as_tuple(self.nodes_to_exclude, "nodes_to_exclude"))
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold < 1.0:
            raise InvalidArgumentError(
                f"threshold must be in [0, 1) (the fraction of weights set to zero), got {self.threshold!r}"
            )
        if self.filler not in FILLERS:
            raise InvalidArgumentError(f"unknown filler {self.filler!r}; choose one of {', '.join(FILLERS)}")
        if self.scope not in SCOPES:
            raise InvalidArgumentError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if self.filler == "ln" and self.scope == "global":
            raise InvalidArgumentError(
                "the ln filler prunes whole slices of one tensor and has no global form "
                "(as in torch); use --scope layer"
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidArgumentError(f"steps must be at least 1, got {self.steps!r}")
        if (self.gradual_start is None) != (self.gradual_gamma is None):
            raise InvalidArgumentError("gradual mode needs both a start and a gamma (--gradual-start, --gradual-gamma)")
        if self.gradual_start is not None and not (0.0 <= self.gradual_start < 1.0 and 0.0 < self.gradual_gamma <= 1.0):
            raise InvalidArgumentError(f"gradual start must be in [0, 1) and gamma in (0, 1], got "
                                       f"{self.gradual_start!r} and {self.gradual_gamma!r}")
        if self.gradual_start is not None and self.steps > 1:
            raise InvalidArgumentError("give steps or a gradual start and gamma, not both")
        if not self.delta > 0.0:
            raise InvalidArgumentError(f"delta must be > 0 (the step of iternonstruct), got {self.delta!r}")
        if not (self.n > 0.0 or math.isinf(self.n)):
            raise InvalidArgumentError(f"n (the norm order of the ln filler) must be > 0 or inf, got {self.n!r}")
        unknown = [t for t in self.op_types if t not in SUPPORTED_OP_TYPES]
        if unknown or not self.op_types:
            raise InvalidArgumentError(
                f"op_types {list(self.op_types)!r} not supported; choose among {', '.join(SUPPORTED_OP_TYPES)}"
            )
        if self.refit_samples < 1 or self.refit_rows < 16:
            raise InvalidArgumentError("refit_samples must be >= 1 and refit_rows >= 16")
        if self.refit_ridge < 0.0:
            raise InvalidArgumentError(f"refit_ridge must be >= 0, got {self.refit_ridge!r}")
        if not 0.0 <= self.refit_holdout < 0.9:
            raise InvalidArgumentError(f"refit_holdout must be in [0, 0.9), got {self.refit_holdout!r}")

    @property
    def mode(self) -> str:
        """``static`` (one step) or ``gradual`` (several), as the history records it."""
        return "gradual" if self.steps > 1 or self.gradual_start is not None else "static"

    def schedule(self) -> tuple[float, ...]:
        """The thresholds of the steps: one at once, ``steps`` equal ones, or start..threshold by gamma."""
        if self.steps > 1:
            return tuple(round(self.threshold * (i + 1) / self.steps, 10) for i in range(self.steps))
        if self.gradual_start is None or self.gradual_start >= self.threshold:
            return (float(self.threshold),)
        steps: list[float] = []
        k = 0
        while True:
            s = round(self.gradual_start + k * self.gradual_gamma, 10)
            if s >= self.threshold - 1e-12:
                break
            steps.append(s)
            k += 1
        steps.append(float(self.threshold))
        return tuple(steps)


def ceil_fraction(fraction: float, count: int) -> int:
    """ceil(fraction * count) computed on the decimal the user wrote (0.7 * 10 is 7, not 8)."""
    return math.ceil(Fraction(repr(float(fraction))) * count)


def _as_tuple(value: Sequence[str] | str | None, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    items = tuple(str(v).strip() for v in value)
    if any(not v for v in items):
        raise InvalidArgumentError(f"{name} contains an empty name")
    return items
