"""Public Python API: inspect a model, prune it data-free or from scores, apply a saved plan.

Every function accepts a path or an ``onnx.ModelProto`` and never modifies
its input; a file is written only after verification passed, atomically.
All of them run the one pruning path of :mod:`onnxprune.pruning.pipeline`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from ..config import PruneConfig
from ..errors import InvalidArgumentError, NothingToPruneError
from ..graph.io import ModelLike
from ..passes.prune import build_pruned
from .pipeline import run_pruning
from .plan import PruningPlan
from .prepare import Prepared, prepare
from ..report import PathLike, PruneResult, count_params
from ..scoring.registry import DATA_FREE

logger = logging.getLogger(__name__)

__all__ = ["inspect", "prune_model", "apply_plan", "scores_from_kernels", "kernel_scores", "build_pruned",
           "InspectReport", "PruneResult", "LayerInfo", "GroupInfo"]


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
    droppable: bool = False  # every channel may go (a residual branch; see graph/depth.py)
    drop_reason: Optional[str] = None
    heads_of: Optional[str] = None  # the units are attention heads of this node's block


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
                        g.frozen_reason, g.droppable, g.drop_reason, g.heads_of) for g in a.groups]
    prunable = [l for l in layers if l.prunable_kernels > 0]
    return InspectReport(
        layers=layers, groups=groups, prunable_conv_num=len(prunable),
        prunable_conv_layer_name=[l.name for l in prunable],
        prunable_kernel_num=sum(l.prunable_kernels for l in prunable),
        total_kernels=sum(l.kernels for l in layers),
        macs=p.cost.dense_macs, params=count_params(p.model), input_shapes=p.input_shapes)


def inspect(model: ModelLike, input_shapes: Optional[dict[str, Sequence[int]]] = None,
            nodes_to_exclude: Iterable[str] = ()) -> InspectReport:
    """Prunable layers, channel groups (frozen ones with the reason) and HALCON-style totals."""
    return _inspect_prepared(prepare(model, input_shapes, nodes_to_exclude))


_DEFAULTS = PruneConfig()  # prune_model's keywords default to PruneConfig's own (tests/test_config.py checks)


def prune_model(model_input: ModelLike, model_output: Optional[PathLike] = None, *,
                criterion: str = _DEFAULTS.criterion, percentage: Optional[float] = _DEFAULTS.percentage,
                target_macs: Optional[float] = _DEFAULTS.target_macs,
                target_params: Optional[float] = _DEFAULTS.target_params,
                target_latency: Optional[float] = _DEFAULTS.target_latency,
                nodes_to_exclude: Iterable[str] = _DEFAULTS.nodes_to_exclude,
                round_to: int | str = _DEFAULTS.round_to, max_layer_ratio: float = _DEFAULTS.max_layer_ratio,
                min_kernels: int = _DEFAULTS.min_kernels, ranking: str = _DEFAULTS.ranking,
                scores: Optional[dict[str, list[float]]] = None,
                input_shapes: Optional[dict[str, Sequence[int]]] = _DEFAULTS.input_shapes,
                verify: bool = _DEFAULTS.verify, seed: int = _DEFAULTS.seed,
                config: Optional[PruneConfig] = None) -> PruneResult:
    """Prune by a data-free criterion (magnitude, l1, l2, bn_scale, random) or by given per-kernel ``scores``.

    ``percentage`` is HALCON's: the share of prunable kernels to remove
    (default 10). ``target_macs``/``target_params``/``target_latency`` are
    kept fractions (latency: measured on the default provider at batch 1;
    pass a ``config`` to choose provider, batch and threads).
    ``scores`` maps layer name to one score per output kernel (as written
    by ``onnxprune score``); a unit's score is the mean over its kernels.
    The keywords default to :class:`PruneConfig`'s defaults (``criterion``
    auto is magnitude without data; ``ranking`` auto is raw order for a
    data-free criterion, score per MAC saved with ``scores``). A ``config``
    holds every setting: a keyword given beside it with another value than
    the config's is an error, not silently dropped.
    """
    keywords = dict(criterion=criterion, percentage=percentage, target_macs=target_macs,
                    target_params=target_params, target_latency=target_latency,
                    nodes_to_exclude=tuple(nodes_to_exclude), round_to=round_to, max_layer_ratio=max_layer_ratio,
                    min_kernels=min_kernels, ranking=ranking, verify=verify, seed=seed,
                    input_shapes={k: tuple(v) for k, v in input_shapes.items()} if input_shapes else None)
    if config is None:
        config = PruneConfig(**keywords)
    else:
        clash = sorted(k for k, v in keywords.items() if v != getattr(_DEFAULTS, k) and v != getattr(config, k))
        if clash:
            raise InvalidArgumentError(f"prune_model: {', '.join(clash)} given both as keyword and in config= with "
                                       "another value; set every setting in the config (dataclasses.replace)")
    if scores is None and config.needs_data:
        raise InvalidArgumentError(f"criterion {config.criterion!r} needs calibration data: use prune_static; "
                                   f"prune_model takes {', '.join(DATA_FREE)} or scores")
    p = prepare(model_input, config.input_shapes, config.nodes_to_exclude)
    if not p.analysis.prunable_units:
        raise NothingToPruneError("no prunable layer: every channel group is frozen "
                                  "(run `onnxprune inspect` to see why)")
    unit_scores = scores_from_kernels(p, scores) if scores is not None else None
    return run_pruning(model_input, model_output, None, config, scores=unit_scores, prepared=p)


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
               *, input_shapes: Optional[dict[str, Sequence[int]]] = None, verify: bool = True,
               calibration_source: Any = None, evaluation: Any = None, preprocess: Any = None) -> PruneResult:
    """Remove exactly the kernels a saved plan names (with their coupled channels).

    A plan made by a prune that re-fitted (or quantized) records how; given the same ``calibration_source``
    (and ``evaluation``, ``preprocess``) as that prune, the re-fit is repeated and the model written is the
    prune's. Without calibration data the layers are not re-fitted, and a warning says the model differs.
    """
    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    shapes = {k: tuple(v) for k, v in input_shapes.items()} if input_shapes else None
    refit = plan.meta.get("recovery")
    if refit and calibration_source is not None:
        config = PruneConfig(criterion="magnitude", recover=refit["recover"], augment=refit["augment"],
                             seed=refit["seed"], calibration_samples=refit["calibration_samples"],
                             batch_size=refit["batch_size"], task=refit["task"], min_fidelity=refit["min_fidelity"],
                             quantize=refit["quantize"], verify=verify, input_shapes=shapes)
        from .pipeline import prepare_run
        p, calibration = prepare_run(model_input, calibration_source, config, preprocess=preprocess, hold_out=True)
        res = run_pruning(model_input, model_output, None, config, prepared=p, calibration=calibration,
                          removed=plan.to_units(p.analysis), plan=plan, evaluation=evaluation, preprocess=preprocess)
        if res.report.extra.get("recovery") != refit["fitted"]:
            logger.warning("the re-fit differs from the prune's (%s; the prune's: %s): give apply the calibration "
                           "data, --calib-limit and --eval the prune had", res.report.extra.get("recovery"),
                           refit["fitted"])
        return res
    if refit and refit.get("fitted"):
        logger.warning("the plan's prune re-fitted the layers after the removed channels (%s); without calibration "
                       "data (--calib) they are not re-fitted, so this model differs from the prune's", refit["fitted"])
    config = PruneConfig(criterion="magnitude", recover="none", measure=False, verify=verify, input_shapes=shapes)
    p = prepare(model_input, config.input_shapes)
    return run_pruning(model_input, model_output, None, config, prepared=p, removed=plan.to_units(p.analysis),
                       plan=plan)
