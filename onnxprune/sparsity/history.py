"""The record of sparsification passes kept in the model's metadata.

The masks themselves are the zeros of the weights: a pruned weight is stored
as 0 (or left out of a sparse tensor), so the next pass recovers the mask
from the model alone and no side file can get lost. What the zeros cannot
say (which filler, threshold and mode made them, and the sparsity each
pass left per layer) is a small JSON document under one metadata key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

if TYPE_CHECKING:
    from .config import SparsifyConfig
    from .weights import WeightRef

logger = logging.getLogger(__name__)

METADATA_KEY = "onnxprune.sparsity"
FORMAT_VERSION = 1


def read_history(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The recorded passes, oldest first; empty for a model never sparsified."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                doc = json.loads(prop.value)
            except json.JSONDecodeError:
                logger.warning("metadata %s is not JSON; ignoring the sparsity history", METADATA_KEY)
                return []
            passes = doc.get("passes", []) if isinstance(doc, dict) else []
            return [p for p in passes if isinstance(p, dict)]
    return []


def write_history(model: onnx.ModelProto, passes: list[dict[str, Any]]) -> None:
    """Replace the recorded passes with ``passes``."""
    value = json.dumps({"format": FORMAT_VERSION, "passes": passes}, separators=(",", ":"), sort_keys=True)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = value


def other_onnxprune_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """Records other onnxprune passes left (channel pruning), to show beside the sparsity."""
    return {p.key: p.value for p in model.metadata_props
            if p.key.startswith("onnxprune") and p.key != METADATA_KEY}


def pass_record(config: SparsifyConfig, custom: Mapping[str, np.ndarray], importance: Mapping[str, np.ndarray],
                refit: bool, steps: tuple[float, ...], refs: Sequence[WeightRef], zeros_before: Mapping[str, int],
                current: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The history entry of one sparsify run: how the zeros were chosen and the zeros per weight."""
    record: dict[str, Any] = {
        "tool": "onnxprune.sparsify",
        "filler": "custom_mask" if custom else config.filler,
        "scope": config.scope,
        "mode": "static" if custom else config.mode,
        "steps": list(steps),
        "relative": config.relative,
        "importance_scores": bool(importance),
        "refit": refit,
        "layers": {r.name: [zeros_before[r.name], int(r.size - np.count_nonzero(current[r.name])), r.size,
                            list(r.shape)] for r in refs},
    }
    if not custom:
        record["threshold"] = config.threshold
        if config.filler == "iternonstruct":
            record["delta"] = config.delta
        if config.filler == "random":
            record["seed"] = config.seed
        if config.filler == "ln":
            record["n"] = "inf" if np.isinf(config.n) else config.n
            record["dim"] = config.dim
    return record
