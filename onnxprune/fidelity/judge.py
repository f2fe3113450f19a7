"""The judge of a run: which rows fidelity is measured on, the dense model's outputs there, the task, the floor.

Built once per run before scoring: rows held back from the calibration data
(spread over it; never used to score or fit), or the user's evaluation data,
or — only when no data was given at all — random inputs, said so in every
figure. The task guessed on those dense outputs gives the oracle its cost
(:class:`.cost.TaskCost`) and every later model its fidelity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from .cost import TaskCost, needs_task_cost
from .measure import Fidelity, default_floor, measure_fidelity
from .tasks import TaskSpec, guess_task, with_conf

logger = logging.getLogger(__name__)

MIN_HOLDOUT = 16
MAX_HOLDOUT = 64
NOISE_SAMPLES = 8


def holdout_count(samples: int) -> int:
    """Rows to hold back from ``samples``: an eighth, at least 16 and at most 64; none from under 32."""
    if samples < 2 * MIN_HOLDOUT:
        return 0
    return int(min(max(samples // 8, MIN_HOLDOUT), MAX_HOLDOUT))


@dataclass
class Judge:
    """Measures any model of the run against the dense model on fixed rows."""

    spec: TaskSpec
    feeds: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    labels: Optional[np.ndarray]
    data: str
    floor: Optional[float]

    def measure(self, model: onnx.ModelProto) -> Fidelity:
        from ..runtime import make_session
        sess = make_session(model)
        outs = [[np.asarray(y) for y in sess.run(None, f)] for f in self.feeds]
        return measure_fidelity(self.spec, self.reference, outs, self.labels, data=self.data, floor=self.floor)

    def cost(self, configured):
        """The oracle's cost: the task's when the label-free default is asked for and differs on these outputs."""
        if isinstance(configured, str) and configured == "auto" and needs_task_cost(self.spec):
            return TaskCost(self.spec)
        return configured


def make_judge(dense: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], labels: Optional[np.ndarray], data: str,
               task: str = "auto", min_fidelity: Optional[float] = None, conf: Optional[float] = None) -> Judge:
    """The judge of ``dense`` on ``feeds``: dense outputs computed once, the task guessed on them."""
    from ..runtime import make_session
    sess = make_session(dense)
    names = [o.name for o in sess.get_outputs()]
    reference = [[np.asarray(y) for y in sess.run(None, f)] for f in feeds]
    stacked = [np.concatenate([r[i] for r in reference]) for i in range(len(names))]
    spec = guess_task(dense, stacked, task, names)
    if conf is not None:
        spec = with_conf(spec, conf)
    floor = default_floor(spec.task) if min_fidelity is None else (float(min_fidelity) or None)
    if labels is not None and len(labels) != sum(len(next(iter(f.values()))) for f in feeds):
        labels = None
    return Judge(spec, feeds, reference, labels, data, floor)
