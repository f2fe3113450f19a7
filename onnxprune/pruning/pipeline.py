"""The one pruning path: calibration -> scores -> selection -> passes (prune, recover, quantize) -> report -> write.

``prune_model`` (data-free), ``prune_static`` (onnxruntime style),
``apply_plan``, the HALCON handle and ``onnxprune prune|apply`` all end in
:func:`run_pruning`; they differ only in where the units to remove come
from (a criterion, a scores file, a saved plan). The model itself is changed
only by the passes (:mod:`onnxprune.passes`) of one pipeline: channel surgery,
whose ``ensures`` is the exactness check, then recovery when calibration data
is there, then, once the float model was judged, int8 quantization when asked
for (:meth:`PipelineResult.then`). Each pass returns a typed result. A failed
pass stops the run before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from ..calibration import Preprocess
from ..calibration.dataset import Calibration, load_calibration, spread
from ..config import RANKINGS, PruneConfig
from ..errors import BelowFloorError, CalibrationError, NothingToPruneError
from ..fidelity.judge import NOISE_SAMPLES, Judge, holdout_count, make_judge
from ..graph.io import ModelLike, check_output_path, has_external_data, load_model, save_model_atomic
from ..graph.probe import fixed_batch_of, input_dtypes
from ..passes.base import Pass, Pipeline
from ..passes.prune import PruneChannelsPass
from .plan import PruningPlan, refit_meta
from .prepare import Prepared, prepare
from ..report import PathLike, PruneResult, build_report
from ..report.groups import group_importance
from ..passes.verify import uniform_inputs
from .schedule import _schedule, criterion_for, plan_units, rank_scores, score_units

logger = logging.getLogger(__name__)

__all__ = ["PruneConfig", "RANKINGS", "Calibration", "load_calibration", "score_units", "rank_scores",
           "plan_units", "run_pruning", "prune_static"]


def _measure(p: Prepared, pruned: onnx.ModelProto, final: onnx.ModelProto, report, judge: Optional[Judge],
             random_feed, config: PruneConfig = PruneConfig()) -> None:
    """Latency before/after (timed interleaved) and fidelity to the dense model on the judge's rows."""
    from ..latency.timing import LatencySettings, time_against_dense
    if config.target.latency is not None:
        _measure_latency_target(p, final, report, config)
    else:
        fixed = fixed_batch_of(p.model)  # a model that fixes its batch runs at that batch only
        one = {k: v[:fixed or 1] for k, v in random_feed.items()}
        s = time_against_dense(p.model, final, one, LatencySettings(rounds=10, runs=3))
        report.before.latency_ms, report.after.latency_ms = s.dense.median, s.pruned.median
        report.extra["latency_range_ms"] = {"before": s.dense.as_list(), "after": s.pruned.as_list()}
    if judge is not None:
        report.after.fidelity = judge.measure(final)
        if final is not pruned:
            before = judge.measure(pruned)
            before.floor = None  # the floor judges what is written
            report.extra["fidelity_before_recovery"] = before


def _measure_latency_target(p: Prepared, final: onnx.ModelProto, report, config: PruneConfig) -> None:
    """The final model timed interleaved with the dense one as configured. The target counts as met only when
    the measured ranges do not overlap (a difference inside the timing noise is "could not tell")."""
    from ..latency.timing import feeds_for, time_against_dense
    settings = config.latency_settings
    s = time_against_dense(p.model, final, feeds_for(p.model, p.with_batch(settings.batch)), settings)
    report.before.latency_ms, report.after.latency_ms = s.dense.median, s.pruned.median
    fraction, target, distinct = s.fraction, config.target.latency, s.outside_noise
    info = {"target": target, "measured_fraction": fraction, "speedup": s.speedup, "dense_ms": s.dense.as_list(),
            "pruned_ms": s.pruned.as_list(), "fastest_round_fraction": s.fastest_fraction,
            "where": settings.describe(), "missed_by": max(0.0, fraction - target),
            "outside_noise": bool(distinct)}
    report.extra["latency"] = info
    if fraction > target:
        logger.warning("latency target missed: measured %.1f%% of the dense model's time (%s), target %.0f%% "
                       "(over by %.1f points)", 100 * fraction, settings.describe(), 100 * target,
                       100 * (fraction - target))
    elif not distinct:
        logger.warning("latency target: could not tell; the pruned and dense timing ranges overlap (%s)",
                       settings.describe())


