"""The default executor: tasks on a few threads of this process (today's CPU workers).

Small convolutions do not keep several intra-op threads busy, so on the CPU
provider a few workers, each session with its share of the cores, give
more throughput than one session with every core (about 10% on 2 cores).
On an accelerator one worker drives the device.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Iterable, Optional, Sequence

from .base import Executor, Progress, Task


def worker_split(providers: Optional[Sequence[str]], workers: Optional[int]) -> tuple[int, int]:
    """(workers, intra-op threads per session): one worker on accelerators, a few on the CPU."""
    from ..runtime import default_providers
    first = list(providers or default_providers())[0]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if workers is None:
        workers = 1 if first != "CPUExecutionProvider" or cores < 2 else max(2, cores // 4)
    workers = max(1, int(workers))
    return workers, (max(1, cores // workers) if workers > 1 else 0)


class LocalExecutor(Executor):
    """Tasks on ``workers`` threads (inline when one); shared values are the values themselves."""

    name = "local"

    def __init__(self, workers: Optional[int] = None, providers: Optional[Sequence[str]] = None) -> None:
        self._providers = list(providers) if providers else None
        self.workers, self.threads = worker_split(providers, workers)

    @property
    def providers(self) -> list[str]:
        return self._providers or super().providers

    def share(self, value: Any, *, cache: bool = False) -> Any:
        return value

    def defer(self, task: Task) -> Any:
        return task.fn(*task.args)  # at once, on the caller's thread, while the workers run earlier tasks

    def map(self, tasks: Iterable[Task], progress: Progress = None) -> dict[tuple, Any]:
        results: dict[tuple, Any] = {}
        if self.workers == 1:
            for t in tasks:
                results[t.key] = t.fn(*t.args)
                if progress is not None:
                    progress(t.units)
            return results
        pending: dict[Future, Task] = {}
        it = iter(tasks)
        with ThreadPoolExecutor(self.workers) as pool:
            try:
                while True:
                    while len(pending) < 2 * self.workers:  # a short queue: tasks are made as they are needed
                        t = next(it, None)
                        if t is None:
                            break
                        pending[pool.submit(t.fn, *t.args)] = t
                    if not pending:
                        return results
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        t = pending.pop(f)
                        results[t.key] = f.result()
                        if progress is not None:
                            progress(t.units)
            finally:
                for f in pending:
                    f.cancel()
