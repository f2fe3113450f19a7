"""Settings of a pruning run: one frozen, validated object per verb (``SparsifyConfig`` lives with sparsity).

Names follow onnxruntime's quantization tool where it has one
(``nodes_to_exclude``); a bad value fails here, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from .distill.settings import DistillSettings
from .errors import InvalidArgumentError
from .scoring.auto import AUTO
from .scoring.registry import get_criterion
from .selection import Constraints, Target

RANKINGS = ("per_mac", "raw", "flops_reg")
RECOVERY_MODES = ("auto", "lsq", "bias", "none", "distill")
QUANTIZE_MODES = ("int8",)
ALLOCATIONS = ("auto", "sensitivity", "spdy", "block", "greedy")


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
    ``target_latency`` is a kept fraction of the time measured with
    ``latency_provider`` (None: the default), ``latency_batch`` and
    ``latency_threads`` (0: onnxruntime's default); tables are cached in
    ``latency_cache`` (None: ``~/.cache/onnxprune/latency``). It is one-shot.
    ``executor``: where the oracle's tasks run, ``local`` threads or ``ray``
    (the cluster at ``ray_address``; None starts a local Ray instance).
    ``allocation``: how a MAC/parameter budget is shared among groups —
    ``sensitivity`` (measured output distortion of each group at a few
    widths after the re-fit, then a knapsack; the units within a group by
    the criterion), ``spdy`` (the same, then SPDY's search of per-group
    weights judged by the joint distortion on the held-back samples; it
    over-fits them on EfficientNet-Lite0), ``block`` (the consumers' own
    error as the loss), ``greedy`` (one global order of unit scores),
    ``auto`` (greedy for the oracle, whose scores are output changes and
    compare across layers; sensitivity for local criteria when there is
    calibration data, one step and a MAC/parameter target; greedy
    otherwise). ``criterion="auto"``: see :mod:`onnxprune.scoring.auto`.
    ``task`` (auto: guessed from the outputs and exporter metadata) says what
    the outputs are to their user; it sets the oracle's cost and the
    fidelity reported. ``min_fidelity`` is the floor of that fidelity on
    held-back rows (None: the task's default, 0: none): below it nothing is
    written (``BelowFloorError``) unless ``back_off`` finds the smallest step
    back toward dense that meets it.
    """

    criterion: str = "auto"
    percentage: Optional[float] = None
    target_macs: Optional[float] = None
    target_params: Optional[float] = None
    target_latency: Optional[float] = None
    nodes_to_exclude: tuple[str, ...] = ()
    round_to: int | str = "auto"
    max_layer_ratio: float = 0.9
    min_kernels: int = 1
    allow_drop: bool = False
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
    augment: int = 0
    quantize: Optional[str] = None
    refit_between_steps: bool = False
    measure: bool = True
    input_shapes: Optional[dict[str, tuple[int, ...]]] = None
    verify: bool = True
    seed: int = 0
    progress: bool = False
    latency_provider: Optional[str] = None
    latency_batch: int = 1
    latency_threads: int = 0
    latency_cache: Optional[str] = None
    use_external_data_format: Optional[bool] = None  # None: when the input has external data or is over 1.8 GB
    executor: str = "local"
    ray_address: Optional[str] = None
    task: str = "auto"
    min_fidelity: Optional[float] = None  # None: the task's default floor (fidelity/tasks.py); 0: no floor
    back_off: bool = False
    distill: DistillSettings = DistillSettings()  # with recover="distill": least squares, then fine-tuning

    def __post_init__(self) -> None:
        if self.criterion != AUTO:
            get_criterion(self.criterion)
        from .executors import check_executor
        check_executor(self.executor)
        if self.ray_address is not None and self.executor != "ray":
            raise InvalidArgumentError("a Ray address needs the ray executor (--executor ray)")
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
            raise InvalidArgumentError(f"unknown recovery {self.recover!r}; choose auto, lsq, bias, none or distill")
        if isinstance(self.augment, bool) or not isinstance(self.augment, int) or self.augment < 0:
            raise InvalidArgumentError(f"augment is a number of rounds >= 0, got {self.augment!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise InvalidArgumentError(f"unknown quantization {self.quantize!r}; choose {', '.join(QUANTIZE_MODES)}")
        from .fidelity.tasks import TASKS
        if self.task not in TASKS:
            raise InvalidArgumentError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.min_fidelity is not None and not 0 <= self.min_fidelity <= 1:
            raise InvalidArgumentError(f"min_fidelity is a fraction in [0, 1], got {self.min_fidelity!r}")
        if self.batch_size < 1:
            raise InvalidArgumentError("batch size must be positive")
        self.target  # validates the target
        self.constraints
        if self.target_latency is not None:
            if self.steps > 1 or self.gradual_start is not None:
                raise InvalidArgumentError("--target-latency is one-shot: drop --steps/--gradual-*")
            self.latency_settings

    @property
    def target(self) -> Target:
        return Target(self.percentage, self.target_macs, self.target_params, self.target_latency).effective

    @property
    def constraints(self) -> Constraints:
        return Constraints(self.max_layer_ratio, self.min_kernels, self.round_to, self.allow_drop)

    @property
    def latency_settings(self):
        from .latency.measure import LatencySettings
        return LatencySettings(self.latency_provider, self.latency_batch, self.latency_threads,
                               cache_dir=self.latency_cache)

    def allocation_for(self, has_data: bool) -> str:
        """The allocation this run uses: ``auto`` resolved (sensitivity needs data, one step, a MAC/param target)."""
        t = self.target
        can = has_data and t.percentage is None and self.steps == 1 and self.gradual_start is None
        if self.allocation == "auto":
            return "sensitivity" if can and self.criterion not in ("oracle", AUTO) else "greedy"
        return self.allocation if can else "greedy"

    @property
    def needs_data(self) -> bool:
        return self.criterion != AUTO and get_criterion(self.criterion).needs_data