def _input_shapes(calibration: Optional[Calibration], given) -> Optional[dict]:
    if given:
        return {k: tuple(v) for k, v in given.items()}
    return calibration.input_shapes() if calibration is not None else None


def prepare_run(model_input: ModelLike, calibration_source: Any, config: PruneConfig, *,
                preprocess: Optional[Preprocess] = None, prepared: Optional[Prepared] = None,
                calibration: Optional[Calibration] = None, hold_out: bool = False) -> tuple[Prepared, Optional[Calibration]]:
    """The analysed model and the cached calibration data of a run (shared by ``score`` and ``prune``).

    ``hold_out``: read the rows the run will hold back for its fidelity on top of ``calibration_samples``, so
    scoring and fitting still see as many."""
    proto = None  # the model read and checked once per run: for the calibration and for prepare
    if calibration is None and calibration_source is not None:
        proto = prepared.original if prepared is not None else load_model(model_input)
        limit = config.calibration_samples
        if hold_out and limit is not None:
            limit += holdout_count(limit)
            if config.recover == "distill":  # the fine-tuning reads more rows than scoring and fitting
                limit = max(limit, config.distill.rows + holdout_count(config.calibration_samples))
        calibration = load_calibration(calibration_source, proto, preprocess=preprocess,
                                       batch_size=config.batch_size, limit=limit, cache_bytes=config.cache_bytes)
    p = prepared or prepare(model_input, _input_shapes(calibration, config.input_shapes), config.nodes_to_exclude,
                            loaded=proto)
    return p, calibration


def distill_split(calibration: Calibration, config: PruneConfig) -> tuple[Calibration, Optional[Calibration]]:
    """(the rows scoring, fitting and judging use, as without distillation; every row but the judge's, for the
    fine-tuning) when more rows were read for distillation than ``calibration_samples`` and its held-back rows."""
    limit, n = config.calibration_samples, len(calibration)
    usual_n = limit + holdout_count(limit) if limit is not None else n
    if n <= usual_n:
        return calibration, None
    usual = spread(n, usual_n)
    judge_rows = usual[spread(usual_n, usual_n - limit)] if usual_n > limit else usual[:0]  # as held_back picks
    rest = np.setdiff1d(np.arange(n), judge_rows)
    return calibration.subset(usual, "scored and fitted"), calibration.subset(rest, "distillation")


def held_back(calibration: Calibration, config: PruneConfig) -> tuple[Calibration, Optional[Calibration]]:
    """(rows to score and fit, rows held back for fidelity or None): the rows read beyond ``calibration_samples``,
    else :func:`holdout_count` of them, spread over the data. ``score`` and ``prune`` split alike, so a prune
    from saved scores is judged on rows the scores never saw."""
    n, limit = len(calibration), config.calibration_samples
    held = n - limit if limit is not None and n > limit else holdout_count(n)
    if held <= 0:
        return calibration, None
    return calibration.split(held)


def make_run_judge(p: Prepared, calibration: Optional[Calibration], config: PruneConfig,
                   evaluation: Optional[Calibration] = None) -> tuple[Optional[Calibration], Judge]:
    """(the calibration left to score and fit, the judge): rows held back from ``calibration`` (or the
    ``evaluation`` data, or random inputs when there is no data at all) with the dense outputs on them."""
    if evaluation is not None:
        feeds, labels, data = evaluation.feeds(), evaluation.labels, "evaluation rows"
    elif calibration is not None:
        calibration, kept_back = held_back(calibration, config)
        if kept_back is not None:
            feeds, labels, data = kept_back.feeds(), kept_back.labels, "held-back calibration rows"
        else:
            feeds, labels = calibration.feeds(), calibration.labels
            data = "calibration rows (too few to hold any back: measured on rows the run fitted)"
    else:
        feeds = [uniform_inputs(p.input_shapes, n=1, dtypes=input_dtypes(p.model), seed=s + 1)[0]
                 for s in range(NOISE_SAMPLES)]
        feeds = [{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}]
        labels, data = None, "random inputs (no data given: pass --calib or --eval for real figures)"
    judge = make_judge(p.model, feeds, labels, data, config.task, config.min_fidelity)
    return calibration, judge


