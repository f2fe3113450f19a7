"""``onnxprune sweep``: score once, prune to every budget, and show the trade-off before a user commits.

Every budget goes through the one pruning path (:func:`pipeline.run_pruning`
with the shared scores, recovery as by default). Accuracy is measured only on
rows the scores and the recovery never saw: every row of a separate
evaluation source, or every row of the calibration file that calibration
did not take (:mod:`onnxprune.fidelity.held_out`, streamed in batches); without
labels the pruned outputs are compared with the dense model's (fidelity).
All models are timed interleaved with the dense one. The report
(:mod:`onnxprune.report.sweep`) is Markdown + PNG and one self-contained HTML page.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import onnx

from ..calibration import Preprocess
from ..config import PruneConfig
from ..errors import InvalidArgumentError
from ..graph.io import ModelLike
from ..fidelity import TaskCost, make_judge, measure_fidelity
from ..fidelity.cost import needs_task_cost
from ..fidelity.measure import LABELS
from ..fidelity.held_out import held_out, outputs_of
from ..latency.timing import feeds_for, time_models
from .pipeline import prepare_run, run_pruning, score_units
from ..report import Provenance, group_of_layer
from ..report.groups import group_importance
from ..report.sweep import SweepPoint, SweepResult, write_sweep_report
from .schedule import criterion_for

logger = logging.getLogger(__name__)

BUDGET_KINDS = ("macs", "latency")


def parse_budgets(text: str) -> list[float]:
    """'0.9,0.8,0.7' -> [0.9, 0.8, 0.7] (each a kept fraction in (0, 1])."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--budgets {text!r}: expected fractions like 0.9,0.8,0.7") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise InvalidArgumentError(f"--budgets {text!r}: every budget is a kept fraction in (0, 1]")
    return sorted(set(values), reverse=True)


def sweep(model_input: ModelLike, calibration_source: Any, budgets: Sequence[float], out_dir: str | Path, *,
          kind: str = "macs", config: PruneConfig = PruneConfig(), eval_source: Any = None,
          preprocess: Optional[Preprocess] = None, write_models: bool = True,
          kernel_scores: Optional[dict[str, list[float]]] = None,
          provenance: Optional[Provenance] = None) -> SweepResult:
    """Prune ``model_input`` to each kept fraction in ``budgets`` (of MACs or measured latency) and report.

    ``kernel_scores`` (layer -> one score per kernel, as ``onnxprune score``
    writes them) replaces the scoring step. ``provenance``: the command line and calibration set the
    report names (default: this call's calibration source, the date and the machine).
    """
    if kind not in BUDGET_KINDS:
        raise InvalidArgumentError(f"unknown budget kind {kind!r}; choose macs or latency")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a sweep shows the trade-off: it measures every budget and refuses none (min_fidelity 0)
    base = replace(config, percentage=None, target_macs=None, target_params=None, target_latency=None, steps=1,
                   gradual_start=None, gradual_gamma=None, min_fidelity=0.0)
    p, calibration = prepare_run(model_input, calibration_source, base, preprocess=preprocess)
    if calibration is not None:  # the task (and so the oracle's cost) from the dense outputs on a few rows
        spec = make_judge(p.model, calibration.feeds()[:2], None, "calibration rows", base.task).spec
    else:
        spec = make_judge(p.model, [feeds_for(p.model, p.with_batch(8), seed=1)], None, "random", base.task).spec
    base = replace(base, oracle_cost=TaskCost(spec) if base.oracle_cost == "auto" and needs_task_cost(spec)
                   else base.oracle_cost)
    if kernel_scores is None:  # every budget prunes as `prune` would: the criterion (and its allocation) resolved once
        base = replace(base, criterion=criterion_for(p, base, calibration))
    if kernel_scores is not None:
        from .api import scores_from_kernels
        scores = scores_from_kernels(p, kernel_scores)
    else:
        scores = score_units(p, base, calibration)
    notes = []
    name = Path(str(model_input)).stem if not isinstance(model_input, onnx.ModelProto) else "model"
    results = []
    for b in budgets:
        # distillation keeps its weights only when they win on held-back rows: those budgets hold rows back
        cfg = (replace(base, target_macs=b, measure=base.recover == "distill") if kind == "macs"
               else replace(base, target_latency=b))
        path = out / f"{name}_{kind}_{b:g}.onnx" if write_models else None
        res = run_pruning(model_input, path, calibration=calibration, prepared=p, scores=scores, config=cfg)
        results.append((b, res))
        logger.info("budget %g: %s", b, res.report.after.macs / max(res.report.before.macs, 1))
    settings = base.latency_settings
    feed = feeds_for(p.model, p.with_batch(settings.batch))
    models = {"dense": p.original, **{b: r.model for b, r in results}}
    times = time_models(models, feed, settings)
    evaluation = held_out(calibration_source, eval_source, p.original, preprocess=preprocess,
                          batch_size=calibration.batch_size if calibration is not None else base.batch_size,
                          calibration_limit=base.calibration_samples)
    if evaluation is not None:
        outputs, labels = outputs_of(models, evaluation.batches())
        where = evaluation.description(sum(len(b[0]) for b in outputs["dense"]))
    else:
        outputs, labels = outputs_of(models, [(feeds_for(p.model, p.with_batch(64), seed=1), None)])
        where = "64 random inputs (no held-out data: pass an evaluation set)"
        notes.append("fidelity measured on random inputs: pass --eval, or a calibration file with more rows "
                     "than --calib-limit, for a held-out measurement")
    ref = outputs["dense"]
    dense = measure_fidelity(spec, ref, ref, labels, data=where)
    dense_quality = dense.values.get("dense_top1", 1.0) if labels is not None else 1.0
    points = []
    for b, res in results:
        fid = measure_fidelity(spec, ref, outputs[b], labels, data=where)
        q = fid.quality
        rep = res.report
        points.append(SweepPoint(b, rep.after.macs / max(rep.before.macs, 1), rep.after.params / max(rep.before.params, 1),
                                 times[b], q, {lc.name: lc.after for lc in rep.layers},
                                 str(res.output_path) if res.output_path else None, fid.to_dict()))
        if rep.extra.get("distillation"):
            notes.append(f"budget {b:g}: distillation {rep.extra['distillation']}")
        lat = rep.extra.get("latency")
        if lat and lat["missed_by"] > 0:
            notes.append(f"budget {b:g}: latency target missed by {100 * lat['missed_by']:.1f} points "
                         f"(measured {lat['measured_fraction']:.1%})")
    layers = [(layer.name, layer.kernels) for layer in p.analysis.layers.values() if layer.prunable_kernels]
    groups = group_of_layer(p.analysis)
    sensitivity = {g.layer: g.total for g in group_importance(p.analysis, scores)}
    result = SweepResult(name, kind, base.criterion, times["dense"], dense_quality,
                         "top-1 accuracy" if labels is not None and "top1" in dense.values
                         else f"{LABELS[dense.headline]} with the dense model ({spec.task})",
                         where, settings.describe(), points, layers, sensitivity, notes, groups=groups,
                         provenance=provenance or Provenance(calibration=_source_name(calibration_source)))
    write_sweep_report(result, out)
    return result


def _source_name(source: Any) -> Optional[str]:
    """A calibration source as the report names it: its path, or what kind of object it is."""
    if source is None:
        return None
    return str(source) if isinstance(source, (str, Path)) else f"in-memory {type(source).__name__}"
