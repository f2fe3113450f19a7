"""The executor contract: scoring work as independent tasks, merged deterministically.

A :class:`Task` is a module-level function and its arguments, under a key
that is unique and sortable. An :class:`Executor` runs tasks somewhere
(threads of this process, a Ray cluster) and returns ``{key: result}``; the
caller merges in sorted key order (:func:`merge_sums`), so the result never
depends on which worker finished first.

Large read-only inputs (the model, calibration batches) are handed over once
with :meth:`Executor.share`; a task that produces an input of later tasks
(the oracle's prefix run of a batch) is started with :meth:`Executor.defer`.
Either returns a handle that later tasks take as an argument; the executor
resolves it to the value before the task function runs, so task functions
see plain values and never know where they run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping, Optional

Progress = Optional[Callable[[int], Any]]


@dataclass(frozen=True)
class Task:
    """One independent piece of work.

    ``fn`` must be importable by name (a module-level function) so that
    remote workers can run it. ``units`` is what the task adds to a progress
    bar; ``memory`` an estimate, in bytes, of what it keeps alive while it
    runs (a cluster reserves it, so a node never takes more tasks than fit).
    """

    key: tuple
    fn: Callable[..., Any]
    args: tuple = ()
    units: int = 1
    memory: int = 0


class Executor(ABC):
    """Runs tasks; ``workers`` is how many run at once, ``threads`` the intra-op threads each may use."""

    name: str = "?"
    workers: int = 1
    threads: int = 0

    @property
    def providers(self) -> list[str]:
        """The execution providers the workers' sessions will use (for sizing runs on the caller's side)."""
        from ..runtime import default_providers
        return default_providers()

    @abstractmethod
    def share(self, value: Any, *, cache: bool = False) -> Any:
        """A handle to ``value`` that tasks take as an argument, transferred once.

        ``cache``: a worker keeps the value (and whatever it builds on it,
        such as sessions) for every later task that names the same handle.
        """

    @abstractmethod
    def defer(self, task: Task) -> Any:
        """Start ``task``; its result is a handle later tasks take as an argument."""

    @abstractmethod
    def map(self, tasks: Iterable[Task], progress: Progress = None) -> dict[tuple, Any]:
        """Run every task (the iterable is consumed lazily) and return ``{task.key: result}``."""

    def close(self) -> None:
        """Release what the executor holds (threads, actors); the results stay valid."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_sums(results: Mapping[tuple, Mapping[Hashable, float]],
               into: Optional[dict[Hashable, float]] = None) -> dict[Hashable, float]:
    """Add partial sums per item in sorted task-key order: the same floats whatever order tasks finished in."""
    out = {} if into is None else into
    for key in sorted(results):
        for item, value in results[key].items():
            out[item] = out.get(item, 0.0) + value
    return out
