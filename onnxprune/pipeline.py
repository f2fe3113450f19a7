"""Data-driven pruning: calibration data -> scores -> (iterative) selection -> verified model.

This is the module behind ``prune_static`` (onnxruntime style), the HALCON
style handle in :mod:`onnxprune.halcon`, and ``onnxprune prune --calib``.

Iterative schedule: the target is reached in steps; after each step the
surgery is applied, the pruned model re-analysed and the survivors re-scored.
The final model is always built in one surgery from the *original* model,
so its exactness is verified against the original's masked reference.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import onnx

from .api import PathLike, PruneResult, _check_keeps_one, data_free_scores, make_report
from .calibration import CachedDataset, Preprocess, model_input_shapes, open_calibration
from .errors import CalibrationError, InvalidArgumentError, NothingToPruneError
from .graph.io import ModelLike, check_output_path, save_model_atomic
from .passes.prune_channels import masked_reference, prune_channels
from .plan import PruningPlan
from .prepare import Prepared, prepare
from .scoring.activation import activation_scores, bn_scale_scores
from .scoring.oracle import OracleScorer
from .selection import Constraints, Target, select
from .verify import VerificationResult, uniform_inputs, verify_equivalent

logger = logging.getLogger(__name__)

DATA_CRITERIA = ("oracle", "energy", "energy_rel", "activation_mean", "activation_std")
ALL_CRITERIA = ("oracle", "energy", "energy_rel", "magnitude", "l1", "l2", "random", "bn_scale", "activation_mean",
                "activation_std")
RANKINGS = ("per_mac", "raw", "flops_reg")


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
    """

    criterion: str = "oracle"
    percentage: Optional[float] = None
    target_macs: Optional[float] = None
    target_params: Optional[float] = None
    nodes_to_exclude: tuple[str, ...] = ()
    round_to: int | str = "auto"
    max_layer_ratio: float = 0.9
    min_kernels: int = 1
    ranking: str = "per_mac"
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
        if self.criterion not in ALL_CRITERIA:
            raise InvalidArgumentError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(ALL_CRITERIA)}")
        if self.ranking not in RANKINGS:
            raise InvalidArgumentError(f"unknown ranking {self.ranking!r}; choose one of {', '.join(RANKINGS)}")
        if self.steps < 1:
            raise InvalidArgumentError("steps must be at least 1")
        if (self.gradual_start is None) != (self.gradual_gamma is None):
            raise InvalidArgumentError("gradual mode needs both a start and a gamma")
        if self.gradual_start is not None and not (0 < self.gradual_start <= 1 and 0 < self.gradual_gamma <= 1):
            raise InvalidArgumentError("gradual start and gamma are fractions in (0, 1]")
        if self.recover not in ("auto", "lsq", "bias", "none"):
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

    @property
    def needs_data(self) -> bool:
        return self.criterion in DATA_CRITERIA


# ------------------------------------------------------------------ calibration

@dataclass
class Calibration:
    """Calibration samples cached in memory, replayable for every scoring pass."""

    dataset: CachedDataset
    batch_size: int

    def batches(self) -> list[tuple[dict[str, np.ndarray], Optional[np.ndarray]]]:
        return list(self.dataset.batches_with_labels(self.batch_size))

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self.dataset.labels

    def __len__(self) -> int:
        return len(self.dataset)


def load_calibration(source: Any, model: onnx.ModelProto, *, preprocess: Optional[Preprocess] = None,
                     batch_size: int = 32, limit: Optional[int] = None, cache_bytes: int = 2 << 30) -> Calibration:
    """Open and cache any calibration source (reader, folder, .npy/.npz, arrays, iterable)."""
    if isinstance(source, Calibration):
        return source
    if isinstance(source, CachedDataset):
        return Calibration(source, batch_size)
    inputs = model_input_shapes(model)
    reader = open_calibration(source, inputs, preprocess=preprocess, batch_size=batch_size, limit=limit)
    dataset = CachedDataset(reader, cache_bytes, limit=limit)
    if len(dataset) == 0:
        raise CalibrationError("the calibration data holds no samples")
    return Calibration(dataset, batch_size)


