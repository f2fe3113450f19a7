"""``onnxprune sweep``: arguments only; the work is :func:`onnxprune.sweep.sweep`."""

from __future__ import annotations

import argparse

from ..scoring.registry import CRITERIA
from .args import (EXCLUDE_HELP, _add_calib_args, _add_distill_args, _add_latency_args, _add_model_args,
                   _add_oracle_args, _preprocess, _round_to)


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="score once, prune to several budgets, and report accuracy/fidelity vs MACs "
                                     "and measured latency (Markdown + PNG + HTML)")
    _add_model_args(p)
    p.add_argument("--budgets", default="0.9,0.8,0.7,0.6,0.5", help="kept fractions, comma-separated")
    p.add_argument("--budget-kind", choices=["macs", "latency"], default="macs",
                   help="what the budgets are fractions of: MACs (default) or measured latency")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder for the report, plots and pruned models")
    p.add_argument("--eval", help="evaluation data (with labels: accuracy), never calibrated on, every row "
                                  "used; default: the calibration file's rows that --calib-limit did not take")
    p.add_argument("--criterion", default="oracle", choices=list(CRITERIA),
                   help="how kernels are scored, once for every budget (default oracle)")
    p.add_argument("--scores", help="per-kernel scores JSON written by `onnxprune score` (skips scoring)")
    p.add_argument("--recover", choices=["auto", "lsq", "bias", "none", "distill"], default="auto",
                   help="after pruning: least squares (auto), bias compensation, none, or distill (least squares, "
                        "then fine-tuning against the dense model at every budget)")
    _add_distill_args(p)
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=EXCLUDE_HELP)
    p.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto",
                   help="kept widths multiples of N (default auto, as for prune)")
    p.add_argument("--max-layer-ratio", type=float, default=0.9,
                   help="never remove more than this fraction of one layer's kernels (default 0.9)")
    p.add_argument("--no-models", action="store_true", help="write only the report, not the pruned models")
    _add_calib_args(p)
    _add_oracle_args(p)
    _add_latency_args(p)


def run_sweep(args: argparse.Namespace, config) -> int:
    """``config``: the PruneConfig the shared flags describe (built by the caller, whose module builds them all)."""
    from ..sweep import parse_budgets, sweep
    if not args.calib:
        from ..errors import CalibrationError
        raise CalibrationError("sweep needs calibration data: pass --calib DIR|FILE")
    kernel_scores = None
    if args.scores:
        from ..scores_io import load_scores
        kernel_scores = load_scores(args.scores)
    res = sweep(args.model, args.calib, parse_budgets(args.budgets), args.out, kind=args.budget_kind, config=config,
                eval_source=args.eval, preprocess=_preprocess(args), write_models=not args.no_models,
                kernel_scores=kernel_scores)
    print(f"{'budget':>8} {'MACs kept':>10} {'latency ms':>11} {'speed-up':>9} {res.quality_name}")
    print(f"{'dense':>8} {'100.0%':>10} {res.dense_latency.median:>11.3f} {'1.00x':>9} {res.dense_quality:.2%}")
    for pt in res.points:
        print(f"{pt.budget:>8g} {pt.macs_kept:>10.1%} {pt.latency.median:>11.3f} "
              f"{res.dense_latency.median / max(pt.latency.median, 1e-12):>8.2f}x {pt.quality:.2%}")
    for note in res.notes:
        print(f"note: {note}")
    plots = f"{len(res.plots)} plots" if res.plots else "no plots (pip install \"onnxprune[plot]\" for them)"
    print(f"wrote {args.out}/sweep.html, sweep.md and {plots}")
    return 0
