"""--target-latency against --target-macs: measured speed-up and accuracy (onnxruntime CPU, 2 threads).

ResNet-56 (CIFAR-10): oracle scores on 128 calibration images, least squares
on 256 (cifar10_calib.npz); top-1 on the 5,000 dev images. Models: --target-latency
0.5 with the table and the check measured at batch 1, and at batch 32; --target-macs
at several budgets, so that a MAC model of the same measured latency can be
compared. EfficientNet-Lite0 (ImageNet sample): energy scores (the oracle
takes minutes per image batch here), expansion channels only, least squares
on the first 250 images, top-1 on the other 250; --target-latency 0.7 at
batch 1 against --target-macs 0.7.

Every model is timed interleaved with the dense one (onnxprune.latency's
time_interleaved: the median over rounds of the best of a few runs per round),
the whole timing repeated three times; a figure is the median of the three
and the range is over the three. Run: python benchmarks/latency.py [--skip-effnet]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import SHARED, accuracy, header, imagenet_images, imagenet_split, resnet56_setup, table, write_section
from onnxprune.config import PruneConfig
from onnxprune.latency.timing import LatencySettings, feeds_for, time_models
from onnxprune.latency.table import build_table
from onnxprune.pruning.pipeline import load_calibration, run_pruning, score_units
from onnxprune.pruning.prepare import prepare

HIDDEN_ONLY = ("*_project_conv*", "/_conv_stem/Conv", "/_conv_head/Conv")


def timings(p, models: dict, batch: int, rounds: int, runs: int, repeats: int = 3) -> dict:
    """Per model: (median ms, low, high) over ``repeats`` interleaved timings at ``batch``, 2 threads."""
    settings = LatencySettings(provider="CPUExecutionProvider", batch=batch, threads=2, rounds=rounds, runs=runs)
    feed = feeds_for(p.model, p.with_batch(batch))
    reps = [time_models(models, feed, settings) for _ in range(repeats)]
    return {k: (statistics.median(r[k].median for r in reps), min(r[k].median for r in reps),
                max(r[k].median for r in reps)) for k in models}


CACHE = tempfile.mkdtemp(prefix="onnxprune-latency-bench-")
TABLE_SECONDS: dict = {}


def table_seconds(p, cfg: PruneConfig, name: str) -> None:
    """Build the latency table into a fresh cache (the pruning run then reads it) and record how long it took."""
    t0 = time.perf_counter()
    t = build_table(p.analysis, cfg.latency_settings)
    TABLE_SECONDS[name] = (time.perf_counter() - t0, len(t.groups), sum(len(g.widths) for g in t.groups.values()))
    print("table", name, TABLE_SECONDS[name], flush=True)


def cached_scores(p, criterion: str, cal, name: str) -> dict:
    """Scores of every unit, kept in the temp folder between runs of this script (scoring dominates its time)."""
    path = Path(tempfile.gettempdir()) / f"onnxprune-latency-bench-{name}-{criterion}.json"
    if path.exists():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    t0 = time.perf_counter()
    scores = score_units(p, PruneConfig(criterion=criterion), cal)
    print(f"{criterion} scores {time.perf_counter() - t0:.0f} s", flush=True)
    path.write_text(json.dumps({str(k): v for k, v in scores.items()}))
    return scores


def _fmt(t: tuple, dense: tuple) -> str:
    return f"{t[0]:.2f} ({t[1]:.2f}-{t[2]:.2f}) {dense[0] / t[0]:.2f}x"


def _prune(p, scores, cal, cfg):
    t0 = time.perf_counter()
    res = run_pruning(p.original, None, calibration=cal, prepared=p, scores=scores, config=cfg)
    return res, time.perf_counter() - t0


def resnet56(rows: list, batches=(1, 32), macs=(0.5, 0.4, 0.3, 0.25), allow_drop: bool = False) -> None:
    p, cal_score, cal_fit, xd, yd = resnet56_setup()
    scores = cached_scores(p, "oracle", cal_score, "resnet56")
    models, meta = {"dense": p.original}, {"dense": ("dense", 1.0, None, None)}
    for batch in batches:
        cfg = PruneConfig(criterion="oracle", target_latency=0.5, latency_batch=batch, latency_threads=2,
                          latency_provider="CPUExecutionProvider", latency_cache=CACHE, allow_drop=allow_drop)
        table_seconds(p, cfg, f"ResNet-56 batch {batch}")
        res, secs = _prune(p, scores, cal_fit, cfg)
        key = f"--target-latency 0.5 (table at batch {batch})" + (" --allow-block-removal" if allow_drop else "")
        models[key] = res.model
        lat = res.report.extra["latency"]
        meta[key] = (key, res.report.after.macs / res.report.before.macs, lat["measured_fraction"], secs)
        print(key, f"{secs:.0f} s", lat, flush=True)
    for m in macs:
        cfg = PruneConfig(criterion="oracle", target_macs=m, measure=False, allow_drop=allow_drop)
        res, secs = _prune(p, scores, cal_fit, cfg)
        key = f"--target-macs {m}" + (" --allow-block-removal" if allow_drop else "")
        models[key] = res.model
        meta[key] = (key, res.report.after.macs / res.report.before.macs, None, secs)
        print(key, f"{secs:.0f} s", flush=True)
    t1 = timings(p, models, 1, rounds=20, runs=10)
    t32 = timings(p, models, 32, rounds=8, runs=3)
    for k, m in models.items():
        acc = accuracy(m, xd, yd)
        name, macs, during, secs = meta[k]
        rows.append({"model": "ResNet-56", "run": name, "MACs kept": f"{macs:.1%}",
                     "batch 1: ms (range) speed-up": _fmt(t1[k], t1["dense"]),
                     "batch 32: ms (range) speed-up": _fmt(t32[k], t32["dense"]),
                     "dev top-1": f"{acc:.1%}",
                     "time kept when pruned": "" if during is None else f"{during:.1%}",
                     "wall s": "" if secs is None else f"{secs:.0f}"})
        print(rows[-1], flush=True)


def efficientnet(rows: list) -> None:
    cf, _, ef, el = imagenet_split()
    xc, xe = imagenet_images(cf), imagenet_images(ef)
    p = prepare(SHARED / "models" / "efficientnet_lite0.onnx", exclude=HIDDEN_ONLY)
    cal = load_calibration({"input": xc}, p.original, batch_size=25)
    scores = cached_scores(p, "energy", cal, "efficientnet_hidden")
    models, meta = {"dense": p.original}, {"dense": ("dense", 1.0, None, None)}
    for key, cfg in (("--target-latency 0.7 (table at batch 1)",
                      PruneConfig(criterion="energy", target_latency=0.7, latency_batch=1, latency_threads=2,
                                  latency_provider="CPUExecutionProvider", latency_cache=CACHE)),
                     ("--target-macs 0.7", PruneConfig(criterion="energy", target_macs=0.7, measure=False))):
        if cfg.target_latency is not None:
            table_seconds(p, cfg, "EfficientNet-Lite0 batch 1")
        res, secs = _prune(p, scores, cal, cfg)
        models[key] = res.model
        lat = res.report.extra.get("latency")
        meta[key] = (key, res.report.after.macs / res.report.before.macs, lat["measured_fraction"] if lat else None,
                     secs)
        print(key, f"{secs:.0f} s", lat, flush=True)
    t1 = timings(p, models, 1, rounds=10, runs=3)
    for k, m in models.items():
        name, macs, during, secs = meta[k]
        rows.append({"model": "EfficientNet-Lite0", "run": name, "MACs kept": f"{macs:.1%}",
                     "batch 1: ms (range) speed-up": _fmt(t1[k], t1["dense"]), "batch 32: ms (range) speed-up": "",
                     "dev top-1": f"{accuracy(m, xe, el, batch=50):.1%}",
                     "time kept when pruned": "" if during is None else f"{during:.1%}",
                     "wall s": "" if secs is None else f"{secs:.0f}"})
        print(rows[-1], flush=True)


INTRO = ("\nEvery model is timed interleaved with the dense one, the whole timing repeated three times; "
         "ms is the median of the three (each the median over rounds of the best of several runs), the range is "
         "over the three. 'time kept when pruned': the pruned model's share of the dense time as the pruning run "
         "itself measured and reported it (the table's batch, medians of one interleaved timing). 'wall s': selection (the table "
         "read from the cache, its build time below) + the measured check + surgery + recovery, scores shared. "
         "ResNet-56: oracle (KL) on 128 calibration images, least squares on 256, top-1 on cifar10_dev (5,000).")
EFF_INTRO = (" EfficientNet-Lite0: energy scores on the first 250 images of imagenet_dev, expansion channels only, "
             "least squares on the same 250, top-1 on the other 250.")


def write(rows: list, section: str = "latency-target") -> None:
    title = "Latency targets: --target-latency vs --target-macs (onnxruntime CPU, 2 threads)"
    if section != "latency-target":
        title += f" ({section})"
    text = header(title) + INTRO + (EFF_INTRO if any(r["model"] != "ResNet-56" for r in rows) else "") + "\n\n"
    text += table(rows, list(rows[0]))
    text += "\nLatency tables (fresh cache, 2 threads): " + "; ".join(
        f"{k}: {s:.0f} s for {g} groups, {w} widths" for k, (s, g, w) in TABLE_SECONDS.items()) + ".\n"
    write_section(section, text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-effnet", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--batches", default="1,32", help="batches the latency tables of ResNet-56 are built at")
    ap.add_argument("--macs", default="0.5,0.4,0.3,0.25", help="--target-macs budgets of ResNet-56")
    ap.add_argument("--section", default="latency-target")
    ap.add_argument("--allow-drop", action="store_true", help="ResNet-56 runs with --allow-block-removal")
    args = ap.parse_args()
    rows: list = []
    if not args.skip_resnet:
        resnet56(rows, [int(b) for b in args.batches.split(",")], [float(m) for m in args.macs.split(",")],
                 args.allow_drop)
        write(rows, args.section)
    if not args.skip_effnet:
        efficientnet(rows)
        write(rows, args.section)


if __name__ == "__main__":
    main()
