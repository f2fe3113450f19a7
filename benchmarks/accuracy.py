"""Accuracy without fine-tuning after pruning, at several MAC budgets (issues 3 and 4).

ResNet-56 (CIFAR-10): oracle scores on 128 calibration images (KL of the
logits, label-free), least squares on 256; top-1 on all 5,000 dev images.
EfficientNet-Lite0 (ImageNet sample): calibrate on the first 250 files of
labels.tsv, measure on the other 250.

Rows: criterion (random, magnitude, oracle one-shot, oracle iterative in 3
steps; EfficientNet: energy and the oracle on 16 images) x recovery (none,
bias, lsq), scope "internal" (first conv of each block only, as in
MEASURED.md) and "whole" (residual streams pruned too, through the channel
Pad of the shortcuts); EfficientNet: "hidden" (expansion channels only) and
"whole".

Default-path tables (issue 14): the command line as a user runs it
(benchmarks/default_path.py), beside in-process rows that compare the
allocations (greedy order of unit scores, sensitivity curves judged at the
network output or at the re-fitted layers) with the same scores.

Run: python benchmarks/accuracy.py [--model resnet56|efficientnet|both] [--default-only]
Writes benchmarks/RESULTS.md sections and benchmarks/accuracy_*.png
(--replot redraws every figure from the tables).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import (SHARED, REPO, Timer, accuracy, cifar, header, imagenet_images, imagenet_split, table,
                    with_mirrors, write_section)
from onnxprune.graph.surgery import prune_channels
from onnxprune.passes.recover import recover
from onnxprune.pruning.pipeline import PruneConfig, load_calibration, plan_units, score_units
from onnxprune.pruning.prepare import prepare

RECOVERIES = ("none", "bias", "lsq")


RECOVERY_FOR = {"random": ("none", "lsq"), "magnitude": ("none", "lsq")}  # bias rows only where they tell something


def evaluate_plan(p, removed, cal_fit, x, y, recoveries=RECOVERIES):
    pruned = prune_channels(p.analysis, removed)
    out = {}
    for rec in recoveries:
        with Timer() as t:
            model = pruned if rec == "none" else recover(p, removed, pruned, cal_fit, rec)[0]
        out[rec] = (accuracy(model, x, y), t.seconds)
    macs, _ = p.cost.evaluate(np.array(removed, dtype=np.int64))
    return out, macs / p.cost.dense_macs


ROUND_TO = "auto"  # set from --round-to
INTERNAL_EXCLUDE = ("*conv2*", "/conv1/Conv")  # ResNet-56: leave the residual streams alone


def _add_rows(rows: list, scope: str, method: str, res: dict, kept: float, seconds: float) -> None:
    """One table row per recovery of one plan; ``seconds``: scoring and selection before the recovery."""
    for rec, (acc, t_rec) in res.items():
        rows.append({"scope": scope, "method": method, "recovery": rec, "MACs kept": f"{kept:.1%}",
                     "top-1": f"{acc:.1%}", "wall time (s)": f"{seconds + t_rec:.0f}"})
        print(rows[-1], flush=True)


def sweep(name, p, scores, score_times, cal_score, cal_fit, x, y, budgets, iterative_budgets, rows, max_ratio=0.9,
          recovery_for=None, raw_order=False, streams=None, stream_counts=None):
    """``streams``: units outside the block-internal scope; how many of them each one-shot oracle plan removes
    goes to ``stream_counts`` (budget -> (removed, of which streams))."""
    recovery_for = RECOVERY_FOR if recovery_for is None else recovery_for
    for budget in budgets:
        for crit, sc in scores.items():
            with Timer() as t:
                removed = plan_units(p, PruneConfig(criterion=crit, target_macs=budget, max_layer_ratio=max_ratio,
                                                        round_to=ROUND_TO),
                                     None, scores=sc)
            if crit == "oracle" and streams is not None and stream_counts is not None:
                stream_counts[budget] = (len(removed), sum(1 for u in removed if u in streams))
            res, kept = evaluate_plan(p, removed, cal_fit, x, y, recovery_for.get(crit, RECOVERIES))
            _add_rows(rows, name, f"{crit}, one-shot", res, kept, score_times[crit] + t.seconds)
            if crit == "oracle" and raw_order:  # the control: the same scores ranked without the MAC cost
                with Timer() as t:
                    removed = plan_units(p, PruneConfig(criterion=crit, target_macs=budget, max_layer_ratio=max_ratio,
                                                        round_to=ROUND_TO, ranking="raw"), None, scores=sc)
                res, kept = evaluate_plan(p, removed, cal_fit, x, y, ("none", "lsq"))
                _add_rows(rows, name, "oracle, raw score order, one-shot", res, kept, score_times[crit] + t.seconds)
        if budget in iterative_budgets and "oracle" in scores:
            with Timer() as t:
                cfg = PruneConfig(criterion="oracle", target_macs=budget, steps=3, max_layer_ratio=max_ratio,
                                  round_to=ROUND_TO)
                removed = plan_units(p, cfg, cal_score, iterate_from=scores["oracle"])
            res, kept = evaluate_plan(p, removed, cal_fit, x, y, ("none", "lsq"))
            _add_rows(rows, name, "oracle, iterative (3 steps)", res, kept, score_times["oracle"] + t.seconds)


def plot(rows, dense, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict = {}
    for r in rows:
        key = f"{r['scope']}: {r['method']} + {r['recovery']}"
        series.setdefault(key, []).append((float(r["MACs kept"].rstrip("%")), float(r["top-1"].rstrip("%"))))
    for key, pts in sorted(series.items()):
        if len(pts) < 2:
            continue
        pts.sort()
        style = "-" if "lsq" in key else (":" if "none" in key else "--")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=key)
    ax.axhline(dense * 100, color="k", lw=0.8, label="dense")
    ax.set_xlabel("MACs kept (%)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def replot(section: str, path, title) -> None:
    """Redraw a figure from the table already in RESULTS.md (for a run that had no matplotlib)."""
    import re
    body = (REPO / "benchmarks" / "RESULTS.md").read_text().split(f"<!-- {section} -->")[1].split(f"<!-- /{section} -->")[0]
    dense = float(re.search(r"Dense top-1[^:]*: ([0-9.]+)%", body).group(1)) / 100
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(cols, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    plot(rows, dense, path, title)


def resnet56(args):
    xc_all, yc_all = cifar("calib")
    perm = np.random.default_rng(0).permutation(len(xc_all))
    xs, xf = xc_all[perm[:128]], xc_all[perm[:256]]
    xd, yd = cifar("dev")
    model = SHARED / "models" / "resnet56_cifar10.onnx"
    rows: list = []
    dense = None
    whole_scores, times = None, {}
    internal_units = set(prepare(model, exclude=INTERNAL_EXCLUDE).analysis.prunable_units)
    stream_counts: dict = {}
    for scope, exclude in (("whole", ()), ("internal", INTERNAL_EXCLUDE)):
        p = prepare(model, exclude=exclude)
        dense = accuracy(p.model, xd, yd)
        cal_score = load_calibration({"input": xs}, p.original, batch_size=64)
        cal_fit = load_calibration({"input": xf}, p.original, batch_size=64)
        if whole_scores is None:
            whole_scores = {}
            for crit in args.criteria:
                with Timer() as t:
                    whole_scores[crit] = score_units(p, PruneConfig(criterion=crit), cal_score)
                times[crit] = t.seconds
            print(scope, "scoring times", times, flush=True)
        # a unit's score does not depend on which other groups are excluded: reuse the whole-network scores
        prunable = set(p.analysis.prunable_units)
        scores = {c: {r: v for r, v in s.items() if r in prunable} for c, s in whole_scores.items()}
        budgets = args.budgets if scope == "whole" else args.budgets_internal
        iterative = args.iterative if scope == "whole" else args.iterative_internal
        streams = prunable - internal_units if scope == "whole" else None
        sweep(scope, p, scores, times, cal_score, cal_fit, xd, yd, budgets, iterative, rows, raw_order=True,
              streams=streams, stream_counts=stream_counts)
        write_section(f"accuracy-resnet56{_variant()}", _resnet_text(rows, dense, stream_counts))
    write_section(f"accuracy-resnet56{_variant()}", _resnet_text(rows, dense, stream_counts))
    plot(rows, dense, REPO / "benchmarks" / f"accuracy_resnet56{_variant()}.png", "ResNet-56, no fine-tuning")


def _variant() -> str:
    """Tables with the old default (round-to 1) keep their names; other settings get their own section."""
    return "" if ROUND_TO == 1 else f"-round-to-{ROUND_TO}"


def _resnet_text(rows, dense, stream_counts=None):
    text = header(f"Accuracy without fine-tuning: ResNet-56, CIFAR-10 dev (5,000 images), round-to {ROUND_TO}")
    text += (f"\nDense top-1: {dense:.1%}. Oracle: KL of the logits on 128 calibration images (label-free), "
             "ranking by score per MAC saved unless the row says 'raw score order'; recovery (least squares with the "
             "ridge chosen per layer on a held-back fifth) on 256 calibration images. Wall time: scoring + "
             "selection + surgery + recovery, on a machine shared with other jobs (2 cores). 'internal' "
             "reuses the whole-network oracle scores of the same units.")
    if stream_counts:
        counts = ", ".join(f"{n_stream} of {n} at {b:.0%}" for b, (n, n_stream) in sorted(stream_counts.items(),
                                                                                          reverse=True))
        text += (" Residual-stream units among those the whole-network oracle plan removes (one-shot, score per "
                 f"MAC): {counts}; the oracle finds the streams too costly, so its 'internal' rows repeat the "
                 "'whole' ones.")
    text += "\n\n" + table(rows, list(rows[0]))
    text += f"\n![accuracy vs MACs](accuracy_resnet56{_variant()}.png)\n"
    return text


HIDDEN_ONLY = ("*_project_conv*", "/_conv_stem/Conv", "/_conv_head/Conv")


def efficientnet(args):
    """Whole network vs expansion (hidden) channels only, energy and oracle scores, three recoveries."""
    cf, cl, ef, el = imagenet_split()
    xc, xe = imagenet_images(cf), imagenet_images(ef)
    whole = prepare(SHARED / "models" / "efficientnet_lite0.onnx")
    dense = accuracy(whole.model, xe, el)
    cal = load_calibration({"input": xc}, whole.original, batch_size=25)
    pick = np.random.default_rng(0).permutation(len(xc))[:args.eff_oracle_images]
    cal_oracle = load_calibration({"input": xc[pick]}, whole.original, batch_size=8)
    scores, times = {}, {}
    for crit in ("random", "magnitude", "energy", "oracle"):
        with Timer() as t:
            scores[crit] = score_units(whole, PruneConfig(criterion=crit), cal_oracle if crit == "oracle" else cal)
        times[crit] = t.seconds
        print("scored", crit, f"{t.seconds:.0f} s", flush=True)
    args.oracle_seconds = times["oracle"]
    rows: list = []
    # recovery sees the calibration images and their mirror images (more data against over-fitting)
    cal_fit = load_calibration({"input": with_mirrors(xc)}, whole.original, batch_size=25, limit=2 * len(xc))
    for scope, exclude, lsq_for in (("hidden", HIDDEN_ONLY, ("energy", "oracle")), ("whole", (), ("oracle",))):
        p = whole if not exclude else prepare(SHARED / "models" / "efficientnet_lite0.onnx", exclude=exclude)
        prunable = set(p.analysis.prunable_units)
        sc = {c: {r: v for r, v in s.items() if r in prunable} for c, s in scores.items()}
        # a re-fit of EfficientNet takes minutes on 2 cores: least squares only where it can win
        recovery_for = {"random": ("none",), "magnitude": ("none",)}
        for crit in ("energy", "oracle"):
            recovery_for[crit] = RECOVERIES if crit in lsq_for else ("none", "bias")
        budgets = args.budgets_eff if scope == "hidden" else [b for b in args.budgets_eff if b in (0.85, 0.70)]
        sweep(scope, p, sc, times, cal, cal_fit, xe, el, budgets, (), rows, recovery_for=recovery_for)
        write_section("accuracy-efficientnet", _effnet_text(rows, dense, args))
    plot(rows, dense, REPO / "benchmarks" / "accuracy_efficientnet.png", "EfficientNet-Lite0, no fine-tuning")


def _effnet_text(rows, dense, args):
    text = header("Accuracy without fine-tuning: EfficientNet-Lite0, ImageNet sample (250 held-out images)")
    text += (f"\nDense top-1 on the 250 evaluation images: {dense:.1%}. Calibration: the first 250 files; "
             "bias and least-squares recovery: the same 250 and their mirror images (least squares: ridge chosen "
             "per layer on the held-back fifth); "
             f"oracle: KL of the outputs on {args.eff_oracle_images} of them (about 11,000 units, "
             f"{args.oracle_seconds:.0f} s: {args.oracle_seconds / args.eff_oracle_images:.0f} s per image on 2 cores). "
             "Scope 'hidden': only the expansion channels of the inverted-residual "
             "blocks (`--exclude '*_project_conv*' --exclude /_conv_stem/Conv --exclude /_conv_head/Conv`); "
             f"'whole': every prunable group, residual streams included. Round-to {ROUND_TO}. Wall time: scoring + "
             "selection + surgery + recovery.\n\n")
    text += table(rows, list(rows[0]))
    text += "\n![accuracy vs MACs](accuracy_efficientnet.png)\n"
    return text


ALLOCATIONS = ("greedy", "sensitivity", "block")


def allocation_rows(name, p, scores, score_times, cal, x, y, budgets, rows, criteria):
    """In-process rows: each criterion's scores under each allocation, least squares on ``cal``.

    The curves are measured once per criterion and serve every budget and both losses; each row's time
    counts scoring, the curves (sensitivity rows) and its own selection, surgery and recovery.
    """
    from onnxprune.allocation.by_sensitivity import allocate
    from onnxprune.allocation.sensitivity import measure_curves
    for crit in criteria:
        c0 = time.process_time()
        with Timer() as t:
            curves = measure_curves(p.analysis, p.model, scores[crit], PruneConfig().constraints, cal.feeds())
        curve_time, curve_cpu = t.seconds, time.process_time() - c0
        for budget in budgets:
            for allocation in ALLOCATIONS:
                c0 = time.process_time()
                with Timer() as t:
                    if allocation == "greedy":
                        removed = plan_units(p, PruneConfig(criterion=crit, target_macs=budget, allocation="greedy"),
                                             cal, scores=scores[crit])
                    else:
                        removed = allocate(curves, p.cost, PruneConfig(target_macs=budget).target,
                                           "output" if allocation == "sensitivity" else "proxy")
                    pruned = prune_channels(p.analysis, removed)
                    model = recover(p, removed, pruned, cal, "lsq")[0]
                cpu = time.process_time() - c0
                extra = (0, 0) if allocation == "greedy" else (curve_time, curve_cpu)
                kept = p.cost.evaluate(np.array(removed, dtype=np.int64))[0] / p.cost.dense_macs
                rows.append({"scope": name, "method": f"{crit}, {allocation} allocation", "recovery": "lsq",
                             "MACs kept": f"{kept:.1%}", "top-1": f"{accuracy(model, x, y):.1%}",
                             "wall time (s)": f"{score_times[crit] + extra[0] + t.seconds:.0f}",
                             "CPU time (s)": f"{score_times[crit + ' cpu'] + extra[1] + cpu:.0f}"})
                print(rows[-1], flush=True)


def default_rows(name, model, calib, flags, x, y, budgets, rows):
    """The default command line at each budget, run as a separate process."""
    from default_path import run_cli
    from onnxprune.graph.macs import CostModel
    for budget in budgets:
        pruned, wall, cpu = run_cli(model, calib, budget, flags)
        kept = CostModel(prepare(pruned).analysis).dense_macs / CostModel(prepare(model).analysis).dense_macs
        rows.append({"scope": name, "method": "default path (command line)", "recovery": "lsq (default)",
                     "MACs kept": f"{kept:.1%}", "top-1": f"{accuracy(pruned, x, y):.1%}",
                     "wall time (s)": f"{wall:.0f}", "CPU time (s)": f"{cpu:.0f}"})
        print(rows[-1], flush=True)


def _scored(p, cal, criteria):
    scores, times = {}, {}
    for crit in criteria:
        c0 = time.process_time()
        with Timer() as t:
            scores[crit] = score_units(p, PruneConfig(criterion=crit), cal)
        times[crit], times[crit + " cpu"] = t.seconds, time.process_time() - c0
    return scores, times


DEFAULT_NOTE = ("The default path is `onnxprune prune MODEL -o OUT --calib DATA --target-macs F` plus the model's "
                "preprocessing flags, nothing else. Criterion `auto`: the oracle (KL of the logits) with one global "
                "order of unit scores per MAC saved while units x MACs x images stay under 3e14 (ResNet-56: 3.4e13), "
                "activation energy beyond (EfficientNet-Lite0: 1.1e15), with the budget then allocated by "
                "sensitivity (each group's output distortion, KL of the logits on the held-back fifth of the "
                "calibration samples, after removing 12.5%, 25%, ... of it by the criterion and re-fitting its "
                "consumers by least squares; then the knapsack of `allocation/knapsack.py` under the exact MAC "
                "cost); least-squares recovery with residual-aware targets, round-to auto. In-process rows: "
                "'greedy': one global order of unit scores per MAC saved; 'sensitivity'/'block': the knapsack "
                "judged by the network output / the re-fitted layers' own error; 'spdy': sensitivity plus SPDY's "
                "search of per-group weights on the joint distortion. Wall and CPU time: the whole run (scoring, "
                "curves, selection, surgery and its exactness check, recovery; the command line also loads the "
                "images and measures latency) on a machine shared with other jobs (2 cores), so the CPU time is "
                "the figure to compare. One sigma of a top-1 on 250 images is about 2.3 points, on 5,000 about "
                "0.5.")


def efficientnet_default(args):
    from default_path import EFFNET_FLAGS, imagenet_calib_folder
    cf, cl, ef, el = imagenet_split()
    xc, xe = imagenet_images(cf), imagenet_images(ef)
    model = SHARED / "models" / "efficientnet_lite0.onnx"
    p = prepare(model)
    dense = accuracy(p.model, xe, el)
    rows: list = []
    folder = imagenet_calib_folder(cf)
    default_rows("whole", model, folder.name, EFFNET_FLAGS, xe, el, args.budgets_default_eff, rows)
    write_section("accuracy-efficientnet-default", _default_text("EfficientNet-Lite0, ImageNet sample "
                                                                 "(250 held-out images)", rows, dense, "efficientnet"))
    if args.cli_only:
        return plot(rows, dense, REPO / "benchmarks" / "accuracy_efficientnet_default.png",
                    "EfficientNet-Lite0, no fine-tuning, allocation")
    cal = load_calibration({"input": xc}, p.original, batch_size=32)
    scores, times = _scored(p, cal, ["energy"])
    if not args.cli_only:
        allocation_rows("whole", p, scores, times, cal, xe, el, args.budgets_default_eff, rows, ["energy"])
    write_section("accuracy-efficientnet-default", _default_text("EfficientNet-Lite0, ImageNet sample "
                                                                 "(250 held-out images)", rows, dense, "efficientnet"))
    plot(rows, dense, REPO / "benchmarks" / "accuracy_efficientnet_default.png",
         "EfficientNet-Lite0, no fine-tuning, allocation")


def resnet56_default(args):
    from default_path import CIFAR_FLAGS
    xc, _ = cifar("calib")
    xd, yd = cifar("dev")
    model = SHARED / "models" / "resnet56_cifar10.onnx"
    calib = SHARED / "data" / "cifar10_calib.npz"
    p = prepare(model)
    dense = accuracy(p.model, xd, yd)
    rows: list = []
    default_rows("whole", model, calib, CIFAR_FLAGS, xd, yd, args.budgets_default, rows)
    write_section("accuracy-resnet56-default", _default_text("ResNet-56, CIFAR-10 dev (5,000 images)", rows, dense,
                                                             "resnet56"))
    if args.cli_only:
        return plot(rows, dense, REPO / "benchmarks" / "accuracy_resnet56_default.png",
                    "ResNet-56, no fine-tuning, allocation")
    cal = load_calibration({"input": xc[:256]}, p.original, batch_size=32)  # what the command line reads
    scores, times = _scored(p, cal, args.criteria_default)
    allocation_rows("whole", p, scores, times, cal, xd, yd, args.budgets_default, rows, args.criteria_default)
    write_section("accuracy-resnet56-default", _default_text("ResNet-56, CIFAR-10 dev (5,000 images)", rows, dense,
                                                             "resnet56"))
    plot(rows, dense, REPO / "benchmarks" / "accuracy_resnet56_default.png", "ResNet-56, no fine-tuning, allocation")


def _default_text(title, rows, dense, key):
    text = header(f"Default path and allocation: {title}")
    text += (f"\nDense top-1: {dense:.1%}. Calibration: the first 256 calibration samples (ImageNet: the first 250 "
             "files of labels.tsv), measured on data never calibrated on. " + DEFAULT_NOTE + "\n\n")
    text += table(rows, list(rows[0]))
    text += f"\n![accuracy vs MACs](accuracy_{key}_default.png)\n"
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="both", choices=["resnet56", "efficientnet", "both"])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.85, 0.70, 0.55, 0.50, 0.40])
    ap.add_argument("--iterative", type=float, nargs="*", default=[0.70, 0.55])
    ap.add_argument("--budgets-internal", type=float, nargs="*", default=[0.70, 0.55])
    ap.add_argument("--iterative-internal", type=float, nargs="*", default=[0.70, 0.55])
    ap.add_argument("--budgets-eff", type=float, nargs="+", default=[0.85, 0.80, 0.70])
    ap.add_argument("--eff-oracle-images", type=int, default=16)
    ap.add_argument("--criteria", nargs="+", default=["random", "magnitude", "oracle"], help="ResNet-56 criteria")
    ap.add_argument("--round-to", default="1", help="width multiple, or auto (the tables below used 1 unless said)")
    ap.add_argument("--replot", action="store_true", help="only redraw the figures from RESULTS.md")
    ap.add_argument("--default-only", action="store_true", help="only the default-path and allocation tables")
    ap.add_argument("--cli-only", action="store_true", help="with --default-only: only the command-line rows")
    ap.add_argument("--budgets-default", type=float, nargs="+", default=[0.70, 0.50])
    ap.add_argument("--budgets-default-eff", type=float, nargs="+", default=[0.85, 0.70])
    ap.add_argument("--criteria-default", nargs="+", default=["energy", "oracle"], help="ResNet-56 allocation rows")
    args = ap.parse_args()
    if args.replot:
        figures = {"efficientnet": [("accuracy-efficientnet", "accuracy_efficientnet.png", "EfficientNet-Lite0"),
                                    ("accuracy-efficientnet-default", "accuracy_efficientnet_default.png",
                                     "EfficientNet-Lite0, allocation")],
                   "resnet56": [("accuracy-resnet56", "accuracy_resnet56.png", "ResNet-56"),
                                ("accuracy-resnet56-default", "accuracy_resnet56_default.png", "ResNet-56, allocation")]}
        for key, items in figures.items():
            if args.model in (key, "both"):
                for section, png, title in items:
                    if f"<!-- {section} -->" in (REPO / "benchmarks" / "RESULTS.md").read_text():
                        replot(section, REPO / "benchmarks" / png, f"{title}, no fine-tuning")
        return
    global ROUND_TO
    ROUND_TO = args.round_to if args.round_to == "auto" else int(args.round_to)
    if args.model in ("resnet56", "both"):
        if not args.default_only:
            resnet56(args)
        resnet56_default(args)
    if args.model in ("efficientnet", "both"):
        if not args.default_only:
            efficientnet(args)
        efficientnet_default(args)


if __name__ == "__main__":
    main()