# ------------------------------------------------------------------ scoring

def score_units(p: Prepared, config: PruneConfig, calibration: Optional[Calibration],
                scorer_out: Optional[list] = None) -> dict[int, float]:
    """Scores of every prunable unit of ``p`` under the configured criterion."""
    crit = config.criterion
    if crit in ("magnitude", "l1", "l2", "random"):
        return data_free_scores(p, crit, config.seed)
    if crit == "bn_scale":
        return bn_scale_scores(p.analysis)
    if calibration is None:
        raise CalibrationError(f"criterion {crit!r} needs calibration data (--calib)")
    if crit in ("activation_mean", "activation_std", "energy", "energy_rel"):
        kind = crit if crit.startswith("energy") else crit.split("_")[1]
        return activation_scores(p.analysis, (f for f, _ in calibration.batches()), kind)
    scorer = OracleScorer(p.analysis, config.oracle_cost, progress=config.progress)
    scores = scorer.score_all(calibration.batches(), total_batches=math.ceil(len(calibration) / calibration.batch_size))
    if scorer_out is not None:
        scorer_out.append(scorer)
    return scores


def _normalise(p: Prepared, scores: dict[int, float]) -> dict[int, float]:
    """Per-layer L2 normalisation: each unit's score divided by the L2 norm of its layer's scores."""
    a = p.analysis
    by_layer: dict[str, list[int]] = {}
    for r in scores:
        by_layer.setdefault(a.unit_kernels[r][0][0], []).append(r)
    out = {}
    for rs in by_layer.values():
        norm = math.sqrt(sum(scores[r] ** 2 for r in rs)) or 1.0
        for r in rs:
            out[r] = scores[r] / norm
    return out


def rank_scores(p: Prepared, scores: dict[int, float], config: PruneConfig) -> tuple[dict[int, float], bool]:
    """Apply normalisation and the ranking rule; returns (keys, cost_aware flag for selection)."""
    if config.layer_norm:
        scores = _normalise(p, scores)
    if config.ranking == "per_mac":
        return scores, True
    if config.ranking == "flops_reg":
        savings = p.cost.unit_savings()
        dense = max(p.cost.dense_macs, 1)
        lam = config.flops_lambda
        scale = float(np.mean(np.abs(list(scores.values())))) or 1.0
        return {r: s / scale - lam * savings.get(r, (0.0, 0.0))[0] / dense * len(scores) for r, s in scores.items()}, False
    return scores, False


# ------------------------------------------------------------------ schedule

def _schedule(config: PruneConfig) -> list[Target]:
    """Intermediate targets of an iterative run (the last one is the final target)."""
    t = config.target
    kind = "percentage" if t.percentage is not None else ("macs" if t.macs is not None else "params")
    final_removed = t.percentage / 100 if kind == "percentage" else 1 - (t.macs if kind == "macs" else t.params)
    if config.gradual_start is not None:
        fracs, f = [], config.gradual_start
        while f < final_removed - 1e-9:
            fracs.append(f)
            f += config.gradual_gamma
        fracs.append(final_removed)
    else:
        fracs = [final_removed * (i + 1) / config.steps for i in range(config.steps)]
    out = []
    for f in fracs:
        if kind == "percentage":
            out.append(Target(percentage=100 * f))
        elif kind == "macs":
            out.append(Target(macs=max(1 - f, 1e-6)))
        else:
            out.append(Target(params=max(1 - f, 1e-6)))
    return out


@dataclass
class _Tracker:
    """Maps the channels of the current (pruned) model back to the original model."""

    original: Prepared
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    removed_kernels: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.kept = {name: np.arange(l.kernels) for name, l in self.original.analysis.layers.items()}

    def remove(self, current: Prepared, roots: Sequence[int]) -> None:
        for r in roots:
            for layer, ch in current.analysis.unit_kernels[r]:
                self.removed_kernels.add((layer, int(self.kept[layer][ch])))
        rem = np.array(sorted(roots), dtype=np.int64)
        for name, layer in current.analysis.layers.items():
            keep = current.analysis.keep_mask(layer.output, rem)
            if keep is not None:
                self.kept[name] = self.kept[name][keep]

    def original_units(self) -> list[int]:
        a = self.original.analysis
        return sorted({a.unit_of_kernel(layer, ch) for layer, ch in self.removed_kernels})


