"""A pruning plan: which kernels to remove, as JSON a person can read and edit.

Units are named by one of their kernels, ``layer name -> output channels``,
so a plan stays meaningful when read by hand and can be re-applied to the
same model later (``onnxprune apply``). Any kernel of a coupled unit may be
named; the whole unit goes.

A plan holds no weights: when the prune re-fitted the layers after the
removed channels (least squares on calibration data) or quantized, ``meta``
records how (``recovery``: method, rows, batch size, seed, the fit's own
line), and ``apply`` given the same calibration data re-fits the same way,
so it writes the model the prune wrote (:func:`refit_meta`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import InvalidArgumentError
from ..graph.io import write_text_atomic
from ..graph.analysis import Analysis

FORMAT = "onnxprune-plan"
VERSION = 1


@dataclass
class PruningPlan:
    """Kernels to remove, keyed by producer layer name; ``meta`` records how the plan was made."""

    remove: dict[str, list[int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_units(cls, analysis: Analysis, roots: list[int], **meta: Any) -> "PruningPlan":
        remove: dict[str, list[int]] = {}
        for r in roots:
            layer, ch = analysis.unit_kernels[r][0]
            remove.setdefault(layer, []).append(int(ch))
        for chans in remove.values():
            chans.sort()
        return cls(remove, dict(meta))

    def to_units(self, analysis: Analysis) -> list[int]:
        """Roots named by this plan, after checking they exist and may be removed."""
        roots: set[int] = set()
        for layer, chans in self.remove.items():
            if layer not in analysis.layers:
                raise InvalidArgumentError(f"plan names layer {layer!r}, which the model does not have")
            n = analysis.layers[layer].kernels
            for c in chans:
                if not 0 <= int(c) < n:
                    raise InvalidArgumentError(f"plan removes channel {c} of {layer!r}, which has {n}")
                r = analysis.unit_of_kernel(layer, int(c))
                if not analysis.is_prunable(r):
                    reason = analysis.groups[analysis.group_of[r]].frozen_reason if r in analysis.group_of else \
                        analysis.frozen_reason.get(r, "not prunable")
                    raise InvalidArgumentError(f"plan removes {layer!r} channel {c}, which is frozen: {reason}")
                roots.add(r)
        return sorted(roots)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "meta": self.meta, "remove": self.remove}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "PruningPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"plan is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("remove"), dict):
            raise InvalidArgumentError(f"not an onnxprune plan (expected format {FORMAT!r} with a 'remove' map)")
        try:
            remove = {str(k): [int(c) for c in v] for k, v in data["remove"].items()}
        except (TypeError, ValueError):
            raise InvalidArgumentError("plan's 'remove' must map layer names to lists of channel indices") from None
        return cls(remove, dict(data.get("meta", {})))

    def save(self, path: Union[str, os.PathLike]) -> None:
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "PruningPlan":
        p = Path(path)
        if not p.is_file():
            raise InvalidArgumentError(f"{p}: no such plan file")
        try:
            return cls.from_json(p.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"{p}: cannot read the plan ({exc})") from None
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{p}: {exc}") from None


def refit_meta(config: Any, fitted: Optional[str]) -> Optional[dict[str, Any]]:
    """What ``apply`` needs to re-fit as the prune did (None when the prune neither re-fitted nor quantized).

    ``config`` is the run's PruneConfig; ``fitted`` the recovery's own line ("least-squares re-fit of 5
    layer(s), 224 calibration samples"), which ``apply`` compares with its own to tell a different fit.
    """
    if fitted is None and not config.quantize:
        return None
    return {"recover": config.recover if fitted is not None else "none", "augment": config.augment,
            "seed": config.seed, "calibration_samples": config.calibration_samples, "batch_size": config.batch_size,
            "task": config.task, "min_fidelity": config.min_fidelity, "quantize": config.quantize, "fitted": fitted}