def judged(p: Prepared, calibration: Optional[Calibration], config: PruneConfig, evaluation: Any = None,
           preprocess: Optional[Preprocess] = None) -> tuple[Optional[Calibration], Judge, PruneConfig]:
    """(calibration left to score and fit, the judge, ``config`` with the task's oracle cost): what every command
    that scores or prunes does before scoring (``prune``, ``score``, ``sweep``, the HALCON handle)."""
    if evaluation is not None and not isinstance(evaluation, Calibration):
        evaluation = load_calibration(evaluation, p.original, preprocess=preprocess, batch_size=config.batch_size,
                                      limit=None, cache_bytes=config.cache_bytes)
    calibration, judge = make_run_judge(p, calibration, config, evaluation)
    logger.info("task %s; fidelity measured on %s", judge.spec.describe(), judge.data)
    return calibration, judge, replace(config, oracle_cost=judge.cost(config.oracle_cost))


@dataclass
class _Built:
    """One candidate of a run: the units removed, the passes' result and the report."""

    removed: list[int]
    run: Any
    report: Any
    verification: Any
    config: PruneConfig
    plan: PruningPlan


def run_pruning(model_input: ModelLike, model_output: Optional[PathLike] = None, calibration_source: Any = None,
                config: PruneConfig = PruneConfig(), *, preprocess: Optional[Preprocess] = None,
                scores: Optional[dict[int, float]] = None, prepared: Optional[Prepared] = None,
                calibration: Optional[Calibration] = None, removed: Optional[Sequence[int]] = None,
                plan: Optional[PruningPlan] = None, evaluation: Any = None) -> PruneResult:
    """Choose the units (unless ``removed`` is given), run the passes, judge, report, and write atomically.

    Below the fidelity floor nothing is written: :class:`BelowFloorError` (with the result), or with
    ``config.back_off`` the smallest step back toward dense that meets the floor.
    """
    if model_output is not None:
        check_output_path(model_output, None if isinstance(model_input, onnx.ModelProto) else model_input)
    if config.needs_data and calibration is None and calibration_source is None and scores is None \
            and removed is None:
        raise CalibrationError(f"criterion {config.criterion!r} needs calibration data: pass --calib DIR|FILE "
                               "or a calibration_data_reader")
    if config.quantize and calibration is None and calibration_source is None:
        raise CalibrationError(f"--quantize {config.quantize} needs calibration data (static quantization "
                               "calibrates activation ranges): pass --calib DIR|FILE or a calibration_data_reader")
    has_data = calibration is not None or calibration_source is not None
    config = replace(config, measure=config.measure_for(has_data or evaluation is not None),
                     ranking=config.ranking_for(has_data or scores is not None))
    if config.recover == "distill":
        _check_distill(calibration if calibration is not None else calibration_source)
    p, calibration = prepare_run(model_input, calibration_source, config, preprocess=preprocess,
                                 prepared=prepared, calibration=calibration, hold_out=config.measure)
    judge, distill_rows = None, None
    if config.recover == "distill" and calibration is not None and config.measure:
        calibration, distill_rows = distill_split(calibration, config)
    if config.measure:
        calibration, judge, config = judged(p, calibration, config, evaluation, preprocess)
    if scores is None and removed is None:
        config = replace(config, criterion=criterion_for(p, config, calibration))
    fixed = removed is not None
    built = _build(p, config, calibration, scores, removed, plan)
    if config.recover == "distill":
        _distilled(p, built, judge, distill_rows if distill_rows is not None else calibration)
    if judge is not None:
        built = _judged(p, built, judge, calibration, scores, plan, fixed)
    if judge is None:
        built.report.extra["fidelity_note"] = "not measured (no data given: --calib or --eval measures it)"
    if config.quantize:
        built = _quantized(p, built, calibration, judge)
    final = built.run.model
    external = config.use_external_data_format
    if external is None and has_external_data(model_input):
        external = True
    out = (save_model_atomic(final, model_output, use_external_data_format=external)
           if model_output is not None else None)
    return PruneResult(final, built.plan, built.report, built.verification, out, built.removed)


