"""Public Python API: inspect a model, prune it, apply a saved plan.

Every function accepts a path or an ``onnx.ModelProto`` and never modifies
its input; a file is written only after verification passed, atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import onnx

from .errors import InvalidArgumentError, NothingToPruneError
from .graph.io import ModelLike, check_output_path, save_model_atomic
from .passes.prune_channels import masked_reference, prune_channels
from .plan import PruningPlan
from .prepare import Prepared, prepare
from .report import LayerChange, ModelStats, Report, count_params
from .scoring import magnitude_scores, random_scores
from .selection import Constraints, Target, select
from .verify import VerificationResult, uniform_inputs, verify_equivalent

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
CRITERIA = ("magnitude", "l1", "l2", "random")


@dataclass
class LayerInfo:
    name: str
    op: str
    kernels: int
    prunable_kernels: int
    macs: int
    params: int
    group: Optional[int]


@dataclass
class GroupInfo:
    id: int
    name: str
    units: int
    kernels: int
    layers: list[str]
    frozen_reason: Optional[str]


@dataclass
class InspectReport:
    """What ``onnxprune inspect`` shows; field names follow HALCON where it has one."""

    layers: list[LayerInfo]
    groups: list[GroupInfo]
    prunable_conv_num: int
    prunable_conv_layer_name: list[str]
    prunable_kernel_num: int
    total_kernels: int
    macs: int
    params: int
    input_shapes: dict[str, tuple[int, ...]]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return asdict(self)


def _inspect_prepared(p: Prepared) -> InspectReport:
    a = p.analysis
    group_of_layer: dict[str, int] = {}
    for g in a.groups:
        for name in g.layers:
            group_of_layer.setdefault(name, g.id)
    layers = [LayerInfo(l.name, l.op, l.kernels, l.prunable_kernels, l.macs, l.params, group_of_layer.get(l.name))
              for l in a.layers.values()]
    groups = [GroupInfo(g.id, g.name, len(g.units), sum(len(a.unit_kernels[r]) for r in g.units), g.layers,
                        g.frozen_reason) for g in a.groups]
    prunable = [l for l in layers if l.prunable_kernels > 0]
    return InspectReport(
        layers=layers, groups=groups, prunable_conv_num=len(prunable),
        prunable_conv_layer_name=[l.name for l in prunable],
        prunable_kernel_num=sum(l.prunable_kernels for l in prunable),
        total_kernels=sum(l.kernels for l in layers),
        macs=p.cost.dense_macs, params=count_params(p.model), input_shapes=p.input_shapes)


def inspect(model: ModelLike, input_shapes: Optional[dict[str, Sequence[int]]] = None,
            exclude: Iterable[str] = ()) -> InspectReport:
    """Prunable layers, channel groups (frozen ones with the reason) and HALCON-style totals."""
    return _inspect_prepared(prepare(model, input_shapes, exclude))


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and the before/after report."""

    model: onnx.ModelProto
    plan: PruningPlan
    report: Report
    verification: Optional[VerificationResult]
    output_path: Optional[Path] = None
    removed_units: list[int] = field(default_factory=list)


def data_free_scores(p: Prepared, criterion: str, seed: int = 0) -> dict[int, float]:
    """Scores of the criteria that need no calibration data."""
    if criterion in ("magnitude", "l1"):
        return magnitude_scores(p.analysis, 1)
    if criterion == "l2":
        return magnitude_scores(p.analysis, 2)
    if criterion == "random":
        return random_scores(p.analysis, seed)
    raise InvalidArgumentError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def build_pruned(p: Prepared, removed: list[int], *, verify: bool = True,
                 extra_feeds: Iterable[dict[str, np.ndarray]] = ()) -> tuple[onnx.ModelProto, Optional[VerificationResult]]:
    """Surgery plus verification against the masked reference; raises VerificationError on any mismatch."""
    pruned = prune_channels(p.analysis, removed)
    result = None
    if verify:
        reference = masked_reference(p.analysis, removed)
        feeds = uniform_inputs(p.input_shapes, n=1) + list(extra_feeds)
        result = verify_equivalent(pruned, reference, feeds)
    return pruned, result


def make_report(p: Prepared, pruned: onnx.ModelProto, removed: list[int],
                verification: Optional[VerificationResult]) -> Report:
    a = p.analysis
    rem = np.array(sorted(removed), dtype=np.int64)
    macs_after, _ = p.cost.evaluate(rem)
    before = ModelStats(count_params(p.original), p.cost.dense_macs, int(p.original.ByteSize()))
    after = ModelStats(count_params(pruned), macs_after, int(pruned.ByteSize()))
    layers = []
    for layer in a.layers.values():
        keep = a.keep_mask(layer.output, rem)
        layers.append(LayerChange(layer.name, layer.op, layer.kernels, int(keep.sum()) if keep is not None else layer.kernels))
    removed_kernels = sum(len(a.unit_kernels[r]) for r in removed)
    prunable = sum(len(a.unit_kernels[r]) for r in a.prunable_units)
    return Report(before, after, layers, removed_kernels, prunable,
                  verification.summary() if verification else "verification skipped")


