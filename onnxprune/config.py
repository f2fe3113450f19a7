"""Settings of a pruning run, each declared once: the groups, the choices, ``PruneConfig`` (``SparsifyConfig``
lives with sparsity).

Every default and every list of choices is written here (or, for the lower layers' own settings, in the
module that owns them: the batch size and cache budget in ``calibration/``, latency settings in
``latency/timing.py``, oracle costs in ``scoring/oracle_cost.py``) and read from here by the command line
(``cli/args.py`` builds its flags' defaults and choices with :func:`default`) and by the Python API
(``prune_model``'s keywords default to the same values). Names follow onnxruntime's quantization tool
where it has one (``nodes_to_exclude``); a bad value fails here, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, Optional, Union

from .calibration.cache import DEFAULT_CACHE_BYTES
from .calibration.readers import DEFAULT_BATCH_SIZE
from .distill.settings import DistillSettings
from .errors import InvalidArgumentError
from .executors import check_executor
from .latency.timing import LatencySettings
from .scoring.auto import AUTO
from .scoring.oracle_cost import COSTS as ORACLE_COSTS
from .scoring.registry import get_criterion

# auto: per_mac, except raw for a data-free run (no calibration data, no scores: magnitude-like scores of
# different layers are not costs of the output, so dividing them by MACs only favours the big layers)
RANKINGS = ("auto", "per_mac", "raw", "flops_reg")
RECOVERY_MODES = ("auto", "lsq", "bias", "none", "distill")
QUANTIZE_MODES = ("int8",)
ALLOCATIONS = ("auto", "sensitivity", "spdy", "block", "greedy")
DEFAULT_PERCENTAGE = 10.0  # HALCON's: share of prunable kernels removed when no target is given
_LATENCY = LatencySettings.__dataclass_fields__

@dataclass(frozen=True)
class Target:
    """What to reach: ``percentage`` of prunable kernels removed, or a kept fraction of MACs/params/latency.

    ``latency`` is the kept fraction of the dense model's *measured* time
    (onnxprune.allocation.latency selects for it).
    """

    percentage: Optional[float] = None
    macs: Optional[float] = None
    params: Optional[float] = None
    latency: Optional[float] = None

    def __post_init__(self) -> None:
        given = [v for v in (self.percentage, self.macs, self.params, self.latency) if v is not None]
        if len(given) > 1:
            raise InvalidArgumentError("give only one of percentage, target MACs, target params, target latency")
        if self.percentage is not None and not 0 <= self.percentage < 100:
            raise InvalidArgumentError(f"percentage must be in [0, 100), got {self.percentage}")
        for name, v in (("target MACs", self.macs), ("target params", self.params),
                        ("target latency", self.latency)):
            if v is not None and not 0 < v <= 1:
                raise InvalidArgumentError(f"{name} is the kept fraction and must be in (0, 1], got {v}")

    @property
    def effective(self) -> "Target":
        if self.percentage is None and self.macs is None and self.params is None and self.latency is None:
            return Target(percentage=DEFAULT_PERCENTAGE)
        return self

    def describe(self) -> str:
        t = self.effective
        if t.percentage is not None:
            return f"{t.percentage:g}% of prunable kernels"
        if t.macs is not None:
            return f"<= {t.macs:.0%} of MACs"
        if t.latency is not None:
            return f"<= {t.latency:.0%} of measured latency"
        return f"<= {t.params:.0%} of parameters"


@dataclass(frozen=True)
class Constraints:
    """Per-layer limits: never remove more than ``max_layer_ratio`` of a layer; keep multiples of ``round_to``.

    ``round_to="auto"`` (the default) picks per group what onnxruntime's CPU
    kernels run fast without costing much accuracy: multiples of 8 for groups
    of 128 channels or more, 4 from 16, free below (see :func:`group_round_to`).
    """

    max_layer_ratio: float = 0.9
    min_kernels: int = 1
    round_to: Union[int, str] = "auto"
    allow_drop: bool = False  # may remove every channel of a droppable group (its residual branch goes)

    def __post_init__(self) -> None:
        if not 0 < self.max_layer_ratio <= 1:
            raise InvalidArgumentError(f"max layer ratio must be in (0, 1], got {self.max_layer_ratio}")
        if self.min_kernels < 1:
            raise InvalidArgumentError("min kernels per layer must be at least 1")
        if self.round_to != "auto" and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise InvalidArgumentError(f"round-to must be a positive integer or 'auto', got {self.round_to!r}")


@dataclass(frozen=True)
class PruneConfig:
    """Every setting of a pruning run; typed and immutable (``dataclasses.replace`` to vary).

    Groups of settings: :attr:`target` (:class:`Target`), :attr:`constraints`
    (:class:`Constraints`) and :attr:`latency_settings` are built from the
    flat keywords, whose defaults are the groups' own.
    ``ranking``: ``per_mac`` (score per MAC saved), ``raw`` (score
    order), ``flops_reg`` (Molchanov's score - ``flops_lambda`` x normalised
    MACs saved), ``auto`` (the default: ``per_mac``, ``raw`` for a data-free
    run, :meth:`ranking_for`). ``measure`` (None: when the run has data or a
    latency target, :meth:`measure_for`) judges fidelity and times the result. ``layer_norm`` divides each layer's scores by their L2 norm
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

    criterion: str = AUTO
    percentage: Optional[float] = None
    target_macs: Optional[float] = None
    target_params: Optional[float] = None
    target_latency: Optional[float] = None
    nodes_to_exclude: tuple[str, ...] = ()
    round_to: int | str = Constraints.round_to
    max_layer_ratio: float = Constraints.max_layer_ratio
    min_kernels: int = Constraints.min_kernels
    allow_drop: bool = Constraints.allow_drop
    ranking: str = "auto"
    allocation: str = AUTO
    flops_lambda: float = 1.0
    layer_norm: bool = False
    steps: int = 1
    gradual_start: Optional[float] = None
    gradual_gamma: Optional[float] = None
    oracle_cost: Union[str, Callable] = AUTO
    calibration_samples: Optional[int] = 256
    batch_size: int = DEFAULT_BATCH_SIZE
    cache_bytes: int = DEFAULT_CACHE_BYTES
    recover: str = AUTO
    augment: int = 0
    quantize: Optional[str] = None
    refit_between_steps: bool = False
    measure: Optional[bool] = None  # None: when the run has data (calibration or evaluation) or a latency target
    input_shapes: Optional[dict[str, tuple[int, ...]]] = None
    verify: bool = True
    seed: int = 0
    progress: bool = False
    latency_provider: Optional[str] = _LATENCY["provider"].default
    latency_batch: int = _LATENCY["batch"].default
    latency_threads: int = _LATENCY["threads"].default
    latency_cache: Optional[str] = _LATENCY["cache_dir"].default
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
        check_executor(self.executor)
        if self.ray_address is not None and self.executor != "ray":
            raise InvalidArgumentError("a Ray address needs the ray executor (--executor ray)")
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))
        if isinstance(self.oracle_cost, str) and self.oracle_cost not in ORACLE_COSTS:
            raise InvalidArgumentError(f"unknown oracle cost {self.oracle_cost!r}; choose one of "
                                       f"{', '.join(ORACLE_COSTS)}")
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
    def latency_settings(self) -> LatencySettings:
        return LatencySettings(self.latency_provider, self.latency_batch, self.latency_threads,
                               cache_dir=self.latency_cache)

    def allocation_for(self, has_data: bool) -> str:
        """The allocation this run uses: ``auto`` resolved (sensitivity needs data, one step, a MAC/param target)."""
        t = self.target
        can = has_data and t.percentage is None and self.steps == 1 and self.gradual_start is None
        if self.allocation == "auto":
            return "sensitivity" if can and self.criterion not in ("oracle", AUTO) else "greedy"
        return self.allocation if can else "greedy"

    def ranking_for(self, data: bool) -> str:
        """The ranking this run uses: ``auto`` resolved (``raw`` when the run has neither calibration data nor
        scores, ``per_mac`` otherwise)."""
        if self.ranking != AUTO:
            return self.ranking
        return "per_mac" if data else "raw"

    def measure_for(self, data: bool) -> bool:
        """Whether this run is judged and timed: ``None`` resolved (with real data or a latency target; random
        inputs would say nothing of the user's outputs)."""
        if self.measure is not None:
            return self.measure
        return data or self.target_latency is not None

    @property
    def needs_data(self) -> bool:
        return self.criterion != AUTO and get_criterion(self.criterion).needs_data


def default(name: str) -> Any:
    """The default of ``PruneConfig.<name>``: what the command line's flags and ``prune_model``'s keywords
    default to, so that no default is written twice."""
    f = {f.name: f for f in fields(PruneConfig)}[name]
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
