"""Executors (issue 18): the ResNet-56 oracle on local threads vs a Ray instance with 1 and 2 workers, on this
machine, and a projection for N machines from measured per-task times and transfer sizes.

Each run builds the scorer (graph, plan) and scores every prunable unit on the same images; a Ray run
starts a fresh Ray instance with as many CPUs as workers (its start-up is timed apart). Runs are
interleaved round after round, since the machine is shared. One Ray run kills a worker in the middle
(a task that exits its process on its first attempt) and must still give the local scores.

Run: python benchmarks/executors.py [--images 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import SHARED, Timer, cifar, header, table, write_section
from onnxprune.executors import merge_sums
from onnxprune.executors.ray import RayExecutor
from onnxprune.pruning.prepare import prepare
from onnxprune.scoring.oracle import OracleScorer
from onnxprune.scoring.oracle_tasks import context_bytes, prefix_task

BANDWIDTH = 1.25e9  # bytes/s between machines assumed for the projection (10 Gbit/s Ethernet)


def exit_first_time(marker, fn, *args):
    if not os.path.exists(marker):  # the first attempt takes its worker process down with it
        Path(marker).touch()
        os._exit(1)
    return fn(*args)


class KillOneWorker(RayExecutor):
    """The first cut task of batch ``at`` (the costliest of that batch) kills its worker on its first attempt."""

    def __init__(self, marker: str, at: int, **kw) -> None:
        super().__init__(**kw)
        self.marker, self.at, self.done = marker, at, False

    def _submit(self, task):
        if task.key[0] == self.at and not self.done:
            self.done = True
            task = replace(task, fn=exit_first_time, args=(self.marker, task.fn) + task.args)
        return super()._submit(task)


def run(p, batches, kind: str, workers: int, kill_at: int = 0):  # kill_at: a batch number (0: none)
    """(seconds, Ray start-up seconds, scores, scorer) of one scoring run."""
    import ray
    start = 0.0
    executor = None
    if kind == "ray":
        with Timer() as t:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
            if kill_at:
                marker = f"/tmp/onnxprune_kill_{os.getpid()}_{time.time_ns()}"
                executor = KillOneWorker(marker, kill_at)
            else:
                executor = RayExecutor()
        start = t.seconds
    try:
        with Timer() as t:
            scorer = OracleScorer(p.analysis, executor=executor, workers=workers if kind == "local" else None)
            scores = scorer.score_all(batches)
    finally:
        if executor is not None:
            executor.close()
            ray.shutdown()
    if kill_at:
        assert os.path.exists(marker), "the worker was not killed"
        os.unlink(marker)
    return t.seconds, start, scores, scorer


def pair_only(args, p, batches) -> None:
    """Local and Ray with 2 workers in turn, ``rounds`` times: the overhead alone, on a longer run."""
    rows, times, reference = [], {"local": [], "ray": []}, None
    for i in range(args.rounds):
        for kind in (["local", "ray"] if i % 2 == 0 else ["ray", "local"]):
            secs, start, scores, _ = run(p, batches, kind, 2)
            reference = reference or scores
            ref = np.array([reference[r] for r in reference])
            rel = float(np.abs(np.array([scores[r] for r in reference]) - ref).max() / np.abs(ref).max())
            times[kind].append(secs)
            rows.append({"run": len(rows) + 1, "executor": f"{kind}, 2 workers", "scoring (s)": f"{secs:.1f}",
                         "max rel. diff to run 1": f"{rel:.1e}", "load average (1 min) after":
                         f"{os.getloadavg()[0]:.1f}"})
            print(rows[-1], flush=True)
    local, ray2 = float(np.median(times["local"])), float(np.median(times["ray"]))
    text = header(f"Executors: local vs Ray x2, ResNet-56 oracle, {args.images} images (issue 18)")
    text += (f"\nThe same runs as the section above, {args.images} images ({len(batches)} batches), local and Ray "
             "in turn only; the machine was shared (load average in the table).\n\n" + table(rows, list(rows[0]))
             + f"\nMedian: local {local:.1f} s, Ray {ray2:.1f} s: Ray's overhead {ray2 / local - 1:+.1%} "
             "(goal <= 15%)." + (" A negative figure says the overhead is below this machine's noise, not that "
                                 "Ray is faster." if ray2 < local else "") + "\n")
    print(text)
    if not args.no_write:
        write_section(f"executors-{args.images}", text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="resnet56", help="resnet56 (the issue's) or resnet20 (a quick check)")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    ap.add_argument("--pair-only", action="store_true",
                    help="only local and Ray x2 in turn (no 1-worker run, killed worker or projection)")
    args = ap.parse_args()
    x, _ = cifar("calib", None)
    x = x[np.random.default_rng(0).permutation(len(x))[:args.images]]
    batches = [({"input": x[i:i + args.batch]}, None) for i in range(0, len(x), args.batch)]
    p = prepare(SHARED / "models" / f"{args.model}_cifar10.onnx")
    if args.pair_only:
        return pair_only(args, p, batches)
    # interleaved: local and Ray x2 every round (in turn), Ray x1 once, and the run with a killed worker last
    plan = []
    for i in range(args.rounds):
        pair = [("local", 2, 0), ("ray", 2, 0)]
        plan += pair if i % 2 == 0 else pair[::-1]
        if i == 0:
            plan.append(("ray", 1, 0))
    plan.append(("ray", 2, max(1, len(batches) // 2)))  # a worker is killed in the middle of the run
    times: dict[tuple, list[float]] = {}
    starts: dict[tuple, list[float]] = {}
    reference = None
    rows = []
    one_worker = None
    for kind, workers, kill in plan:
        secs, start, scores, scorer = run(p, batches, kind, workers, kill)
        if reference is None:
            reference = scores
        ref = np.array([reference[r] for r in reference])
        got = np.array([scores[r] for r in reference])
        rel = float(np.abs(got - ref).max() / np.abs(ref).max())
        bitwise = bool((got == ref).all())
        label = f"{kind}, {workers} worker{'s' if workers > 1 else ''}" + (", one worker killed" if kill else "")
        times.setdefault((kind, workers, bool(kill)), []).append(secs)
        starts.setdefault((kind, workers, bool(kill)), []).append(start)
        if kind == "ray" and workers == 1:
            one_worker = scorer
        rows.append({"run": len(rows) + 1, "executor": label, "scoring (s)": f"{secs:.1f}",
                     "Ray start-up (s)": f"{start:.1f}" if kind == "ray" else "-",
                     "max rel. diff to run 1": f"{rel:.1e}", "bitwise equal": "yes" if bitwise else "no",
                     "load average (1 min) after": f"{os.getloadavg()[0]:.1f}"})
        print(rows[-1], flush=True)

    med = {k: float(np.median(v)) for k, v in times.items()}
    local = med[("local", 2, False)]
    ray2 = med[("ray", 2, False)]
    overhead = ray2 / local - 1
    pairs = list(zip(times[("local", 2, False)], times[("ray", 2, False)]))
    ratios = sorted(r / l - 1 for l, r in pairs)

    # ---- what the projection is made of
    scorer = one_worker
    task_s = np.array(list(scorer.task_seconds.values()))
    prefix_s, ctx = [], []
    for b in batches:
        with Timer() as t:
            c = prefix_task(scorer.plan, b)
        prefix_s.append(t.seconds)
        ctx.append(context_bytes(c))
    plan_bytes = len(pickle.dumps(scorer.plan))
    batch_bytes = sum(context_bytes(b) for b in batches)
    fake = {k: {r: 1.0 for r in scorer.cuts[k[1]].units} for k in scorer.task_seconds}
    with Timer() as t:
        merge_sums(fake)
    merge_s = t.seconds
    work = float(task_s.sum() + sum(prefix_s))  # seconds of one core
    fixed = max(0.0, ray2 - local)  # measured engine overhead on one machine, taken as fixed per run
    proj = []
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        w = 2 * n  # workers: 2 cores a machine, as here
        compute = work / w
        transfer = (sum(ctx) + plan_bytes + batch_bytes) / BANDWIDTH if n > 1 else 0.0  # every machine pulls all
        t_n = fixed + max(compute, float(task_s.max())) + transfer
        limit = "compute" if compute >= max(float(task_s.max()), transfer) else (
            "largest task" if task_s.max() >= transfer else "transfer of activations")
        proj.append({"machines (2 cores each)": n, "projected time (s)": f"{t_n:.1f}",
                     "speed-up vs 1": f"{(fixed + work / 2) / t_n:.1f}x", "compute (s)": f"{compute:.1f}",
                     "transfer per machine (s)": f"{transfer:.2f}", "bound by": limit})

    name = {"resnet56": "ResNet-56", "resnet20": "ResNet-20"}.get(args.model, args.model)
    text = header(f"Executors: local vs Ray, {name} oracle, {args.images} images (issue 18)")
    text += (
        f"\nEvery prunable unit of {name} ({len(reference)}), {args.images} CIFAR-10 calibration images in "
        f"batches of {args.batch}: {len(scorer.cuts)} cuts x {len(batches)} batches = {len(task_s)} cut tasks "
        f"and {len(batches)} prefix tasks. Times include building the scorer (graph, suffix sessions: in every "
        "worker process for Ray); a Ray instance with as many CPUs as workers is started before each Ray run "
        "(start-up column, not in the scoring time). Runs interleaved in the order shown. **The machine was "
        "shared with other jobs** (its load average is in the table: 2 cores), so absolute times are several "
        "times those of an idle machine; the ratios of neighbouring runs are what to read."
        + (" The issue asks for 256 images; at this load a run on 256 took about 10 minutes, so the full set "
           f"of runs is on {args.images} images (the tasks per batch are the same; more batches only make the "
           "stream of tasks longer) and one local/Ray pair on 256 images is in the next section (`--pair-only`)."
           if args.images < 256 else "") + "\n\n")
    text += table(rows, list(rows[0]))
    text += (
        f"\nMedian scoring time: local (2 workers) {local:.1f} s, Ray with 2 workers {ray2:.1f} s: Ray's overhead "
        f"on one machine {overhead:+.1%} (per round: {', '.join(f'{r:+.1%}' for r in ratios)}; goal <= 15%: "
        f"{'met' if overhead <= 0.15 else 'missed'}). Ray with 1 worker: {med[('ray', 1, False)]:.1f} s. "
        f"Scores: every run against run 1 in the table (goal: max rel. diff <= 1e-6; 'bitwise equal': the "
        "same floats), including the run in which a worker process was killed in the middle and "
        "its task retried by Ray."
        + (" Ray came out faster than local: under this load the engine's overhead is below the machine's noise "
           "(Ray's worker processes may also win a larger share of the oversubscribed cores than one process's "
           "threads); it is not a speed-up, and a rerun on an idle machine would give the overhead itself."
           if overhead < 0 else "")
        + (" Ray with 1 worker ran about as fast as with 2: with the cores oversubscribed, a second worker got "
           "no second core, so the 1-to-2 scaling cannot be seen in these runs."
           if med[("ray", 1, False)] < 1.15 * ray2 else "") + "\n\n")
    text += (
        "### Projection for N machines\n\n"
        f"Measured (Ray, 1 worker): cut tasks {task_s.sum():.1f} s in all (median {np.median(task_s) * 1e3:.0f} ms, "
        f"largest {task_s.max():.2f} s); prefix runs {sum(prefix_s):.2f} s for the {len(batches)} batches "
        f"({sum(prefix_s) / work:.1%} of the work); merge of the {len(task_s)} results {merge_s * 1e3:.1f} ms. "
        f"Object store: the plan (masked model and cut specifications) {plan_bytes / 1e6:.1f} MB once, the "
        f"images {batch_bytes / 1e6:.1f} MB once, each batch's prefix result (activations where the suffixes "
        f"start, baseline outputs, channel activity) {np.mean(ctx) / 1e6:.1f} MB, {sum(ctx) / 1e6:.0f} MB for "
        "all batches. Model: T(N) = overhead measured here (fixed) + max(work / 2N workers, largest task) + the "
        f"bytes each machine pulls (all prefix results, plan, images) at {BANDWIDTH / 1e9:.2f} GB/s (10 GbE, "
        "assumed, not measured).\n\n")
    text += table(proj, list(proj[0]))
    text += (
        "\nWhat stops linear scaling: not the merge (milliseconds) and not the prefix computation (a few % "
        "of the work, and it runs on the cluster as tasks too). First the granularity: a batch has only "
        f"{len(scorer.cuts)} cut tasks of very unequal size and the largest one bounds the run, so past "
        "a few dozen workers the run waits on the largest tasks (smaller batches or splitting a cut's units "
        "across tasks would move that bound). Then the object-store transfer of activations: every machine "
        "that runs a cut of a batch pulls that batch's whole prefix result, so the bytes per machine stay "
        "constant while its compute shrinks as 1/N (sending each cut only the tensors its suffix reads would "
        "cut this). The fixed start-up (Ray workers importing onnxruntime and building their sessions) is "
        "paid once per worker process and does not shrink either.\n\n"
        "GPU: not measured (no GPU machine was lent to this task). On a cluster with GPUs the Ray executor "
        "starts one actor per GPU whose sessions use the CUDA provider with I/O binding when onnxruntime-gpu "
        "is installed there (the code path is tested on the CPU; the goal of EfficientNet-Lite0 x 256 images "
        "under 2 minutes on one GPU is open).\n")
    print(text)
    if not args.no_write:
        write_section("executors", text)


if __name__ == "__main__":
    main()
