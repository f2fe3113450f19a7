"""Timing on the target runtime: interleaved rounds, medians and their spread — the one timer.

A shared or throttled machine changes speed from one second to the next;
timing one model after the other puts that drift into the comparison. Every
model here is timed in turn within each round (best of ``runs`` runs per
round), and a figure is the median over rounds with its spread, so a slow
spell hits every model alike (back-to-back medians varied by 30% between
identical models in benchmarks/latency_round_to.py).

:func:`time_interleaved` is the timer (each model on its own feed: the
latency table's pieces); :func:`time_models` times models on one feed (the
variants table, the sweep, the demo); :func:`time_against_dense` a pruned
model against the dense one, as a :class:`Speed` (the run's report, the
latency target and its allocation).
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
import onnx

from ..errors import InvalidArgumentError
from ..runtime import default_providers, make_session, ort

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencySettings:
    """Where latency is measured: onnxruntime ``provider`` (None: the default), ``batch``, ``threads`` (0: ORT's).

    ``rounds`` x ``runs``: each figure is the median over ``rounds`` of the
    best of ``runs`` runs; ``cache_dir`` holds measured tables (None: the
    user cache, ``~/.cache/onnxprune/latency``).
    """

    provider: Optional[str] = None
    batch: int = 1
    threads: int = 0
    rounds: int = 7
    runs: int = 3
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.batch < 1 or self.threads < 0 or self.rounds < 1 or self.runs < 1:
            raise InvalidArgumentError("latency batch, rounds and runs must be positive and threads >= 0")
        if self.provider is not None and self.provider not in ort().get_available_providers():
            raise InvalidArgumentError(f"execution provider {self.provider!r} is not available in this onnxruntime "
                                       f"(available: {', '.join(ort().get_available_providers())})")

    @property
    def providers(self) -> list[str]:
        if self.provider is None:
            return default_providers()
        return [self.provider] + ([] if self.provider == "CPUExecutionProvider" else ["CPUExecutionProvider"])

    def describe(self) -> str:
        return (f"{self.providers[0]}, batch {self.batch}, "
                f"{self.threads if self.threads else 'default'} thread(s)")


@dataclass(frozen=True)
class Timing:
    """Milliseconds per run: median over rounds, and the lowest and highest round."""

    median: float
    low: float
    high: float

    @property
    def spread(self) -> float:
        """Half the range of the rounds relative to the median (0.05 = +-5%)."""
        return (self.high - self.low) / 2 / max(self.median, 1e-12)

    def text(self) -> str:
        return f"{self.median:.3f} ms ({self.low:.3f}-{self.high:.3f})"

    def as_list(self) -> list[float]:
        """[median, low, high]: how reports and the table cache store a timing."""
        return [self.median, self.low, self.high]


@dataclass(frozen=True)
class Speed:
    """A pruned model timed interleaved with the dense one."""

    dense: Timing
    pruned: Timing

    @property
    def fraction(self) -> float:
        """Pruned over dense time, medians."""
        return self.pruned.median / max(self.dense.median, 1e-12)

    @property
    def fastest_fraction(self) -> float:
        """Pruned over dense time from the fastest round of each: a busy machine only ever adds time, so the
        minima compare what the models cost (medians moved 2x between identical runs at a load of 7x the cores)."""
        return self.pruned.low / max(self.dense.low, 1e-12)

    @property
    def speedup(self) -> float:
        return self.dense.median / max(self.pruned.median, 1e-12)

    @property
    def outside_noise(self) -> bool:
        """Whether the two timing ranges do not overlap (a difference inside them is "could not tell")."""
        return self.pruned.high < self.dense.low or self.pruned.low > self.dense.high


def cpu_model() -> str:
    """The CPU's model name (part of a latency table's cache key: tables do not travel between machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def feeds_for(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs in [-1, 1) of the given shapes (non-float inputs: zeros of their type)."""
    from ..graph.probe import input_dtypes
    from ..passes.verify import uniform_inputs
    return uniform_inputs({k: tuple(v) for k, v in shapes.items()}, n=1, seed=seed, dtypes=input_dtypes(model))[0]


WARMUP = 3  # untimed runs of every session before the rounds


def time_interleaved(models: Mapping[Hashable, onnx.ModelProto | bytes], feeds: Mapping[Hashable, dict],
                     settings: LatencySettings, warmup: int = WARMUP) -> dict[Hashable, Timing]:
    """Time every model on its feed in turn, round after round (see the module docstring)."""
    sessions = {k: make_session(m, settings.providers, threads=settings.threads, spin=False)
                for k, m in models.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    times: dict[Hashable, list[float]] = {k: [] for k in sessions}
    for _ in range(settings.rounds):
        for k, s in sessions.items():
            feed, best = feeds[k], float("inf")
            for _ in range(settings.runs):
                t0 = time.perf_counter()
                s.run(None, feed)
                best = min(best, time.perf_counter() - t0)
            times[k].append(best * 1e3)
    return {k: Timing(statistics.median(v), min(v), max(v)) for k, v in times.items()}


def time_models(models: Mapping[Hashable, onnx.ModelProto | bytes], feed: dict[str, np.ndarray],
                settings: LatencySettings = LatencySettings(), warmup: int = WARMUP) -> dict[Hashable, Timing]:
    """Every model on the same ``feed``, interleaved (:func:`time_interleaved`)."""
    return time_interleaved(models, {k: feed for k in models}, settings, warmup)


def time_against_dense(dense: onnx.ModelProto, pruned: onnx.ModelProto, feed: dict[str, np.ndarray],
                       settings: LatencySettings = LatencySettings(), warmup: int = WARMUP) -> Speed:
    """``pruned`` timed interleaved with ``dense`` on ``feed``."""
    t = time_models({"dense": dense, "pruned": pruned}, feed, settings, warmup)
    return Speed(t["dense"], t["pruned"])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxprune" / "latency"
