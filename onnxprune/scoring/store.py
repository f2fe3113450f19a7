"""Per-kernel scores on disk, so one (expensive) scoring run serves many budgets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from ..errors import InvalidArgumentError
from ..graph.io import write_text_atomic

FORMAT = "onnxprune-scores"


def save_scores(path: Union[str, os.PathLike], scores: dict[str, list[float]], meta: dict[str, Any]) -> None:
    clean = {k: [None if x != x else x for x in v] for k, v in scores.items()}  # NaN -> null
    write_text_atomic(path, json.dumps({"format": FORMAT, "version": 1, "meta": meta, "scores": clean}) + "\n")


def load_scores(path: Union[str, os.PathLike]) -> dict[str, list[float]]:
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"{p}: no such scores file")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidArgumentError(f"{p}: not an onnxprune scores file")
    try:
        return {str(k): [float("nan") if x is None else float(x) for x in v] for k, v in data["scores"].items()}
    except (TypeError, ValueError, AttributeError):
        raise InvalidArgumentError(f"{p}: scores must map layer names to lists of numbers") from None