def _finish(p: Prepared, removed: list[int], plan: PruningPlan, output: Optional[PathLike], verify: bool,
            extra_feeds: Iterable[dict[str, np.ndarray]] = ()) -> PruneResult:
    pruned, ver = build_pruned(p, removed, verify=verify, extra_feeds=extra_feeds)
    report = make_report(p, pruned, removed, ver)
    out_path = save_model_atomic(pruned, output) if output is not None else None
    return PruneResult(pruned, plan, report, ver, out_path, sorted(removed))


def prune_model(model_input: ModelLike, model_output: Optional[PathLike] = None, *,
                criterion: str = "magnitude", percentage: Optional[float] = None,
                target_macs: Optional[float] = None, target_params: Optional[float] = None,
                exclude: Iterable[str] = (), round_to: int | str = "auto", max_layer_ratio: float = 0.9,
                min_kernels: int = 1, cost_aware: bool = False,
                scores: Optional[dict[str, list[float]]] = None,
                input_shapes: Optional[dict[str, Sequence[int]]] = None,
                verify: bool = True, seed: int = 0) -> PruneResult:
    """Prune by a data-free criterion (magnitude/random) or by given per-kernel ``scores``.

    ``percentage`` is HALCON's: the share of prunable kernels to remove
    (default 10). ``target_macs``/``target_params`` are kept fractions.
    ``scores`` maps layer name to one score per output kernel (as written
    by ``onnxprune score``); a unit's score is the mean over its kernels.
    """
    target = Target(percentage, target_macs, target_params)
    constraints = Constraints(max_layer_ratio, min_kernels, round_to)
    if model_output is not None:
        check_output_path(model_output, None if isinstance(model_input, onnx.ModelProto) else model_input)
    p = prepare(model_input, input_shapes, exclude)
    if not p.analysis.prunable_units:
        raise NothingToPruneError("no prunable layer: every channel group is frozen "
                                  "(run `onnxprune inspect` to see why)")
    unit_scores = scores_from_kernels(p, scores) if scores is not None else data_free_scores(p, criterion, seed)
    removed = select(p.analysis, unit_scores, target, constraints, cost_aware, p.cost)
    plan = PruningPlan.from_units(p.analysis, removed, criterion=criterion if scores is None else "scores",
                                  target=target.effective.describe())
    return _finish(p, removed, plan, model_output, verify)


def scores_from_kernels(p: Prepared, scores: dict[str, list[float]]) -> dict[int, float]:
    """Unit scores from per-kernel scores keyed by layer name (mean over a unit's scored kernels).

    A scores file written by ``onnxprune score`` repeats a coupled unit's
    score on each of its kernels, so the mean gives it back unchanged.
    """
    a = p.analysis
    out: dict[int, float] = {}
    for r in a.prunable_units:
        total, seen = 0.0, 0
        for layer, ch in a.unit_kernels[r]:
            vals = scores.get(layer)
            if vals is not None:
                if len(vals) != a.layers[layer].kernels:
                    raise InvalidArgumentError(f"scores for {layer!r} have {len(vals)} entries, the layer has "
                                               f"{a.layers[layer].kernels} kernels: scores from another model?")
                if vals[ch] is None or not np.isfinite(vals[ch]):
                    continue
                total += float(vals[ch])
                seen += 1
        if seen:
            out[r] = total / seen
    if not out:
        raise InvalidArgumentError("the scores name none of the model's prunable layers")
    return out


def kernel_scores(p: Prepared, unit_scores: dict[int, float]) -> dict[str, list[float]]:
    """Per-layer, per-kernel view of unit scores (NaN for kernels of frozen units)."""
    a = p.analysis
    out = {name: [float("nan")] * layer.kernels for name, layer in a.layers.items()}
    for r, s in unit_scores.items():
        for layer, ch in a.unit_kernels[r]:
            out[layer][ch] = float(s)
    return {k: v for k, v in out.items() if any(np.isfinite(x) for x in v)}


def apply_plan(model_input: ModelLike, plan: Union[PruningPlan, PathLike], model_output: Optional[PathLike] = None,
               *, input_shapes: Optional[dict[str, Sequence[int]]] = None, verify: bool = True) -> PruneResult:
    """Remove exactly the kernels a saved plan names (with their coupled channels)."""
    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    if model_output is not None:
        check_output_path(model_output, None if isinstance(model_input, onnx.ModelProto) else model_input)
    p = prepare(model_input, input_shapes)
    removed = plan.to_units(p.analysis)
    _check_keeps_one(p, removed)
    return _finish(p, removed, plan, model_output, verify)


def _check_keeps_one(p: Prepared, removed: list[int]) -> None:
    rem = np.array(removed, dtype=np.int64)
    for name, lab in p.analysis.labels.items():
        keep = p.analysis.keep_mask(name, rem)
        if keep is not None and keep.size and not keep.any():
            raise InvalidArgumentError(f"the plan removes every channel of tensor {name!r}; "
                                       "a group must keep at least one channel")
