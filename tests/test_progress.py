"""Progress as log lines when stderr is not a terminal: throttled, with an ETA, never carriage-return frames."""

from __future__ import annotations

import logging

import numpy as np

from onnxprune.pruning.prepare import prepare
from onnxprune.progress import LogProgress, format_seconds
from onnxprune.scoring.oracle import OracleScorer

from builders import inverted_residual


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_writes_one_line_per_interval_with_an_eta(caplog):
    clock = _Clock()
    bar = LogProgress(100, "oracle (local)", unit="unit", interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="onnxprune.progress"):
        for _ in range(25):  # 4 units per second for 25 seconds
            clock.now += 1.0
            bar.update(4)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "onnxprune.progress"]
    assert lines == ["oracle (local): 40/100 units, 10s elapsed, 40%, ETA 15s",
                     "oracle (local): 80/100 units, 20s elapsed, 80%, ETA 5s",
                     "oracle (local): 100/100 units, 25s elapsed"]
    assert not any("\r" in line for line in lines)


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 65, 3599, 3720)] == ["0s", "59s", "1m05s", "59m59s", "1h02m"]


def test_oracle_without_a_terminal_logs_its_progress(caplog):
    p = prepare(inverted_residual())
    feeds = {"x": np.random.default_rng(0).uniform(0, 1, (4, 3, 8, 8)).astype(np.float32)}
    scorer = OracleScorer(p.analysis, progress=False, workers=1)
    with caplog.at_level(logging.INFO, logger="onnxprune.progress"):
        scorer.score_all([(feeds, None)], total_batches=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "onnxprune.progress"]
    n = len(scorer.units)
    assert len(lines) == 1 and lines[0].startswith(f"oracle (local): {n}/{n} units, ")


def test_sensitivity_curves_log_their_progress(caplog):
    from onnxprune.allocation.sensitivity import measure_curves
    from onnxprune.scoring import magnitude_scores
    from onnxprune.allocation.selection import Constraints
    p = prepare(inverted_residual())
    feeds = [{"x": np.random.default_rng(0).uniform(0, 1, (16, 3, 8, 8)).astype(np.float32)}]
    with caplog.at_level(logging.INFO, logger="onnxprune.progress"):
        curves = measure_curves(p.analysis, p.model, magnitude_scores(p.analysis), Constraints(round_to=1), feeds)
    lines = [r.getMessage() for r in caplog.records if r.name == "onnxprune.progress"]
    assert len(lines) == 1 and lines[0].startswith(f"sensitivity: {len(curves)}/{len(curves)} groups, ")
