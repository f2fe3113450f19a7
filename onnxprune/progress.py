"""Progress of a long loop as log lines, for when stderr is not a terminal.

A progress bar redraws itself with carriage returns: in a log file or a CI
console that is either nothing or thousands of frames. A multi-minute oracle
run printed nothing at all, so a user could not tell a slow run from a hung
one. :class:`LogProgress` has the two methods the loops call on a tqdm bar
(``update``, ``close``) and writes at most one line every ``interval``
seconds through the ``onnxprune.progress`` logger: done/total, the rate and
an ETA. The CLI shows that logger's INFO lines without ``-v``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0


def format_seconds(seconds: float) -> str:
    """12s, 3m05s, 1h02m: short enough for a log line."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LogProgress:
    """``update(n)`` / ``close()`` like a tqdm bar; one log line at most every ``interval`` seconds."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.start = clock()
        self._last = self.start
        self.lines = 0

    def _line(self, now: float, final: bool) -> str:
        elapsed = now - self.start
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        text = f"{self.desc}: {count} {self.unit}s, {format_seconds(elapsed)} elapsed"
        if final:
            return text
        if self.total and self.done:
            left = elapsed * (self.total - self.done) / self.done
            text += f", {100.0 * self.done / self.total:.0f}%, ETA {format_seconds(left)}"
        return text

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self.lines += 1
            logger.info("%s", self._line(now, final=False))

    def close(self) -> None:
        """The last line: how many and how long (always written, so a short run says it ran)."""
        self.lines += 1
        logger.info("%s", self._line(self.clock(), final=True))


def progress_bar(total: Optional[int], desc: str, unit: str):
    """A tqdm bar when stderr is a terminal, else :class:`LogProgress` (no carriage-return frames in logs)."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return LogProgress(total, desc, unit)
