"""Where a report's figures come from: the command line, the date, the machine and the calibration set.

Latency and fidelity depend on all four, so a report read later (or mailed)
carries them. The command line is known to the CLI only; library callers
get the date and the machine and may pass the rest.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional, Sequence


def machine() -> str:
    """'<CPU model>, N cores, Linux 6.1, Python 3.11, onnxruntime 1.x' (what the timings were measured on)."""
    from ..latency.timing import cpu_model
    try:
        import onnxruntime
        ort = f", onnxruntime {onnxruntime.__version__}"
    except ImportError:  # pragma: no cover - a dependency
        ort = ""
    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}{ort}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Provenance:
    command: Optional[str] = None
    calibration: Optional[str] = None
    date: str = field(default_factory=_now)
    machine: str = field(default_factory=machine)

    @classmethod
    def of_command(cls, argv: Optional[Sequence[str]] = None, calibration: Optional[str] = None) -> "Provenance":
        """The running command (``onnxprune`` + its arguments, shell-quoted) and its calibration source."""
        args = list(sys.argv[1:] if argv is None else argv)
        return cls("onnxprune " + shlex.join(args), calibration)

    def lines(self) -> tuple[str, ...]:
        out = []
        if self.command:
            out.append(f"command: {self.command}")
        out.append(f"date: {self.date}")
        out.append(f"machine: {self.machine}")
        out.append(f"calibration set: {self.calibration or 'none (data-free)'}")
        return tuple(out)
