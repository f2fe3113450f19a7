"""Settings of a pruning run: one frozen, validated object per verb (``SparsifyConfig`` lives with sparsity).

Names follow onnxruntime's quantization tool where it has one
(``nodes_to_exclude``); a bad value fails here, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from .errors import InvalidArgumentError
from .scoring.registry import get_criterion
from .selection import Constraints, Target

RANKINGS = ("per_mac", "raw", "flops_reg")
RECOVERY_MODES = ("auto", "lsq", "bias", "none")
ALLOCATIONS = ("auto", "sensitivity", "block", "greedy")


@dataclass(frozen=True)
class PruneConfig:
    """Every setting of a pruning run; typed and immutable (``dataclasses.replace`` to vary).

    ``ranking``: ``per_mac`` (score per MAC saved, default), ``raw`` (score
    order), ``flops_reg`` (Molchanov's score - ``flops_lambda`` x normalised
    MACs saved). ``layer_norm`` divides each layer's scores by their L2 norm
    (the paper's normalisation). ``steps`` > 1, or ``gradual_start`` with
    ``gradual_gamma`` (N2D2's Gradual mode), make the schedule iterative;
    with ``refit_between_steps`` the survivors are scored after the
    recovery re-fit of the previous step (recovery in the loop).
    ``allocation``: how a MAC/parameter budget is shared among groups —
    ``sensitivity`` (measured output distortion of each group at a few
    widths after the re-fit, then a knapsack; the units within a group by
    the criterion), ``block`` (the same with the consumers' own error as
    the loss), ``greedy`` (one global order of unit scores), ``auto``
    (sensitivity with calibration data, one step and a MAC/parameter
    target; greedy otherwise).
    """

    criterion: str = "energy"
    percentage: Optional[float] = None
    target_macs: Optional[float] = None
    target_params: Optional[float] = None
    nodes_to_exclude: tuple[str, ...] = ()
    round_to: int | str = "auto"
    max_layer_ratio: float = 0.9
    min_kernels: int = 1
    ranking: str = "per_mac"
    allocation: str = "auto"
    flops_lambda: float = 1.0
    layer_norm: bool = False
    steps: int = 1
    gradual_start: Optional[float] = None
    gradual_gamma: Optional[float] = None
    oracle_cost: Union[str, Callable] = "auto"
    calibration_samples: Optional[int] = 256
    batch_size: int = 32
    cache_bytes: int = 2 << 30
    recover: str = "auto"
    refit_between_steps: bool = False
    measure: bool = True
    input_shapes: Optional[dict[str, tuple[int, ...]]] = None
    verify: bool = True
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        get_criterion(self.criterion)
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))
        if self.ranking not in RANKINGS:
            raise InvalidArgumentError(f"unknown ranking {self.ranking!r}; choose one of {', '.join(RANKINGS)}")
        if self.allocation not in ALLOCATIONS:
            raise InvalidArgumentError(f"unknown allocation {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
        if self.steps < 1:
            raise InvalidArgumentError("steps must be at least 1")
        if (self.gradual_start is None) != (self.gradual_gamma is None):
            raise InvalidArgumentError("gradual mode needs both a start and a gamma")
        if self.gradual_start is not None and not (0 < self.gradual_start <= 1 and 0 < self.gradual_gamma <= 1):
            raise InvalidArgumentError("gradual start and gamma are fractions in (0, 1]")
        if self.recover not in RECOVERY_MODES:
            raise InvalidArgumentError(f"unknown recovery {self.recover!r}; choose auto, lsq, bias or none")
        if self.batch_size < 1:
            raise InvalidArgumentError("batch size must be positive")
        self.target  # validates the target
        self.constraints

    @property
    def target(self) -> Target:
        return Target(self.percentage, self.target_macs, self.target_params).effective

    @property
    def constraints(self) -> Constraints:
        return Constraints(self.max_layer_ratio, self.min_kernels, self.round_to)

    def allocation_for(self, has_data: bool) -> str:
        """The allocation this run uses: ``auto`` resolved (sensitivity needs data, one step, a MAC/param target)."""
        t = self.target
        can = has_data and t.percentage is None and self.steps == 1 and self.gradual_start is None
        if self.allocation == "auto":
            return "sensitivity" if can else "greedy"
        return self.allocation if can else "greedy"

    @property
    def needs_data(self) -> bool:
        return get_criterion(self.criterion).needs_data
