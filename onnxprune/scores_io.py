"""Per-kernel scores on disk, so one (expensive) scoring run serves many budgets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from .errors import InvalidArgumentError

FORMAT = "onnxprune-scores"


def save_scores(path: Union[str, os.PathLike], scores: dict[str, list[float]], meta: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps({"format": FORMAT, "version": 1, "meta": meta, "scores": scores}) + "\n")


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
    return {str(k): [float(x) for x in v] for k, v in data["scores"].items()}
