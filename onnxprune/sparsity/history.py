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
from typing import Any

import onnx

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