def _step_target(original: Prepared, current: Prepared, removed_orig: list[int], target: Target) -> Target:
    """Express a target defined on the original model as a target on the current model."""
    if target.percentage is not None:
        a = original.analysis
        total = sum(len(a.unit_kernels[r]) for r in a.prunable_units)
        done = sum(len(a.unit_kernels[r]) for r in removed_orig)
        want = total * target.percentage / 100 - done
        cur_total = sum(len(current.analysis.unit_kernels[r]) for r in current.analysis.prunable_units)
        return Target(percentage=min(99.999, max(0.0, 100 * want / max(cur_total, 1))))
    if target.macs is not None:
        return Target(macs=min(1.0, target.macs * original.cost.dense_macs / max(current.cost.dense_macs, 1)))
    return Target(params=min(1.0, target.params * original.cost.dense_params / max(current.cost.dense_params, 1)))


def plan_units(p: Prepared, config: PruneConfig, calibration: Optional[Calibration],
               scores: Optional[dict[int, float]] = None, *, iterate_from: Optional[dict[int, float]] = None) -> list[int]:
    """Roots (of the original model ``p``) to remove, one-shot or iterative.

    ``scores`` fixes the scores (one-shot); ``iterate_from`` gives the first
    step's scores of an iterative run (they are those of the original model),
    so a caller that already scored the model does not score it twice.
    """
    if not p.analysis.prunable_units:
        raise NothingToPruneError("no prunable layer: every channel group is frozen (see `onnxprune inspect`)")
    schedule = _schedule(config)
    if len(schedule) == 1 or scores is not None:
        unit_scores = scores if scores is not None else score_units(p, config, calibration)
        keys, cost_aware = rank_scores(p, unit_scores, config)
        return select(p.analysis, keys, config.target, config.constraints, cost_aware, p.cost)
    tracker = _Tracker(p)
    current = p
    for i, target in enumerate(schedule):
        removed_orig = tracker.original_units()
        step_target = _step_target(p, current, removed_orig, target)
        logger.info("step %d/%d: %s", i + 1, len(schedule), target.describe())
        if i == 0 and iterate_from is not None:
            unit_scores = iterate_from
        else:
            unit_scores = score_units(current, config, calibration)
        keys, cost_aware = rank_scores(current, unit_scores, config)
        chosen = select(current.analysis, keys, step_target, config.constraints, cost_aware, current.cost)
        if not chosen:
            continue
        tracker.remove(current, chosen)
        if i + 1 < len(schedule):
            pruned = prune_channels(current.analysis, chosen)
            if config.refit_between_steps and config.recover != "none" and calibration is not None:
                from .passes.recover import recover
                pruned, _ = recover(current, chosen, pruned, calibration, config.recover)
            current = prepare(pruned, current.input_shapes)
    return tracker.original_units()


# ------------------------------------------------------------------ top level

def _fidelity(model: onnx.ModelProto, reference_outputs: list[np.ndarray], feeds: dict) -> dict:
    """Relative L2 distance of the first output to the original's, and arg-max agreement when it is a score."""
    from .runtime import make_session
    out = make_session(model).run(None, feeds)[0].astype(np.float64)
    ref = reference_outputs[0].astype(np.float64)
    fid = {"rel_l2": float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))}
    if ref.ndim >= 2 and ref.shape[-1] > 1:
        fid["argmax_agreement"] = float((out.argmax(-1) == ref.argmax(-1)).mean())
    return fid