def _build(p: Prepared, config: PruneConfig, calibration: Optional[Calibration], scores, removed,
           plan: Optional[PruningPlan]) -> _Built:
    """Plan (unless ``removed``), prune, recover; the report without measurements."""
    unit_scores: dict[int, float] = dict(scores or {})
    if removed is None:
        removed = plan_units(p, config, calibration, scores, scores_out=unit_scores)
    removed = sorted(int(r) for r in removed)
    made_plan = plan is None
    if plan is None:
        plan = PruningPlan.from_units(p.analysis, removed, criterion=config.criterion if scores is None else "scores",
                                      target=config.target.describe(), ranking=config.ranking,
                                      round_to=config.round_to, steps=len(_schedule(config)))
    extra = calibration.feeds(first=1) if calibration is not None else []
    passes: list[Pass] = [PruneChannelsPass(p.analysis, removed, verify=config.verify, extra_feeds=extra)]
    if calibration is not None and config.recover != "none":
        from ..passes.recover import RecoverPass  # recovery pulls in least squares: only when it runs
        fit_data = calibration.augmented(config.augment, config.seed) if config.augment else calibration
        passes.append(RecoverPass(p, removed, fit_data, config.recover))
    run = Pipeline(passes)(p.model)
    surgery = run.result_of(PruneChannelsPass.name)
    verification = surgery.verification
    report = build_report(p, run.model, removed, verification)
    if unit_scores:  # a saved plan carries no scores: no importance to show
        report.importance = group_importance(p.analysis, unit_scores, removed)
    recovery = run.result_of("recover")
    if recovery is not None and recovery.summary:
        report.extra["recovery"] = recovery.summary
        report.verification += f"\nrecovery: {recovery.summary}"
    refit = refit_meta(config, recovery.summary if recovery is not None and recovery.summary else None)
    if made_plan and refit is not None:  # `apply` re-fits from these as this run did
        plan.meta["recovery"] = refit
    return _Built(removed, run, report, verification, config, plan)


def _check_distill(data: Any) -> None:
    """Fail fast, in one line, when distillation cannot run at all (no engine, no data)."""
    from ..distill.engine import require_engine
    require_engine()
    if data is None:
        raise CalibrationError("--recover distill needs calibration data (the dense model teaches on it): "
                               "pass --calib DIR|FILE or a calibration_data_reader")


def _distilled(p: Prepared, built: _Built, judge: Optional[Judge], calibration: Optional[Calibration]) -> None:
    """Fine-tune the least-squares model against the dense one (kept only if it beats it on held-back rows)."""
    if judge is None or calibration is None:
        built.report.extra["distillation"] = "not run: it is judged on held-back rows (measure) and needs data"
        return
    from ..passes.distill import DistillPass
    built.run = built.run.then([DistillPass(p.model, calibration, judge, built.config.distill)])
    result = built.run.result_of(DistillPass.name)
    built.report.extra["distillation"] = result.notes[0]
    built.report.verification += f"\ndistill: {result.notes[0]}"
    if result.fidelity_before is not None:
        built.report.extra["fidelity_before_distillation"] = result.fidelity_before


def _measured(p: Prepared, built: _Built, judge: Judge) -> _Built:
    surgery = built.run.result_of(PruneChannelsPass.name)
    random_feed = uniform_inputs(p.input_shapes, n=1, dtypes=input_dtypes(p.model))[0]
    _measure(p, surgery.model, built.run.model, built.report, judge, random_feed, built.config)
    fid = built.report.after.fidelity
    built.report.extra["task"] = judge.spec.describe()
    if fid is not None and fid.below_floor:
        built.report.extra["floor"] = f"below the fidelity floor: {fid.text()}"
    return built


def _judged(p: Prepared, built: _Built, judge: Judge, calibration, scores, plan, fixed: bool) -> _Built:
    """``built`` measured; below the floor, a back-off toward dense (``config.back_off``) or BelowFloorError."""
    built = _measured(p, built, judge)
    fid = built.report.after.fidelity
    if not fid.below_floor:
        return built
    config = built.config
    if config.back_off and not fixed:
        found = _back_off(p, built, judge, calibration, scores)
        if found is not None:
            return found
        why = "no step back toward dense met it"
    elif fixed:
        why = "the units were fixed (a saved plan), so there is nothing to back off"
    else:
        why = "--back-off searches the smallest step back toward dense that meets it"
    raise BelowFloorError(
        f"the pruned model is below the fidelity floor ({fid.text()}); nothing was written. {why}; "
        f"--min-fidelity sets the floor (0: none)", _result(built))


