"""The one pruning path: calibration -> scores -> selection -> passes (prune, recover) -> report -> write.

``prune_model`` (data-free), ``prune_static`` (onnxruntime style),
``apply_plan``, the HALCON handle and ``onnxprune prune|apply`` all end in
:func:`run_pruning`; they differ only in where the units to remove come
from (a criterion, a scores file, a saved plan). The model itself is changed
only by passes (:mod:`onnxprune.passes`): channel surgery, whose ``ensures``
is the exactness check, then recovery when calibration data is there, then
int8 quantization when asked for. A failed pass stops the run before
anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from .calibration import Preprocess
from .calibration.dataset import Calibration, load_calibration
from .config import RANKINGS, PruneConfig
from .errors import CalibrationError
from .graph.io import ModelLike, check_output_path, has_external_data, load_model, save_model_atomic
from .graph.probe import input_dtypes
from .passes.base import Pass, Pipeline
from .passes.prune import PruneChannelsPass
from .plan import PruningPlan
from .prepare import Prepared, prepare
from .report import PathLike, PruneResult, build_report
from .verify import uniform_inputs
from .schedule import _schedule, criterion_for, plan_units, rank_scores, score_units

logger = logging.getLogger(__name__)

__all__ = ["PruneConfig", "RANKINGS", "Calibration", "load_calibration", "score_units", "rank_scores",
           "plan_units", "run_pruning", "prune_static"]


def _fidelity(model: onnx.ModelProto, reference_outputs: list[np.ndarray], feeds: dict) -> dict:
    """Relative L2 distance of the first output to the original's, and arg-max agreement when it is a score."""
    from .compare import output_fidelity
    return output_fidelity(model, [reference_outputs[0]], [feeds])


def _measure(p: Prepared, pruned: onnx.ModelProto, final: onnx.ModelProto, report, calibration, random_feed,
             config: PruneConfig = PruneConfig()) -> None:
    """Latency (median, same provider) before/after, and fidelity to the original on calibration data."""
    from .compare import interleaved_latency
    from .runtime import make_session
    if config.target.latency is not None:
        _measure_latency_target(p, final, report, config)
    else:
        one = {k: v[:1] for k, v in random_feed.items()}
        timing = interleaved_latency({"before": p.model, "after": final}, one, rounds=10, runs=3)
        report.before.latency_ms, report.after.latency_ms = timing["before"][0], timing["after"][0]
    feeds = calibration.batches()[-1][0] if calibration is not None else random_feed
    ref = make_session(p.model).run(None, feeds)
    report.after.fidelity = _fidelity(final, ref, feeds)
    if final is not pruned:
        report.extra["fidelity_before_recovery"] = _fidelity(pruned, ref, feeds)


def _measure_latency_target(p: Prepared, final: onnx.ModelProto, report, config: PruneConfig) -> None:
    """The final model timed interleaved with the dense one as configured; a miss is reported and logged."""
    from .latency.measure import feeds_for, time_interleaved
    settings = config.latency_settings
    feed = feeds_for(p.model, p.with_batch(settings.batch))
    t = time_interleaved({"dense": p.model, "pruned": final}, {"dense": feed, "pruned": feed}, settings)
    dense, pruned = t["dense"], t["pruned"]
    report.before.latency_ms, report.after.latency_ms = dense.median, pruned.median
    fraction = pruned.median / max(dense.median, 1e-12)
    target = config.target.latency
    info = {"target": target, "measured_fraction": fraction, "speedup": dense.median / max(pruned.median, 1e-12),
            "dense_ms": [dense.median, dense.low, dense.high], "pruned_ms": [pruned.median, pruned.low, pruned.high],
            "fastest_round_fraction": pruned.low / max(dense.low, 1e-12),
            "where": settings.describe(), "missed_by": max(0.0, fraction - target)}
    report.extra["latency"] = info
    if fraction > target:
        logger.warning("latency target missed: measured %.1f%% of the dense model's time (%s), target %.0f%% "
                       "(over by %.1f points)", 100 * fraction, settings.describe(), 100 * target,
                       100 * (fraction - target))


def _input_shapes(calibration: Optional[Calibration], given) -> Optional[dict]:
    if given:
        return {k: tuple(v) for k, v in given.items()}
    return calibration.input_shapes() if calibration is not None else None


def prepare_run(model_input: ModelLike, calibration_source: Any, config: PruneConfig, *,
                preprocess: Optional[Preprocess] = None, prepared: Optional[Prepared] = None,
                calibration: Optional[Calibration] = None) -> tuple[Prepared, Optional[Calibration]]:
    """The analysed model and the cached calibration data of a run (shared by ``score`` and ``prune``)."""
    if calibration is None and calibration_source is not None:
        proto = prepared.original if prepared is not None else load_model(model_input)
        calibration = load_calibration(calibration_source, proto, preprocess=preprocess,
                                       batch_size=config.batch_size, limit=config.calibration_samples,
                                       cache_bytes=config.cache_bytes)
    p = prepared or prepare(model_input, _input_shapes(calibration, config.input_shapes), config.nodes_to_exclude)
    return p, calibration


