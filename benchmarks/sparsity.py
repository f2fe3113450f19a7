"""Benchmark of ``onnxprune sparsify`` on ResNet-56 (CIFAR-10) and EfficientNet-Lite0 (ImageNet sample).

Measures top-1 for the fillers (random / iternonstruct / l1), scopes (layer /
global) and modes (static / gradual, with and without the least-squares
re-fit) at 50 / 70 / 90 % sparsity (EfficientNet also at 10 / 30 %, where
it still works), the file size with dense and sparse storage, and
onnxruntime latency, then writes a Markdown table. Not the full factorial:
see ``grid`` for the subset that fits in about 20 minutes on 2 cores
(22 min measured on a shared machine with a load average of 5-7).

    python benchmarks/sparsity.py                     # both models
    python benchmarks/sparsity.py --models resnet56  # one model

Reads the shared folder from ONNXPRUNE_SHARED (default ../shared next to the
repository). Prints progress; the table goes to benchmarks/RESULTS_sparsity.md.
"""

from __future__ import annotations

import os

# The re-fit solves thousands of small systems; multi-threaded OpenBLAS is far slower on
# those (and fights onnxruntime for the 2 cores). Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from common import REPO, SHARED, accuracy, cifar, header, imagenet_images, imagenet_split  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402
from onnxprune.sparsity import SparsifyConfig, sparsify  # noqa: E402
from onnxprune.sparsity.weights import find_weights, read_weight, write_weights  # noqa: E402

RESNET_LEVELS = (0.5, 0.7, 0.9)
# EfficientNet-Lite0 loses everything by 50% with any magnitude criterion, so lower levels are added.
EFFNET_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Task:
    """One model with its calibration and evaluation data."""

    key: str
    title: str
    model: onnx.ModelProto
    calib: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    eval_note: str
    levels: tuple[float, ...]
    refit_samples: int
    refit_rows: int
    latency_runs: int


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    model: str
    filler: str
    scope: str
    mode: str
    refit: bool
    level: float
    sparsity: float
    top1: float
    seconds: float
    storage: str
    note: str = ""


def load_resnet56() -> Task:
    calib, _ = cifar("calib")
    dev_x, dev_y = cifar("dev")
    # The dev file is sorted by class: its first 2000 images hold 4 classes only, so the
    # 2000-image subset is the first 200 images of each class instead.
    idx = np.concatenate([np.flatnonzero(dev_y == k)[:200] for k in range(10)])
    return Task(
        key="resnet56", title="ResNet-56, CIFAR-10", model=onnx.load(str(SHARED / "models" / "resnet56_cifar10.onnx")),
        calib=calib, eval_x=dev_x[idx], eval_y=dev_y[idx],
        eval_note="2,000 dev images (first 200 of each class; the file is sorted by class)",
        levels=RESNET_LEVELS, refit_samples=256, refit_rows=8192, latency_runs=200,
    )


def load_effnet() -> Task:
    calib_files, _, eval_files, eval_y = imagenet_split()
    return Task(
        key="effnet", title="EfficientNet-Lite0, ImageNet sample",
        model=onnx.load(str(SHARED / "models" / "efficientnet_lite0.onnx")),
        calib=imagenet_images(calib_files), eval_x=imagenet_images(eval_files), eval_y=eval_y,
        eval_note="the last 250 of imagenet_dev (calibration: the first 250)",
        levels=EFFNET_LEVELS, refit_samples=64, refit_rows=4096, latency_runs=40,
    )


def run_config(task: Task, config: SparsifyConfig, refit: bool, log: Callable[[str], None]) -> tuple[Row, object]:
    t0 = time.perf_counter()
    result = sparsify(task.model, None, config, calibration_data_reader={"input": task.calib} if refit else None)
    seconds = time.perf_counter() - t0
    acc = accuracy(result.model, task.eval_x, task.eval_y)
    row = Row(task.key, config.filler, config.scope, config.mode, refit, config.threshold, result.sparsity, acc,
              seconds, result.storage.format)
    log(f"{task.key:9s} {config.filler:13s} {config.scope:6s} {config.mode:7s} refit={refit!s:5s} "
        f"{config.threshold:.0%}: sparsity {result.sparsity:.3f} top-1 {acc:.4f} ({seconds:.1f} s, {row.storage})")
    return row, result


