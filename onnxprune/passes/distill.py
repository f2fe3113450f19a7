"""Recovery by distillation as a Pass: fine-tune the pruned model's own initializers against the dense model.

Before: the pruned model after surgery and least squares.
After: the same graph (every node, name and shape), its trainable float
       initializers fine-tuned on the unlabeled calibration rows
       (:mod:`onnxprune.distill`) — kept only when, on the held-back rows,
       the distillation loss is lower than the least-squares weights' (the
       run's fidelity figure is reported beside it); otherwise the input
       model comes back unchanged (``modified`` False) and the note says so.
A model the converter cannot take is a notice, not a failure: least
squares is kept. ``ensures`` is the structural check every written model
gets (checker, strict shape inference, an onnxruntime session with finite
outputs) plus: the initializers keep their names, shapes and types.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import onnx

from ..progress import format_seconds
from .base import Pass, PassResult

logger = logging.getLogger(__name__)

MAX_FEATURES = 32


@dataclass(frozen=True)
class DistillResult(PassResult):
    """The distilled (or unchanged) model: the training run's outcome (its curve, the held-back figures before and
    after), how many initializers were trained or frozen, and why it did not run (``skipped``)."""

    outcome: Any = None  # distill.train.Outcome
    trained: int = 0
    frozen: int = 0
    skipped: Optional[str] = None

    @property
    def fidelity_before(self) -> Any:
        """The held-back fidelity of the least-squares weights, None when the training did not run."""
        return self.outcome.baseline if self.outcome is not None else None


def refitted_outputs(dense: onnx.ModelProto, pruned: onnx.ModelProto) -> list[str]:
    """Outputs of the Conv layers that lost input channels but kept their outputs (the layers least squares
    re-fitted), or of the residual Add such a layer feeds: full width in both graphs, so the dense model's value
    there is the target (at most ``MAX_FEATURES``, spread over the depth)."""
    shapes = {t.name: tuple(t.dims) for t in dense.graph.initializer}
    dense_out = {o for n in dense.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in pruned.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = []
    for node in pruned.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = next((t for t in pruned.graph.initializer if t.name == node.input[1]), None)
        before = shapes.get(node.input[1])
        if w is None or before is None or len(before) < 2 or node.output[0] not in dense_out:
            continue
        if w.dims[0] == before[0] and w.dims[1] < before[1]:
            after = readers.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type == "Add" and after[0].output[0] in dense_out:
                out.append(after[0].output[0])  # least squares aimed at the residual stream there, not the conv
            else:
                out.append(node.output[0])
    if len(out) > MAX_FEATURES:
        out = [out[int(i)] for i in np.round(np.linspace(0, len(out) - 1, MAX_FEATURES))]
    return out


def _figure(fid: Any) -> str:
    from ..distill.train import headline_text
    return headline_text(fid)


def _value(fid: Any, v: float) -> str:
    """``v`` in the terms of ``fid``'s headline: '84.4%'."""
    from ..distill.train import headline_text
    return headline_text(fid, v).rsplit(" ", 1)[-1]


def _signature(model: onnx.ModelProto) -> dict[str, tuple]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in model.graph.initializer}


class DistillPass(Pass):
    """Fine-tune the pruned model against ``dense`` on ``calibration``; judged by ``judge`` on held-back rows."""

    name = "distill"

    def __init__(self, dense: onnx.ModelProto, calibration: Any, judge: Any, settings: Any,
                 on_epoch: Any = None) -> None:
        self.on_epoch = on_epoch  # see Trainer
        self.dense = dense
        self.calibration = calibration
        self.judge = judge
        self.settings = settings

    def call(self, model: onnx.ModelProto) -> PassResult:
        from ..distill.engine import (Unconvertible, check_outputs, convert, device, frozen_summary, input_arrays,
                                      write_back)
        from ..distill.train import Trainer
        dev = device()
        arrays = input_arrays(self.calibration)
        first = {k: v[: min(len(v), self.settings.batch)] for k, v in arrays.items()}
        try:
            student = convert(model, dev, {k: tuple(v.shape) for k, v in first.items()})
            check_outputs(student, model, first, dev)
        except Unconvertible as exc:
            note = f"not run: {exc}; least squares kept"
            logger.warning("distillation %s", note)
            return DistillResult(model, False, (note,), skipped=str(exc))
        frozen = frozen_summary(student)
        if frozen:
            logger.info("distillation: %s", frozen)
        trainer = Trainer(student, self.dense, model, arrays, self.judge, self.settings, dev,
                          refitted_outputs(self.dense, model), self.on_epoch)
        trainer.check_budget()
        out = trainer.run()
        cost = (f"{out.steps} steps on {dev} in {format_seconds(out.wall_s)} wall, "
                f"{format_seconds(out.cpu_s)} CPU; stopped by {out.stopped}")
        details = {"outcome": out, "trained": len(student.bindings), "frozen": len(student.frozen)}
        if not out.improved:
            tried = min(out.curve[1:], key=lambda p: p.loss, default=None)
            best = (f", lowest distilled loss {tried.loss:.4f} at epoch {tried.epoch} with "
                    f"{_value(out.baseline, tried.fidelity)}" if tried else "")
            note = (f"did not beat least squares on the held-back rows ({_figure(out.baseline)}, loss "
                    f"{out.baseline_loss:.4f}{best}); least squares kept ({cost})")
            return DistillResult(model, False, (note,), **details)
        tuned = write_back(model, out.best)
        note = (f"held-back {_figure(out.baseline)}, loss {out.baseline_loss:.4f} (least squares) -> "
                f"{_value(out.baseline, out.best_fidelity.value)}, loss {out.best_loss:.4f} "
                f"(distilled, epoch {out.best_epoch}); {len(student.bindings)} initializers fine-tuned, "
                f"{len(student.frozen)} frozen ({cost})")
        return DistillResult(tuned, True, (note,), **details)

    def ensures(self, before: onnx.ModelProto, result: PassResult) -> PassResult:
        """Same initializers (names, types, shapes), a valid model, finite outputs on a calibration batch."""
        if not result.modified:
            return result
        if _signature(before) != _signature(result.model):
            raise self.fail_post("the fine-tuned model's initializers differ in name, type or shape")
        from .recover import check_refitted
        check_refitted(self, result.model, self.calibration, "distillation")
        return result
