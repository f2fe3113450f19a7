"""``onnxprune sweep``: arguments only; the work is :func:`onnxprune.pruning.sweep.sweep`."""

from __future__ import annotations

import argparse

from ..scoring.registry import CRITERIA
from .args import (_add_calib_args, _add_distill_args, _add_latency_args, _add_model_args, _add_oracle_args,
                   _add_recover_arg, _preprocess, add_constraint_args)


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
    _add_recover_arg(p)
    _add_distill_args(p)
    add_constraint_args(p)
    p.add_argument("--no-models", action="store_true", help="write only the report, not the pruned models")
    _add_calib_args(p)
    _add_oracle_args(p)
    _add_latency_args(p)


def run_sweep(args: argparse.Namespace, config) -> int:
    """``config``: the PruneConfig the shared flags describe (built by the caller, whose module builds them all)."""
    from ..pruning.sweep import parse_budgets, sweep
    if not args.calib:
        from ..errors import CalibrationError
        raise CalibrationError("sweep needs calibration data: pass --calib DIR|FILE")
    kernel_scores = None
    if args.scores:
        from ..scoring.store import load_scores
        kernel_scores = load_scores(args.scores)
    from ..report import Provenance
    from ..report.document import Document, text
    from ..report.sweep import summary_table
    res = sweep(args.model, args.calib, parse_budgets(args.budgets), args.out, kind=args.budget_kind, config=config,
                eval_source=args.eval, preprocess=_preprocess(args), write_models=not args.no_models,
                kernel_scores=kernel_scores, provenance=Provenance.of_command(getattr(args, "argv", None), args.calib))
    table = summary_table(res)
    print(text(Document("", [table])))
    print(table.caption)
    for note in res.notes:
        print(f"note: {note}")
    plots = f"{len(res.plots)} plots" if res.plots else "no plots (pip install \"onnxprune[plot]\" for them)"
    print(f"wrote {args.out}/sweep.html, sweep.md and {plots}")
    return 0