def grid(task: Task) -> list[tuple[SparsifyConfig, bool]]:
    """The configurations measured for a model (the full factorial does not fit in 20 minutes)."""
    base = SparsifyConfig(refit_samples=task.refit_samples, refit_rows=task.refit_rows)
    gradual = {"gradual_start": 0.1, "gradual_gamma": 0.2}
    runs: list[tuple[SparsifyConfig, bool]] = []
    fillers = ("random", "iternonstruct", "l1")
    for level in task.levels:
        for filler in fillers:
            runs.append((replace(base, threshold=level, filler=filler), False))
            if task.key == "resnet56":
                runs.append((replace(base, threshold=level, filler=filler, scope="global"), False))
        if task.key == "effnet":
            runs.append((replace(base, threshold=level, scope="global"), False))
            continue
        runs.append((replace(base, threshold=level, **gradual), False))
        for filler in ("iternonstruct", "l1"):
            runs.append((replace(base, threshold=level, filler=filler), True))
        runs.append((replace(base, threshold=level, scope="global"), True))
        for scope in ("layer", "global"):
            runs.append((replace(base, threshold=level, scope=scope, **gradual), True))
    if task.key == "effnet":
        for level in (0.3, 0.5):
            runs.append((replace(base, threshold=level), True))
            runs.append((replace(base, threshold=level, **gradual), True))
    return runs


