"""Fidelity in the user's terms: what each output is (tasks), the oracle's cost per task, the one measure,
and the judge of a run (held-back rows, dense outputs, floor)."""

from .cost import TaskCost
from .judge import Judge, holdout_count, make_judge
from .measure import Fidelity, measure_fidelity
from .tasks import DEFAULT_FLOORS, TASKS, OutputSpec, TaskSpec, guess_task

__all__ = ["DEFAULT_FLOORS", "Fidelity", "Judge", "OutputSpec", "TASKS", "TaskCost", "TaskSpec", "guess_task",
           "holdout_count", "make_judge", "measure_fidelity"]