def _result(built: _Built) -> PruneResult:
    return PruneResult(built.run.model, built.plan, built.report, built.verification, None, built.removed)


BACK_OFF_STEPS = 5


def _back_off(p: Prepared, failed: _Built, judge: Judge, calibration, scores) -> Optional[_Built]:
    """Bisection of the budget between the requested one (fails) and dense (meets): the most pruned that meets."""
    config = failed.config
    lo, hi, best = 0.0, 1.0, None
    tried = [f"{config.target.describe()}: {failed.report.after.fidelity.value:.3f}"]
    points = [_macs_and_fidelity(failed)]  # (MACs kept, fidelity) of every budget tried: the report's plot
    for _ in range(BACK_OFF_STEPS):
        mid = (lo + hi) / 2
        step = config_toward_dense(config, mid)
        try:
            cand = _measured(p, _build(p, step, calibration, scores, None, None), judge)
        except NothingToPruneError:
            hi = mid
            continue
        fid = cand.report.after.fidelity
        tried.append(f"{step.target.describe()}: {fid.value:.3f}")
        points.append(_macs_and_fidelity(cand))
        if fid.below_floor:
            lo = mid
        else:
            hi, best = mid, cand
    logger.info("back-off toward dense: %s", "; ".join(tried))
    if best is not None:
        best.report.extra["back_off"] = (f"asked {config.target.describe()}, below the floor; backed off to "
                                         f"{best.config.target.describe()} (tried {'; '.join(tried)})")
        best.report.extra["back_off_points"] = points
    return best


def _macs_and_fidelity(built: _Built) -> list[float]:
    rep = built.report
    return [rep.after.macs / max(rep.before.macs, 1), rep.after.fidelity.value]


def config_toward_dense(config: PruneConfig, t: float) -> PruneConfig:
    """``config`` with its budget moved the fraction ``t`` of the way back toward the dense model."""
    tg = config.target
    if tg.percentage is not None:
        return replace(config, percentage=tg.percentage * (1 - t))
    if tg.latency is not None:
        return replace(config, target_latency=tg.latency + t * (1 - tg.latency))
    if tg.macs is not None:
        return replace(config, target_macs=tg.macs + t * (1 - tg.macs))
    return replace(config, target_params=tg.params + t * (1 - tg.params))


def _quantized(p: Prepared, built: _Built, calibration: Calibration, judge: Optional[Judge] = None) -> _Built:
    """The run's pipeline continued by the quantization pass, once the float model it quantizes was judged
    (the floor and a back-off judge the float model); with ``measure``, the dense model quantized too, for the
    side-by-side table of dense/pruned x fp32/int8 (size, interleaved latency, fidelity to dense fp32)."""
    from ..passes.quantize import QuantizePass
    config, report, pruned = built.config, built.report, built.run.model
    built.run = built.run.then([QuantizePass(calibration, config.quantize)])
    result = built.run.result_of(QuantizePass.name)
    report.extra["quantization"] = result.summary
    if judge is not None:
        report.extra["fidelity_quantized"] = judge.measure(result.model)
    report.verification += f"\nquantize: {result.summary}"
    if config.measure:
        from ..report.compare import compare_variants
        dense_q = QuantizePass(calibration, config.quantize)(p.model).model
        feeds = calibration.feeds(last=1)
        variants = compare_variants({"dense fp32": p.original, "pruned fp32": pruned,
                                     f"dense {config.quantize}": dense_q, f"pruned {config.quantize}": result.model},
                                    feeds, batches=(1, next(iter(feeds[0].values())).shape[0]))
        report.variants = variants
    return built


def prune_static(model_input: ModelLike, model_output: Optional[PathLike], calibration_data_reader: Any,
                 config: PruneConfig = PruneConfig(), *, preprocess: Optional[Preprocess] = None) -> PruneResult:
    """Prune with calibration data, in the style of onnxruntime's ``quantize_static``.

    ``calibration_data_reader`` is any onnxruntime CalibrationDataReader
    (``get_next() -> dict | None``), a folder of images, an .npy/.npz file,
    arrays, or an iterable of input dicts; it is read once and cached.
    """
    return run_pruning(model_input, model_output, calibration_data_reader, config, preprocess=preprocess)