def _measure(p: Prepared, pruned: onnx.ModelProto, final: onnx.ModelProto, report, calibration, random_feed) -> None:
    """Latency (median, same provider) before/after, and fidelity to the original on calibration data."""
    from .report import measure_latency
    from .runtime import make_session
    one = {k: v[:1] for k, v in random_feed.items()}
    report.before.latency_ms = measure_latency(p.model, one)
    report.after.latency_ms = measure_latency(final, one)
    feeds = calibration.batches()[-1][0] if calibration is not None else random_feed
    ref = make_session(p.model).run(None, feeds)
    report.after.fidelity = _fidelity(final, ref, feeds)
    if final is not pruned:
        report.extra["fidelity_before_recovery"] = _fidelity(pruned, ref, feeds)


def _input_shapes_from(calibration: Optional[Calibration], given) -> Optional[dict]:
    if given:
        return {k: tuple(v) for k, v in given.items()}
    if calibration is None:
        return None
    first = next(iter(calibration.dataset.batches(1)), None)
    return {k: tuple(v.shape) for k, v in first.items()} if first else None


def run_pruning(model_input: ModelLike, model_output: Optional[PathLike], calibration_source: Any = None,
                config: PruneConfig = PruneConfig(), *, preprocess: Optional[Preprocess] = None,
                scores: Optional[dict[int, float]] = None, prepared: Optional[Prepared] = None,
                calibration: Optional[Calibration] = None) -> PruneResult:
    """Score, select (iteratively if asked), recover, verify and write."""
    if model_output is not None:
        check_output_path(model_output, None if isinstance(model_input, onnx.ModelProto) else model_input)
    if calibration is None and calibration_source is not None:
        from .graph.io import load_model
        proto = prepared.original if prepared is not None else load_model(model_input)
        calibration = load_calibration(calibration_source, proto, preprocess=preprocess,
                                       batch_size=config.batch_size, limit=config.calibration_samples,
                                       cache_bytes=config.cache_bytes)
    if config.needs_data and calibration is None and scores is None:
        raise CalibrationError(f"criterion {config.criterion!r} needs calibration data: pass --calib DIR|FILE "
                               "or a calibration_data_reader")
    p = prepared or prepare(model_input, _input_shapes_from(calibration, config.input_shapes), config.nodes_to_exclude)
    removed = plan_units(p, config, calibration, scores)
    _check_keeps_one(p, removed)
    plan = PruningPlan.from_units(p.analysis, removed, criterion=config.criterion,
                                  target=config.target.describe(), ranking=config.ranking, round_to=config.round_to,
                                  steps=len(_schedule(config)))
    pruned = prune_channels(p.analysis, removed)
    ver: Optional[VerificationResult] = None
    feeds = uniform_inputs(p.input_shapes, n=1)
    if calibration is not None:
        feeds += [f for f, _ in calibration.batches()[:1]]
    if config.verify:
        ver = verify_equivalent(pruned, masked_reference(p.analysis, removed), feeds)
    recovered = pruned
    recovery_note = None
    if calibration is not None and config.recover != "none":
        from .passes.recover import recover
        recovered, recovery_note = recover(p, removed, pruned, calibration, config.recover)
    report = make_report(p, recovered, removed, ver)
    if config.measure:
        _measure(p, pruned, recovered, report, calibration, feeds[0])
    if recovery_note:
        report.extra["recovery"] = recovery_note
        report.verification += f"\nrecovery: {recovery_note}"
    out = save_model_atomic(recovered, model_output) if model_output is not None else None
    return PruneResult(recovered, plan, report, ver, out, sorted(removed))


def prune_static(model_input: ModelLike, model_output: Optional[PathLike], calibration_data_reader: Any,
                 config: PruneConfig = PruneConfig(), *, preprocess: Optional[Preprocess] = None) -> PruneResult:
    """Prune with calibration data, in the style of onnxruntime's ``quantize_static``.

    ``calibration_data_reader`` is any onnxruntime CalibrationDataReader
    (``get_next() -> dict | None``), a folder of images, an .npy/.npz file,
    arrays, or an iterable of input dicts; it is read once and cached.
    """
    return run_pruning(model_input, model_output, calibration_data_reader, config, preprocess=preprocess)
