"""The default path, as a user runs it: ``onnxprune prune MODEL -o OUT --calib DATA --target-macs F`` (issue 14).

Each run is a separate process of the command line, timed by the wall clock
and by the CPU time of the process (the machine is shared, so the CPU time
says more about the cost than the wall time). The calibration data is what
the user would point at: a folder holding the 250 ImageNet calibration files
(links, so that the evaluation images are never in it) or the CIFAR-10
calibration .npz.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from common import REPO, SHARED

EFFNET_FLAGS = ("--size", "224x224", "--resize", "256", "--mean", "0.498", "--std", "0.502")
CIFAR_FLAGS = ("--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")


def run_cli(model: Path, calib: Path, target: float, flags: tuple[str, ...] = (),
            extra: tuple[str, ...] = (), printed: list[str] | None = None) -> tuple[onnx.ModelProto, float, float]:
    """(pruned model, wall seconds, CPU seconds) of one default-path command line; ``printed`` receives the
    lines it printed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pruned.onnx"
        # --min-fidelity 0: a benchmark row records every budget; a user's run below the floor of its task
        # (top-1 agreement 0.9 on held-back rows for a classifier) exits 3 and writes nothing
        if "--min-fidelity" not in extra and "--back-off" not in extra:
            extra = ("--min-fidelity", "0", *extra)
        cmd = [sys.executable, "-c", "import sys; from onnxprune.cli import main; sys.exit(main())", "prune",
               str(model), "-o", str(out), "--calib", str(calib), "--target-macs", str(target), *flags, *extra]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if printed is not None:
            printed.extend(done.stdout.splitlines())
        return onnx.load(str(out)), wall, cpu


def imagenet_calib_folder(files: list[str]) -> tempfile.TemporaryDirectory:
    """A temporary folder with links to the calibration files only (the CLI reads a whole folder)."""
    tmp = tempfile.TemporaryDirectory()
    for f in files:
        os.symlink(SHARED / "data" / "imagenet_dev" / f, Path(tmp.name) / f)
    return tmp