def forced_sparse_bytes(model: onnx.ModelProto) -> int:
    """Size of the model with every pruned weight stored sparse, even where that is larger."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    refs, _ = find_weights(copy, ("Conv", "Gemm", "MatMul"))
    arrays = {r.name: read_weight(copy, r) for r in refs}
    write_weights(copy, refs, arrays, sparse=frozenset(arrays))
    return copy.ByteSize()


def dense_bytes(model: onnx.ModelProto) -> int:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    refs, _ = find_weights(copy, ("Conv", "Gemm", "MatMul"))
    write_weights(copy, refs, {r.name: read_weight(copy, r) for r in refs})
    return copy.ByteSize()


def latency_ms(model: onnx.ModelProto, x: np.ndarray, runs: int) -> tuple[float, float]:
    """(median latency of batch 1 in ms, session creation in ms)."""
    data = model.SerializeToString()
    t0 = time.perf_counter()
    session = make_session(data)
    load = (time.perf_counter() - t0) * 1000
    feeds = {session.get_inputs()[0].name: x[:1]}
    for _ in range(10):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000), load


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(tasks: list[Task], rows: list[Row], storage: dict, latency: dict, dense_top1: dict,
             identical: dict, minutes: float, load: float) -> str:
    out = [
        header("Unstructured sparsity (issue 5): `onnxprune sparsify`").rstrip(),
        "",
        f"{minutes:.1f} min in all, with OPENBLAS_NUM_THREADS=1. The machine was shared: the 1-minute load "
        f"average was {load:.1f} on {os.cpu_count()} cores at the end, so times and latencies are inflated; "
        "compare them within a table only.",
        "",
        "Sparsity is over all Conv/Gemm/MatMul weights. *Re-fit*: least-squares re-fit of the surviving "
        "weights and biases against the original layer outputs (ridge 1e-3 toward the original weights), "
        "on calibration images only. *Gradual*: thresholds 0.1, 0.3, 0.5, ... up to the target (gamma 0.2; "
        "the CLI default is 0.05), masks chosen among the survivors at each step, re-fit between steps when "
        "marked. No fine-tuning anywhere. Random filler: seed 0, one draw.",
    ]
    for task in tasks:
        mine = [r for r in rows if r.model == task.key]
        if not mine:
            continue
        levels = sorted({r.level for r in mine})
        out += ["", f"### {task.title}: top-1 (%) on {task.eval_note}; dense {pct(dense_top1[task.key])}", "",
                f"Re-fit on {task.refit_samples} calibration images ({int(round(task.refit_samples * 0.8))} fitted, "
                f"the rest held back to reject a worse fit), at most {task.refit_rows} sampled output positions "
                "per layer.", "",
                "| filler | scope | mode | re-fit | " + " | ".join(f"{int(l * 100)}%" for l in levels) + " |",
                "|---|---|---|---|" + "---|" * len(levels)]
        seen: list[tuple] = []
        for r in mine:
            key = (r.filler, r.scope, r.mode, r.refit)
            if key not in seen:
                seen.append(key)
        for key in seen:
            cells = []
            for level in levels:
                match = [r for r in mine if (r.filler, r.scope, r.mode, r.refit) == key and r.level == level]
                cells.append(pct(match[0].top1) if match else "–")
            filler, scope, mode, refit = key
            out.append(f"| {filler} | {scope} | {mode} | {'yes' if refit else 'no'} | " + " | ".join(cells) + " |")
        slow = [r for r in mine if r.refit]
        if slow:
            out += ["", "Time of `sparsify` (s), re-fit runs: " + "; ".join(
                f"{r.filler}/{r.scope}/{r.mode} {int(r.level * 100)}%: {r.seconds:.0f}" for r in slow) + "."]
        notes = identical.get(task.key)
        if notes:
            out += ["", notes]
    out += ["", "### File size (bytes) and storage chosen (l1, per layer, static)", "",
            "| model | sparsity | dense storage | all weights sparse | written | storage chosen |", "|---|---|---|---|---|---|"]
    for (key, level), s in storage.items():
        out.append(f"| {key} | {int(level * 100)}% | {s['dense']:,} | {s['forced_sparse']:,} | {s['written']:,} | "
                   f"{s['format']} |")
    out += ["", "ONNX requires int64 indices for sparse tensors (12 bytes per kept float32 weight against 4 dense), "
            "so sparse storage pays only below 1/3 density; `sparsify` stores a weight sparse only where it is "
            "smaller, and keeps the sparse file only after the ONNX checker and onnxruntime (outputs identical to "
            "the dense masked model) accept it.",
            "", "### onnxruntime latency, batch 1 (median ms; session creation ms)", "",
            "| model | original | 90% sparse, dense storage | 90% sparse, sparse storage |", "|---|---|---|---|"]
    for key, lat in latency.items():
        out.append(f"| {key} | {lat['original'][0]:.2f}; {lat['original'][1]:.0f} | {lat['dense'][0]:.2f}; "
                   f"{lat['dense'][1]:.0f} | {lat['sparse'][0]:.2f}; {lat['sparse'][1]:.0f} |")
    spread = max((abs(lat[k][0] / lat["original"][0] - 1) for lat in latency.values() for k in ("dense", "sparse")),
                 default=0.0)
    out += ["", f"The sparse models run within {100 * spread:.0f}% of the original's latency on this loaded "
            "machine: no speed-up is expected, since onnxruntime's CPU kernels are dense and it expands sparse "
            "initializers to dense tensors when it loads the model. Unstructured sparsity here buys file size "
            "(and a starting point for sparse kernels or compression), not speed."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet56,effnet", help="comma-separated: resnet56, effnet")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS_sparsity.md"))
    parser.add_argument("--json", default=None, help="also dump the raw rows here")
    parser.add_argument("--eval-limit", type=int, default=0, help="evaluate on this many images only (smoke test)")
    args = parser.parse_args()
    if not (SHARED / "models").exists():
        print(f"shared folder {SHARED} not found; set ONNXPRUNE_SHARED", file=sys.stderr)
        return 1
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    loaders = {"resnet56": load_resnet56, "effnet": load_effnet}
    tasks = []
    for key in args.models.split(","):
        task = loaders[key]()
        if args.eval_limit:
            task = replace(task, eval_x=task.eval_x[:args.eval_limit], eval_y=task.eval_y[:args.eval_limit])
        tasks.append(task)
        log(f"loaded {key}")
    rows: list[Row] = []
    storage: dict = {}
    latency: dict = {}
    dense_top1: dict = {}
    identical: dict = {}
    for task in tasks:
        dense_top1[task.key] = accuracy(task.model, task.eval_x, task.eval_y)
        log(f"{task.key} dense top-1 {dense_top1[task.key]:.4f}")
        results = {}
        for config, refit in grid(task):
            row, result = run_config(task, config, refit, log)
            rows.append(row)
            results[(config.filler, config.scope, config.mode, refit, config.threshold)] = result
        same = []
        for level in task.levels:
            static = results.get(("l1", "layer", "static", False, level))
            gradual = results.get(("l1", "layer", "gradual", False, level))
            if static is not None and gradual is not None:
                same.append(all(np.array_equal(static.masks[n], gradual.masks[n]) for n in static.masks))
        if same:
            identical[task.key] = ("Gradual l1 without re-fit gives exactly the static masks at every level "
                                   f"(checked: {all(same)}): with nothing re-fitted, the smallest magnitudes "
                                   "among the survivors are the smallest overall (the same holds for "
                                   "iternonstruct), so only the re-fit makes gradual differ.")
        for level in task.levels:
            result = results.get(("l1", "layer", "static", False, level))
            if result is None:
                continue
            storage[(task.key, level)] = {
                "dense": dense_bytes(result.model), "forced_sparse": forced_sparse_bytes(result.model),
                "written": result.model.ByteSize(), "format": result.storage.format,
            }
        r90 = results[("l1", "layer", "static", False, 0.9)]
        dense90 = sparsify(task.model, None, SparsifyConfig(threshold=0.9, dense=True)).model
        latency[task.key] = {
            "original": latency_ms(task.model, task.eval_x, task.latency_runs),
            "dense": latency_ms(dense90, task.eval_x, task.latency_runs),
            "sparse": latency_ms(r90.model, task.eval_x, task.latency_runs),
        }
        log(f"{task.key} latency {latency[task.key]}")
    minutes = (time.perf_counter() - started) / 60
    text = markdown(tasks, rows, storage, latency, dense_top1, identical, minutes, os.getloadavg()[0])
    Path(args.out).write_text(text)
    log(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
