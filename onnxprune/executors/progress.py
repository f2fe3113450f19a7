"""Progress of long task streams: a bar on a terminal, periodic log lines anywhere else.

A tqdm bar redraws itself with carriage returns; written into a file or a CI
log it becomes kilobyte-long lines of frames. Off a terminal the same
progress goes to the ``onnxprune.progress`` logger every ``interval``
seconds and once at the end (the CLI shows that logger without ``-v``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, Protocol

logger = logging.getLogger("onnxprune.progress")

INTERVAL_S = 30.0


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class LogProgress:
    """tqdm's ``update``/``close`` as log lines: done/total, elapsed and the time left, at most every ``interval``."""

    def __init__(self, total: Optional[int], desc: str, unit: str, interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.interval, self.clock = total, desc, unit, interval, clock
        self.done = 0
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval:
            self._log(now)

    def close(self) -> None:
        self._log(self.clock())

    def _log(self, now: float) -> None:
        self.last = now
        elapsed = now - self.start
        if not self.total:
            logger.info("%s: %d %ss, %.0f s", self.desc, self.done, self.unit, elapsed)
            return
        left = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
        logger.info("%s: %d/%d %ss (%.0f%%), %.0f s, about %.0f s left", self.desc, self.done, self.total,
                    self.unit, 100.0 * self.done / self.total, elapsed, left)


def progress_bar(total: Optional[int], desc: str, unit: str) -> ProgressBar:
    """A tqdm bar when stderr is a terminal, else :class:`LogProgress`."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return LogProgress(total, desc, unit)
