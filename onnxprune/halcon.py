"""HALCON-style step-by-step pruning handle.

Mirrors MVTec HALCON's operators so their users find their way:

==============================  =========================================
HALCON                          onnxprune
==============================  =========================================
create_dl_pruning               ``create_pruning(model, mode="oracle")``
set_dl_pruning_param            ``set_pruning_param(handle, name, value)``
get_dl_pruning_param            ``get_pruning_param(handle, name)``
add_dl_pruning_batch            ``add_pruning_batch(handle, batch)``
gen_dl_pruned_model             ``gen_pruned_model(handle) -> ModelProto``
==============================  =========================================

Parameters: 'mode', 'percentage' (share of prunable kernels to prune),
'prunable_conv_num', 'prunable_conv_layer_name', 'prunable_kernel_num',
'pruned_kernel_num', 'pruned_percentage' (after gen_pruned_model), plus
onnxprune's own 'target_macs', 'target_params', 'recover', 'ranking'.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from .errors import CalibrationError, InvalidArgumentError
from .graph.io import ModelLike
from .graph.probe import input_dtypes
from .calibration import CachedDataset, IterableReader
from .calibration.dataset import load_calibration
from .config import DEFAULT_PERCENTAGE, PruneConfig
from .pruning.pipeline import run_pruning
from .pruning.prepare import Prepared, prepare
from .scoring.oracle import OracleScorer
from .scoring.registry import HALCON_MODES

MODES = HALCON_MODES
_SETTABLE = {"percentage", "target_macs", "target_params", "recover", "ranking", "max_layer_ratio", "round_to",
             "min_kernels", "layer_norm", "task", "min_fidelity", "back_off"}


class PruningHandle:
    """State of one pruning: the analysed model, accumulated oracle scores and settings."""

    def __init__(self, model: ModelLike, mode: str = "oracle", gen_param: Optional[dict[str, Any]] = None,
                 input_shapes: Optional[dict[str, Sequence[int]]] = None) -> None:
        if mode not in MODES:
            raise InvalidArgumentError(f"unknown mode {mode!r}; HALCON mode is 'oracle' (or one of {', '.join(MODES)})")
        self.mode = mode
        self.prepared: Prepared = prepare(model, input_shapes)
        self.config = PruneConfig(criterion=mode, percentage=DEFAULT_PERCENTAGE, recover="none")  # HALCON: no recovery
        self._scorer: Optional[OracleScorer] = None
        self._calib: list[tuple[dict, Optional[np.ndarray]]] = []
        self.result = None
        for k, v in (gen_param or {}).items():
            self.set(k, v)

    def set(self, name: str, value: Any) -> None:
        if name not in _SETTABLE:
            raise InvalidArgumentError(f"unknown or read-only pruning parameter {name!r}")
        changes: dict[str, Any] = {name: value}
        if name in ("percentage", "target_macs", "target_params"):
            changes = {"percentage": None, "target_macs": None, "target_params": None, name: value}
        self.config = replace(self.config, **changes)

    def get(self, name: str) -> Any:
        a = self.prepared.analysis
        if name == "mode":
            return self.mode
        if name == "prunable_conv_num":
            return len(a.prunable_layers)
        if name == "prunable_conv_layer_name":
            return [l.name for l in a.prunable_layers]
        if name == "prunable_kernel_num":
            return sum(l.prunable_kernels for l in a.prunable_layers)
        if name == "fidelity":  # in the user's terms (top-1 agreement, detection F1, ...), on held-back rows
            fid = self.result.report.after.fidelity if self.result is not None else None
            return fid.to_dict() if fid is not None else None
        if name in ("pruned_kernel_num", "pruned_percentage"):
            if self.result is None:
                return 0 if name == "pruned_kernel_num" else 0.0
            rep = self.result.report
            return rep.removed_kernels if name == "pruned_kernel_num" else rep.pruned_percentage
        if name in _SETTABLE:
            return getattr(self.config, name)
        raise InvalidArgumentError(f"unknown pruning parameter {name!r}")

    def add_batch(self, batch: dict[str, np.ndarray], labels: Optional[np.ndarray] = None) -> None:
        """Accumulate oracle scores over one batch (HALCON's add_dl_pruning_batch).

        The first 8 batches are also kept for the recovery re-fit when the
        'recover' parameter is set to 'lsq' or 'bias' (HALCON has no recovery;
        the default here is 'none', as in HALCON).
        """
        if not isinstance(batch, dict) or not batch:
            raise CalibrationError("a pruning batch is a dict {input name: array}")
        dtypes = input_dtypes(self.prepared.model)  # float16 models take float16 batches
        batch = {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in batch.items()}
        expected = set(self.prepared.input_shapes)
        if set(batch) != expected:
            raise CalibrationError(f"batch inputs {sorted(batch)} do not match the model inputs {sorted(expected)}")
        if self.mode == "oracle":
            if self._scorer is None:
                self._scorer = OracleScorer(self.prepared.analysis, self.config.oracle_cost)
            self._scorer.add_batch(batch, labels)
        if len(self._calib) < 8:
            self._calib.append((batch, labels))

    def generate(self) -> onnx.ModelProto:
        """The pruned (and verified) model (HALCON's gen_dl_pruned_model)."""
        scores = None
        if self.mode == "oracle":
            if self._scorer is None:
                raise CalibrationError("mode 'oracle' needs at least one add_pruning_batch before gen_pruned_model")
            scores = self._scorer.scores()
        calibration = None
        if self._calib:  # fidelity is judged on rows held back from them (the oracle scored every batch)
            calibration = load_calibration(CachedDataset(IterableReader(list(self._calib))), self.prepared.model,
                                           batch_size=self.config.batch_size)
        self.result = run_pruning(self.prepared.original, None, None, self.config, scores=scores,
                                  prepared=self.prepared, calibration=calibration)
        fid = self.result.report.after.fidelity
        if fid is not None and self.mode == "oracle" and calibration is not None:
            fid.data += " (the oracle scored every added batch, these too)"
        return self.result.model


def create_pruning(model: ModelLike, mode: str = "oracle", gen_param: Optional[dict[str, Any]] = None,
                   **kwargs: Any) -> PruningHandle:
    return PruningHandle(model, mode, gen_param, **kwargs)


def set_pruning_param(handle: PruningHandle, name: str, value: Any) -> None:
    handle.set(name, value)


def get_pruning_param(handle: PruningHandle, name: str) -> Any:
    return handle.get(name)


def add_pruning_batch(handle: PruningHandle, batch: dict[str, np.ndarray], labels: Optional[np.ndarray] = None) -> None:
    handle.add_batch(batch, labels)


def gen_pruned_model(handle: PruningHandle) -> onnx.ModelProto:
    return handle.generate()
