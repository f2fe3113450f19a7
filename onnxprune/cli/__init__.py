"""The ``onnxprune`` command line: inspect, prune, apply, score, sparsify, demo.

Library code only logs; this module prints. Every OnnxPruneError becomes one
line on stderr and its exit status (2, or 3 below the fidelity floor: errors.py), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from ..config import QUANTIZE_MODES, default
from ..errors import EXIT_BELOW_FLOOR, EXIT_INTERRUPTED, BelowFloorError, OnnxPruneError
from ..scoring.auto import AUTO
from ..scoring.registry import CRITERIA
from .args import (EXCLUDE_HELP, _add_calib_args, _add_distill_args, _add_fidelity_args, _add_model_args,
                   _add_oracle_args, _add_recover_arg, _add_target_args, _distill, _input_shapes, _preprocess)
from .output import check_report_target, emit_refused, emit_result, error_json

logger = logging.getLogger(__name__)


def _config(args):
    """The PruneConfig the parsed flags describe: every flag named as its field (or renamed in ``FIELD_OF``);
    a flag this verb lacks keeps PruneConfig's default, the one place defaults live."""
    from dataclasses import fields

    from ..config import PruneConfig
    values = {f.name: getattr(args, f.name) for f in fields(PruneConfig) if hasattr(args, f.name)}
    for flag, (name, convert) in FIELD_OF.items():
        if hasattr(args, flag):
            values[name] = convert(getattr(args, flag))
    return PruneConfig(**values, progress=True, distill=_distill(args))


FIELD_OF = {  # flag -> (PruneConfig field, conversion) where the names differ
    "exclude": ("nodes_to_exclude", tuple),
    "calib_limit": ("calibration_samples", lambda v: v),
    "allow_block_removal": ("allow_drop", bool),
    "input_shape": ("input_shapes", _input_shapes),
    "no_verify": ("verify", lambda v: not v),
    "use_external_data_format": ("use_external_data_format", lambda v: v or None),  # None: as the input
}


