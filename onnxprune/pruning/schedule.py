"""From scores to the units to remove: ranking rules and the one-shot or iterative schedule.

Iterative schedule: the target is reached in steps; after each step the
model is pruned by the passes (surgery, and recovery with
``refit_between_steps``), re-analysed and the survivors re-scored. The result is always expressed as units of the *original*
model, so the final model is built in one surgery from it and verified
against the original's masked reference.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..calibration.dataset import Calibration
from ..config import PruneConfig
from ..errors import NothingToPruneError
from ..passes.base import Pass, Pipeline
from ..passes.prune import PruneChannelsPass
from .prepare import Prepared, prepare
from ..scoring.auto import AUTO, resolve_criterion
from ..scoring.registry import ScoreRequest, score
from ..allocation.selection import Target, select

logger = logging.getLogger(__name__)


def score_units(p: Prepared, config: PruneConfig, calibration: Optional[Calibration]) -> dict[int, float]:
    """Scores of every prunable unit of ``p`` under the configured criterion (through the registry).

    Kept in ``p.memo`` per criterion, cost and data, so planning again (a back-off toward dense) does not
    score again."""
    criterion = criterion_for(p, config, calibration)
    key = ("scores", criterion, repr(config.oracle_cost), id(calibration), config.seed)
    if key in p.memo:
        return p.memo[key]
    request = ScoreRequest(batches=calibration.batches() if calibration is not None else None,
                           samples=len(calibration) if calibration is not None else 0,
                           batch_size=calibration.batch_size if calibration is not None else config.batch_size,
                           seed=config.seed, oracle_cost=config.oracle_cost, progress=config.progress,
                           executor=config.executor, ray_address=config.ray_address)
    p.memo[key] = score(criterion, p.analysis, request)
    return p.memo[key]


def criterion_for(p: Prepared, config: PruneConfig, calibration: Optional[Calibration]) -> str:
    """The concrete criterion of a run (``auto`` resolved by the oracle's estimated cost)."""
    return resolve_criterion(config.criterion, len(p.analysis.prunable_units), p.cost.dense_macs,
                             len(calibration) if calibration is not None else 0)


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
    if config.ranking in ("per_mac", AUTO):  # auto unresolved (a caller of the planning functions): per_mac
        return scores, True
    if config.ranking == "flops_reg":
        savings = p.cost.unit_savings()
        dense = max(p.cost.dense_macs, 1)
        lam = config.flops_lambda
        scale = float(np.mean(np.abs(list(scores.values())))) or 1.0
        return {r: s / scale - lam * savings.get(r, (0.0, 0.0))[0] / dense * len(scores) for r, s in scores.items()}, False
    return scores, False


def _drop_scores(p: Prepared, config: PruneConfig, calibration: Optional[Calibration],
                 scored_here: bool) -> Optional[dict[int, float]]:
    """Whole-branch oracle scores when blocks may go and the unit scores are oracle costs on the same scale;
    otherwise None (selection then scores a branch by the sum of its units' scores)."""
    if not (config.allow_drop and scored_here and calibration is not None and config.criterion == "oracle"
            and config.ranking in ("per_mac", "raw", AUTO) and not config.layer_norm):
        return None
    from ..scoring.blocks import drop_scores
    key = ("drop_scores", repr(config.oracle_cost), id(calibration))
    if key not in p.memo:
        p.memo[key] = drop_scores(p.analysis, calibration.batches(), config.oracle_cost)
    return p.memo[key]


def _schedule(config: PruneConfig) -> list[Target]:
    """Intermediate targets of an iterative run (the last one is the final target)."""
    t = config.target
    if t.latency is not None:
        return [t]
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


def latency_units(p: Prepared, scores: dict[int, float], config: PruneConfig) -> list[int]:
    """Units to remove for ``config.target_latency``: the measured table, the knapsack, a measured check."""
    from ..allocation.latency import select_latency
    from ..latency.table import build_table
    if config.layer_norm:
        scores = _normalise(p, scores)
    round_to = config.round_to if isinstance(config.round_to, int) else None
    table = build_table(p.analysis, config.latency_settings, round_to)
    choice = select_latency(p.analysis, scores, config.target.latency, table, config.constraints,
                            measure=config.measure is not False)
    return choice.removed


def plan_units(p: Prepared, config: PruneConfig, calibration: Optional[Calibration],
               scores: Optional[dict[int, float]] = None, *, iterate_from: Optional[dict[int, float]] = None,
               scores_out: Optional[dict[int, float]] = None) -> list[int]:
    """Roots (of the original model ``p``) to remove, one-shot or iterative.

    ``scores`` fixes the scores (one-shot); ``iterate_from`` gives the first
    step's scores of an iterative run (they are those of the original model),
    so a caller that already scored the model does not score it twice.
    ``scores_out`` receives the scores of the original model's units (the
    first step's, for an iterative run): what the report shows per group.
    """
    if not p.analysis.prunable_units:
        raise NothingToPruneError("no prunable layer: every channel group is frozen (see `onnxprune inspect`)")
    schedule = _schedule(config)
    sink = scores_out if scores_out is not None else {}
    if config.target.latency is not None:
        unit_scores = scores if scores is not None else score_units(p, config, calibration)
        sink.update(unit_scores)
        return latency_units(p, unit_scores, config)
    if len(schedule) == 1 or scores is not None:
        unit_scores = scores if scores is not None else score_units(p, config, calibration)
        sink.update(unit_scores)
        if config.allocation_for(calibration is not None) != "greedy":
            from ..allocation.by_sensitivity import plan_by_sensitivity  # least squares: only when it runs
            removed = plan_by_sensitivity(p, config, calibration, rank_scores(p, unit_scores, config)[0])
            if removed is not None:
                return removed
            logger.warning("no allocation by sensitivity meets %s: greedy selection", config.target.describe())
        keys, cost_aware = rank_scores(p, unit_scores, config)
        return select(p.analysis, keys, config.target, config.constraints, cost_aware, p.cost,
                      _drop_scores(p, config, calibration, scores is None))
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
        if i == 0:
            sink.update(unit_scores)
        keys, cost_aware = rank_scores(current, unit_scores, config)
        chosen = select(current.analysis, keys, step_target, config.constraints, cost_aware, current.cost,
                        _drop_scores(current, config, calibration, True))
        if not chosen:
            continue
        tracker.remove(current, chosen)
        if i + 1 < len(schedule):  # the step's model, by the passes of a run (unverified: an intermediate)
            passes: list[Pass] = [PruneChannelsPass(current.analysis, chosen, verify=False)]
            if config.refit_between_steps and config.recover != "none" and calibration is not None:
                from ..passes.recover import RecoverPass  # recovery imports least squares: only when asked
                passes.append(RecoverPass(current, chosen, calibration, config.recover))
            current = prepare(Pipeline(passes)(current.model).model, current.input_shapes, verify=False)
    return tracker.original_units()
