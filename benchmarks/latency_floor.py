"""The fidelity floor guarding ``--target-latency`` (issue 22): ResNet-56 asked for half its measured time.

Two command lines as a user runs them, each a separate process: without ``--back-off`` (the default
floor of a classifier, top-1 agreement 0.9 on held-back calibration rows, must refuse a model that
loses most of its accuracy: exit 3, nothing written), then with ``--back-off`` (the most pruned step
back toward dense that meets the floor). What is written is measured on the 5,000 CIFAR-10 dev images.

    python benchmarks/latency_floor.py [--target 0.5] [--extra "--allow-block-removal"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from common import REPO, SHARED, accuracy, cifar, header, table, write_section
from default_path import CIFAR_FLAGS

MODEL = SHARED / "models" / "resnet56_cifar10.onnx"


def _run(out: Path, target: float, extra: list[str]) -> tuple[int, str, float]:
    cmd = [sys.executable, "-c", "import sys; from onnxprune.cli import main; sys.exit(main())", "prune", str(MODEL),
           "-o", str(out), "--calib", str(SHARED / "data" / "cifar10_calib.npz"), "--target-latency", str(target),
           *CIFAR_FLAGS, *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - t0


def _line(text: str, start: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip().startswith(start)), "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--extra", default="")
    args = ap.parse_args()
    x, y = cifar("dev")
    dense = accuracy(onnx.load(str(MODEL)), x, y)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for flags in ([], ["--back-off"]):
            out = Path(tmp) / f"out{len(rows)}.onnx"
            code, text, wall = _run(out, args.target, flags + shlex.split(args.extra))
            row = {"flags": " ".join(flags + shlex.split(args.extra)) or "(none)", "exit code": code,
                   "written": "yes" if out.exists() else "no", "wall": f"{wall / 60:.1f} min",
                   "fidelity (held-back rows)": _line(text, "fidelity to dense:").removeprefix("fidelity to dense: "),
                   "latency": _line(text, "latency (median)"), "back-off": _line(text, "back-off:")[:300],
                   "stderr": _line(text, "onnxprune: error:")[:200]}
            if out.exists():
                row["top-1 on 5,000 dev images"] = f"{accuracy(onnx.load(str(out)), x, y):.1%} (dense {dense:.1%})"
            rows.append(row)
            print(row, flush=True)
    text = (header(f"--target-latency {args.target} on ResNet-56 under the fidelity floor (issue 22)")
            + f"\nCommand: `onnxprune prune resnet56_cifar10.onnx -o OUT --calib cifar10_calib.npz --target-latency "
            + f"{args.target} --mean ... --std ... [FLAGS]`; the written model's top-1 measured on cifar10_dev.npz.\n\n"
            + table(rows, list(dict.fromkeys(k for r in rows for k in r))))
    write_section("latency-floor-resnet56", text)
    print(text)


if __name__ == "__main__":
    main()