class _Parser(argparse.ArgumentParser):
    """argparse with its error as one line (the usage block is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"onnxprune: error: {self.prog.split(' ', 1)[-1]}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = _Parser(prog="onnxprune", description="Structured pruning of ONNX models. Exit codes: 0 done, 2 bad "
                                                   "input (nothing written), 3 below the fidelity floor, 130 "
                                                   "interrupted.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="list prunable layers, channel groups and frozen groups with reasons")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=EXCLUDE_HELP)

    p = sub.add_parser("prune", help="remove the least important kernels and write a smaller model")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--criterion", default=default("criterion"), choices=[AUTO, *CRITERIA],
                   help="how kernels are scored; default: %(default)s with --calib (the oracle while units x MACs x "
                        "images stay under 3e14, energy beyond), which is magnitude without data")
    p.add_argument("--scores", help="per-kernel scores JSON written by `onnxprune score`")
    _add_target_args(p)
    _add_calib_args(p)
    _add_fidelity_args(p)
    _add_oracle_args(p)
    _add_recover_arg(p)
    _add_distill_args(p)
    p.add_argument("--augment", type=int, default=default("augment"), metavar="N",
                   help="least squares also fits N random-resized-crop/flip copies of each calibration image "
                        "(default %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default=default("quantize"),
                   help="after pruning and recovery: onnxruntime static int8 quantization (QDQ, per-channel weights) "
                        "with the same --calib data; the report compares dense/pruned x fp32/int8")
    p.add_argument("--allow-block-removal", action="store_true",
                   help="a group that lives inside a residual branch may lose every channel: the branch goes")
    p.add_argument("--steps", type=int, default=default("steps"), help="iterative schedule: reach the target in N steps, re-scoring")
    p.add_argument("--gradual-start", type=float, help="N2D2 Gradual: first step's fraction removed")
    p.add_argument("--gradual-gamma", type=float, help="N2D2 Gradual: increment per step")
    p.add_argument("--save-plan", help="write the plan (kernels removed) as JSON")
    p.add_argument("--report", metavar="FILE|-",
                   help="also write the report: .md, .json or .html by the extension, - for Markdown on stdout")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary object on stdout instead of the tables")
    p.add_argument("--no-verify", action="store_true", help="skip the exactness check (not recommended)")
    p.add_argument("--use-external-data-format", action="store_true",
                   help="write the weights to OUTPUT.data beside the model (automatic over 1.8 GB)")
    p.add_argument("--seed", type=int, default=default("seed"),
                   help="seed of the random criterion, of --augment and of the sensitivity samples "
                        "(default %(default)s)")

    p = sub.add_parser("score", help="oracle (or other) scores of every prunable kernel, saved for reuse")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="scores .json to write")
    p.add_argument("--criterion", default="oracle", choices=list(CRITERIA),
                   help="how kernels are scored (default oracle: the change of the output when a kernel is removed)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=EXCLUDE_HELP)
    _add_calib_args(p)
    _add_fidelity_args(p, floor=False, evaluation=False)
    _add_oracle_args(p)

    p = sub.add_parser("apply", help="apply a saved plan")
    _add_model_args(p)
    p.add_argument("--plan", required=True, help="plan JSON from `prune --save-plan`")
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--no-verify", action="store_true", help="skip the exactness check (not recommended)")
    p.add_argument("--report", metavar="FILE|-", help="also write the report: .md, .json or .html by the extension")
    _add_calib_args(p)  # the prune's calibration data: its re-fit (recorded in the plan) is repeated exactly
    for action in p._actions:
        if action.dest in ("calib_limit", "batch_size"):
            action.default, action.help = None, f"{action.help.split(' (default')[0]} (default: the plan's)"
        elif action.dest == "calib":
            action.help = ("the prune's calibration data: when the plan's prune re-fitted the layers (least "
                           "squares), apply repeats that re-fit and writes the prune's model; " + action.help)
    p.add_argument("--eval", metavar="DIR|FILE", help="the prune's --eval data, when it had one (the re-fit "
                                                     "then used every calibration row)")

    p = sub.add_parser("demo", help="prune the embedded digits CNN end to end")
    p.add_argument("-o", "--output", help="where to write the pruned demo model (default: a temp folder)")
    p.add_argument("--target-macs", type=float, default=0.5, help="kept fraction of the MACs, 0-1 (default 0.5)")
    p.add_argument("--files", metavar="DIR", help="only write the demo model, images/ and calib.npz to DIR "
                                                  "(to try the README's commands on)")

    from .sparsify import add_sparsify_parser
    from .sweep import add_sweep_parser
    add_sparsify_parser(sub)
    add_sweep_parser(sub)
    for verb in sub.choices.values():  # -v also after the verb; SUPPRESS keeps the one given before it
        verb.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="log progress details")
    return parser


def _cmd_inspect(args) -> int:
    from ..pruning.api import inspect
    rep = inspect(args.model, _input_shapes(args.input_shape), args.exclude)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    from ..report.document import columns as _fmt
    rows = [("layer", "op", "kernels", "prunable", "MACs", "params", "group")]
    for l in rep.layers:
        rows.append((l.name, l.op, str(l.kernels), str(l.prunable_kernels), f"{l.macs:,}", f"{l.params:,}",
                     str(l.group) if l.group is not None else "-"))
    print(_fmt(rows))
    print()
    grows = [("group", "units", "kernels", "layers", "status")]
    for g in rep.groups:
        layers = g.layers[0] + (f" (+{len(g.layers) - 1})" if len(g.layers) > 1 else "")
        status = (("prunable, droppable" if g.droppable else "prunable") if g.frozen_reason is None
                  else f"frozen: {g.frozen_reason}")
        grows.append((str(g.id), f"{g.units} heads" if g.heads_of else str(g.units), str(g.kernels), layers,
                      status + (f" (attention heads of {g.heads_of!r})" if g.heads_of else "")))
    print(_fmt(grows))
    print()
    print(f"input shapes probed: {rep.input_shapes}")
    print(f"prunable_conv_num: {rep.prunable_conv_num}")
    print(f"prunable_kernel_num: {rep.prunable_kernel_num} of {rep.total_kernels} kernels")
    print(f"MACs per sample: {rep.macs:,}   params: {rep.params:,}")
    return 0


def _cmd_score(args) -> int:
    from ..pruning.api import kernel_scores
    from ..pruning.pipeline import judged, prepare_run, score_units
    from ..scoring.store import save_scores
    config = _config(args)
    _check_outputs(args, args.output)
    p, calibration = prepare_run(args.model, args.calib, config, preprocess=_preprocess(args), hold_out=True)
    # the rows `prune --scores` judges on stay unseen; the oracle's cost is the task's, as in `prune`
    calibration, _, config = judged(p, calibration, config, preprocess=_preprocess(args))
    scores = score_units(p, config, calibration)
    save_scores(args.output, kernel_scores(p, scores),
                {"criterion": args.criterion, "samples": len(calibration) if calibration else 0,
                 "oracle_cost": args.oracle_cost if args.criterion == "oracle" else None})
    print(f"scored {len(scores)} prunable units of {len(p.analysis.prunable_layers)} layers"
          + (f" on {len(calibration)} samples" if calibration else "") + f"; wrote {args.output}")
    return 0


def _cmd_prune(args) -> int:
    """Data-free or not, one path: the config resolves ``auto`` (criterion, ranking, recovery, measuring) from
    the data the run has."""
    from ..pruning.api import scores_from_kernels
    from ..pruning.pipeline import run_pruning
    config = _config(args)
    _check_outputs(args, args.output, args.save_plan)
    check_report_target(args)
    scores = prepared = None
    if args.scores:
        from ..pruning.prepare import prepare
        from ..scoring.store import load_scores
        prepared = prepare(args.model, config.input_shapes, config.nodes_to_exclude)
        scores = scores_from_kernels(prepared, load_scores(args.scores))
    res = run_pruning(args.model, args.output, args.calib, config, preprocess=_preprocess(args), scores=scores,
                      prepared=prepared, evaluation=args.eval)
    return emit_result(res, args)


def _check_outputs(args, *outputs: Optional[str]) -> None:
    """Every file the command will write: none of them an input, each folder writable, before any work."""
    from ..graph.io import check_output_path
    inputs = [args.model] + [getattr(args, k, None) for k in ("calib", "scores", "plan")]
    for out in outputs:
        if out:
            check_output_path(out, *inputs)


def _cmd_apply(args) -> int:
    from ..pruning.api import apply_plan
    from ..pruning.plan import PruningPlan
    _check_outputs(args, args.output)
    check_report_target(args)
    plan = PruningPlan.load(args.plan)
    for key, given in (("calibration_samples", args.calib_limit), ("batch_size", args.batch_size)):
        if given is not None and plan.meta.get("recovery"):
            plan.meta["recovery"][key] = given
    res = apply_plan(args.model, plan, args.output, input_shapes=_input_shapes(args.input_shape),
                     verify=not args.no_verify, calibration_source=args.calib, evaluation=args.eval,
                     preprocess=_preprocess(args) if args.calib else None)
    return emit_result(res, args)


def _cmd_demo(args) -> int:
    from ..demo import run_demo, write_demo_files
    if args.files:
        print(f"wrote model.onnx, images/ and calib.npz to {write_demo_files(args.files)}")
        return 0
    print(run_demo(args.output, target_macs=args.target_macs))
    return 0


COMMANDS = {"inspect": _cmd_inspect, "prune": _cmd_prune, "score": _cmd_score, "apply": _cmd_apply, "demo": _cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line the reports name
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnxprune.progress").setLevel(logging.INFO)  # progress lines of long runs, even without -v
    handler = COMMANDS.get(args.command)
    if args.command == "sweep":
        from .sweep import run_sweep

        def handler(a):
            return run_sweep(a, _config(a))
    if handler is None:
        from .sparsify import run_sparsify
        handler = run_sparsify
    try:
        return int(handler(args) or 0)
    except BelowFloorError as exc:
        emit_refused(exc.result, args, str(exc))
        print(f"onnxprune: error: {exc}", file=sys.stderr)
        return EXIT_BELOW_FLOOR
    except OnnxPruneError as exc:
        print(f"onnxprune: error: {exc}", file=sys.stderr)
        code = exc.exit_code
        if getattr(args, "json", False):
            print(error_json(str(exc), code))
        return code
    except KeyboardInterrupt:
        print("onnxprune: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