def run_pruning(model_input: ModelLike, model_output: Optional[PathLike] = None, calibration_source: Any = None,
                config: PruneConfig = PruneConfig(), *, preprocess: Optional[Preprocess] = None,
                scores: Optional[dict[int, float]] = None, prepared: Optional[Prepared] = None,
                calibration: Optional[Calibration] = None, removed: Optional[Sequence[int]] = None,
                plan: Optional[PruningPlan] = None) -> PruneResult:
    """Choose the units (unless ``removed`` is given), run the passes, report, and write atomically."""
    if model_output is not None:
        check_output_path(model_output, None if isinstance(model_input, onnx.ModelProto) else model_input)
    if config.needs_data and calibration is None and calibration_source is None and scores is None \
            and removed is None:
        raise CalibrationError(f"criterion {config.criterion!r} needs calibration data: pass --calib DIR|FILE "
                               "or a calibration_data_reader")
    if config.quantize and calibration is None and calibration_source is None:
        raise CalibrationError(f"--quantize {config.quantize} needs calibration data (static quantization "
                               "calibrates activation ranges): pass --calib DIR|FILE or a calibration_data_reader")
    p, calibration = prepare_run(model_input, calibration_source, config, preprocess=preprocess,
                                 prepared=prepared, calibration=calibration)
    if scores is None and removed is None:
        config = replace(config, criterion=criterion_for(p, config, calibration))
    if removed is None:
        removed = plan_units(p, config, calibration, scores)
        p.analysis.release_weights()  # the criteria read the weights; the surgery reads its own copy
    removed = sorted(int(r) for r in removed)
    if plan is None:
        plan = PruningPlan.from_units(p.analysis, removed, criterion=config.criterion if scores is None else "scores",
                                      target=config.target.describe(), ranking=config.ranking,
                                      round_to=config.round_to, steps=len(_schedule(config)))
    extra = [f for f, _ in calibration.batches()[:1]] if calibration is not None else []
    passes: list[Pass] = [PruneChannelsPass(p.analysis, removed, verify=config.verify, extra_feeds=extra)]
    if calibration is not None and config.recover != "none":
        from .passes.recover import RecoverPass  # recovery pulls in least squares: only when it runs
        fit_data = calibration.augmented(config.augment, config.seed) if config.augment else calibration
        passes.append(RecoverPass(p, removed, fit_data, config.recover))
    run = Pipeline(passes)(p.model)
    surgery = run.result_of(PruneChannelsPass.name)
    verification = surgery.details.get("verification")
    report = build_report(p, run.model, removed, verification)
    if config.measure:
        _measure(p, surgery.model, run.model, report, calibration,
                 uniform_inputs(p.input_shapes, n=1, dtypes=input_dtypes(p.model))[0], config)
    recovery = run.result_of("recover")
    if recovery is not None and recovery.notes:
        report.extra["recovery"] = recovery.notes[0]
        report.verification += f"\nrecovery: {recovery.notes[0]}"
    final = run.model
    if config.quantize:
        final = _quantize(p, run.model, calibration, config, report)
    external = config.use_external_data_format
    if external is None and has_external_data(model_input):
        external = True
    out = (save_model_atomic(final, model_output, use_external_data_format=external)
           if model_output is not None else None)
    return PruneResult(final, plan, report, verification, out, removed)


def _quantize(p: Prepared, pruned: onnx.ModelProto, calibration: Calibration, config: PruneConfig, report) -> onnx.ModelProto:
    """The pruned float model quantized (a verified pass); with ``measure``, the dense model too, for the
    side-by-side table of dense/pruned x fp32/int8 (size, interleaved latency, fidelity to dense fp32)."""
    from .passes.quantize import QuantizePass
    result = QuantizePass(calibration, config.quantize)(pruned)
    report.extra["quantization"] = result.notes[-1]
    report.verification += f"\nquantize: {result.notes[-1]}"
    if config.measure:
        from .compare import compare_variants
        dense_q = QuantizePass(calibration, config.quantize)(p.model).model
        feeds = calibration.feeds()[-1:]
        variants = compare_variants({"dense fp32": p.original, "pruned fp32": pruned,
                                     f"dense {config.quantize}": dense_q, f"pruned {config.quantize}": result.model},
                                    feeds, batches=(1, next(iter(feeds[0].values())).shape[0]))
        report.variants = variants
    return result.model


def prune_static(model_input: ModelLike, model_output: Optional[PathLike], calibration_data_reader: Any,
                 config: PruneConfig = PruneConfig(), *, preprocess: Optional[Preprocess] = None) -> PruneResult:
    """Prune with calibration data, in the style of onnxruntime's ``quantize_static``.

    ``calibration_data_reader`` is any onnxruntime CalibrationDataReader
    (``get_next() -> dict | None``), a folder of images, an .npy/.npz file,
    arrays, or an iterable of input dicts; it is read once and cached.
    """
    return run_pruning(model_input, model_output, calibration_data_reader, config, preprocess=preprocess)
