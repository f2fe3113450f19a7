"""The ``onnxprune`` command line: inspect, prune, apply, score, sparsify, demo.

Library code only logs; this module prints. Every OnnxPruneError becomes one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import InvalidArgumentError, OnnxPruneError

logger = logging.getLogger(__name__)


def _input_shapes(values: Optional[Sequence[str]]) -> Optional[dict[str, list[int]]]:
    """``name:1x3x224x224`` (or ``1,3,224,224``) -> {name: [1, 3, 224, 224]}."""
    if not values:
        return None
    out: dict[str, list[int]] = {}
    for v in values:
        name, sep, dims = v.rpartition(":")
        if not sep or not name:
            raise InvalidArgumentError(f"--input-shape {v!r}: expected NAME:1x3x224x224")
        try:
            out[name] = [int(d) for d in dims.replace(",", "x").split("x")]
        except ValueError:
            raise InvalidArgumentError(f"--input-shape {v!r}: dims must be integers") from None
    return out


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS",
                   help="concrete input size for dynamic dims, e.g. x:1x3x640x640 (repeatable)")


def _round_to(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def _add_target_args(p: argparse.ArgumentParser) -> None:
    t = p.add_mutually_exclusive_group()
    t.add_argument("--percentage", type=float, help="share of prunable kernels to remove, 0-100 (default 10)")
    t.add_argument("--target-macs", type=float, help="keep at most this fraction of the MACs, e.g. 0.5")
    t.add_argument("--target-params", type=float, help="keep at most this fraction of the parameters")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="layer name or fnmatch pattern whose channel group is left alone (repeatable)")
    p.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto",
                   help="keep channel counts of each group multiples of N; auto (default): 8 for groups of 128+ "
                        "channels, 4 from 16, free below (fast widths for onnxruntime's CPU kernels)")
    p.add_argument("--max-layer-ratio", type=float, default=0.9,
                   help="never remove more than this fraction of one layer's kernels (default 0.9)")
    p.add_argument("--min-kernels", type=int, default=1, help="kernels every layer keeps at least (default 1)")


def _add_calib_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration data")
    g.add_argument("--calib", help="folder of images, or .npy/.npz (uint8 NHWC images or float model inputs)")
    g.add_argument("--calib-limit", type=int, default=256, help="calibration samples to use (default 256)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--size", help="HxW the images are brought to (default: the model's input size)")
    g.add_argument("--resize", type=int, help="resize the shorter side to this, then center-crop to --size")
    g.add_argument("--scale", type=float, default=1 / 255, help="pixel scale (default 1/255)")
    g.add_argument("--mean", help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225")
    g.add_argument("--bgr", action="store_true", help="feed channels in BGR order")
    g.add_argument("--nhwc", action="store_true", help="the model takes NHWC input")
    g.add_argument("--grayscale", action="store_true")


def _add_oracle_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("oracle")
    g.add_argument("--oracle-cost", default="auto", choices=["auto", "kl", "mse", "loss", "abs"],
                   help="label-free output distortion (auto: KL for logits/probabilities, else normalised MSE), "
                        "or with labels the signed (loss) / absolute (abs) change of cross-entropy")
    g.add_argument("--ranking", default="per_mac", choices=["per_mac", "raw", "flops_reg"],
                   help="order of removal: score per MAC saved (default), raw score, or score - lambda*MACs")
    g.add_argument("--flops-lambda", type=float, default=1.0)
    g.add_argument("--layer-norm", action="store_true", help="per-layer L2 normalisation of scores")


def _preprocess(args):
    from .calibration import Preprocess
    floats = lambda s: tuple(float(v) for v in s.split(",")) if s else None  # noqa: E731
    size = None
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise InvalidArgumentError(f"--size {args.size!r}: expected HxW, e.g. 224x224") from None
        size = (h, w)
    kw = dict(size=size, resize=args.resize, scale=args.scale, channel_order="BGR" if args.bgr else "RGB",
              layout="NHWC" if args.nhwc else "NCHW", grayscale=args.grayscale)
    if args.mean:
        kw["mean"] = floats(args.mean)
    if args.std:
        kw["std"] = floats(args.std)
    return Preprocess(**kw)


def _config(args, criterion: str):
    from .pipeline import PruneConfig
    return PruneConfig(
        criterion=criterion, percentage=getattr(args, "percentage", None),
        target_macs=getattr(args, "target_macs", None), target_params=getattr(args, "target_params", None),
        nodes_to_exclude=tuple(args.exclude), round_to=getattr(args, "round_to", "auto"),
        max_layer_ratio=getattr(args, "max_layer_ratio", 0.9), min_kernels=getattr(args, "min_kernels", 1),
        ranking=args.ranking, flops_lambda=args.flops_lambda, layer_norm=args.layer_norm,
        steps=getattr(args, "steps", 1), gradual_start=getattr(args, "gradual_start", None),
        gradual_gamma=getattr(args, "gradual_gamma", None), oracle_cost=args.oracle_cost,
        calibration_samples=args.calib_limit, batch_size=args.batch_size,
        recover=getattr(args, "recover", "none"), input_shapes=_input_shapes(args.input_shape),
        verify=not getattr(args, "no_verify", False), seed=getattr(args, "seed", 0), progress=sys.stderr.isatty())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxprune", description="Structured pruning of ONNX models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="list prunable layers, channel groups and frozen groups with reasons")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN")

    p = sub.add_parser("prune", help="remove the least important kernels and write a smaller model")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--criterion", default=None,
                   help="oracle (default with --calib), magnitude (default without), energy, energy_rel, l2, "
                        "random, bn_scale, activation_mean, activation_std")
    p.add_argument("--scores", help="per-kernel scores JSON written by `onnxprune score`")
    p.add_argument("--cost-aware", action="store_true", help="data-free criteria: rank by score per MAC saved")
    _add_target_args(p)
    _add_calib_args(p)
    _add_oracle_args(p)
    p.add_argument("--recover", choices=["auto", "lsq", "bias", "none"], default="auto",
                   help="after pruning: least-squares re-fit (default with --calib), bias compensation, or none")
    p.add_argument("--steps", type=int, default=1, help="iterative schedule: reach the target in N steps, re-scoring")
    p.add_argument("--gradual-start", type=float, help="N2D2 Gradual: first step's fraction removed")
    p.add_argument("--gradual-gamma", type=float, help="N2D2 Gradual: increment per step")
    p.add_argument("--save-plan", help="write the plan (kernels removed) as JSON")
    p.add_argument("--report", help="write the report as .json or .md")
    p.add_argument("--no-verify", action="store_true", help="skip the exactness check (not recommended)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("score", help="oracle (or other) scores of every prunable kernel, saved for reuse")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="scores .json to write")
    p.add_argument("--criterion", default="oracle")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN")
    _add_calib_args(p)
    _add_oracle_args(p)

    p = sub.add_parser("apply", help="apply a saved plan")
    _add_model_args(p)
    p.add_argument("--plan", required=True, help="plan JSON from `prune --save-plan`")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--no-verify", action="store_true")

    p = sub.add_parser("demo", help="prune the embedded digits CNN end to end")
    p.add_argument("-o", "--output", help="where to write the pruned demo model (default: a temp folder)")
    p.add_argument("--target-macs", type=float, default=0.5)

    try:
        from .sparsity.cli import add_sparsify_parser
    except ImportError:  # pragma: no cover - package always ships it
        add_sparsify_parser = None
    if add_sparsify_parser is not None:
        add_sparsify_parser(sub)
    return parser


def _cmd_inspect(args) -> int:
    from .api import inspect
    rep = inspect(args.model, _input_shapes(args.input_shape), args.exclude)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    from .report import _fmt
    rows = [("layer", "op", "kernels", "prunable", "MACs", "params", "group")]
    for l in rep.layers:
        rows.append((l.name, l.op, str(l.kernels), str(l.prunable_kernels), f"{l.macs:,}", f"{l.params:,}",
                     str(l.group) if l.group is not None else "-"))
    print(_fmt(rows))
    print()
    grows = [("group", "units", "kernels", "layers", "status")]
    for g in rep.groups:
        layers = g.layers[0] + (f" (+{len(g.layers) - 1})" if len(g.layers) > 1 else "")
        grows.append((str(g.id), str(g.units), str(g.kernels), layers,
                      "prunable" if g.frozen_reason is None else f"frozen: {g.frozen_reason}"))
    print(_fmt(grows))
    print()
    print(f"input shapes probed: {rep.input_shapes}")
    print(f"prunable_conv_num: {rep.prunable_conv_num}")
    print(f"prunable_kernel_num: {rep.prunable_kernel_num} of {rep.total_kernels} kernels")
    print(f"MACs per sample: {rep.macs:,}   params: {rep.params:,}")
    return 0


def _write_report(report, path: Optional[str]) -> None:
    if not path:
        return
    p = Path(path)
    if p.suffix == ".md":
        p.write_text(report.markdown())
    else:
        p.write_text(json.dumps(report.to_dict(), indent=2, default=str))


def _cmd_score(args) -> int:
    from .api import kernel_scores
    from .pipeline import load_calibration, score_units, _input_shapes_from
    from .prepare import prepare
    from .graph.io import load_model
    from .scores_io import save_scores
    config = _config(args, args.criterion)
    calibration = None
    if args.calib:
        calibration = load_calibration(args.calib, load_model(args.model), preprocess=_preprocess(args),
                                       batch_size=args.batch_size, limit=args.calib_limit)
    p = prepare(args.model, _input_shapes_from(calibration, config.input_shapes), args.exclude)
    scores = score_units(p, config, calibration)
    save_scores(args.output, kernel_scores(p, scores),
                {"criterion": args.criterion, "samples": len(calibration) if calibration else 0,
                 "oracle_cost": args.oracle_cost if args.criterion == "oracle" else None})
    print(f"scored {len(scores)} prunable units of {len(p.analysis.prunable_layers)} layers"
          + (f" on {len(calibration)} samples" if calibration else "") + f"; wrote {args.output}")
    return 0


def _cmd_prune(args) -> int:
    criterion = args.criterion or ("oracle" if args.calib else "magnitude")
    if args.calib or args.scores or criterion not in ("magnitude", "l1", "l2", "random"):
        from .pipeline import run_pruning
        from .api import scores_from_kernels
        config = _config(args, criterion)
        scores = None
        prepared = None
        if args.scores:
            from .prepare import prepare
            from .scores_io import load_scores
            prepared = prepare(args.model, config.input_shapes, config.nodes_to_exclude)
            scores = scores_from_kernels(prepared, load_scores(args.scores))
        res = run_pruning(args.model, args.output, args.calib, config,
                          preprocess=_preprocess(args) if args.calib else None, scores=scores, prepared=prepared)
        return _print_result(res, args)
    from .api import prune_model
    res = prune_model(args.model, args.output, criterion=criterion, percentage=args.percentage,
                      target_macs=args.target_macs, target_params=args.target_params, exclude=args.exclude,
                      round_to=args.round_to, max_layer_ratio=args.max_layer_ratio, min_kernels=args.min_kernels,
                      cost_aware=args.cost_aware, input_shapes=_input_shapes(args.input_shape),
                      verify=not args.no_verify, seed=args.seed)
    return _print_result(res, args)


def _print_result(res, args) -> int:
    if getattr(args, "save_plan", None):
        res.plan.save(args.save_plan)
    _write_report(res.report, getattr(args, "report", None))
    print(res.report.table())
    print(f"wrote {res.output_path}")
    return 0


def _cmd_apply(args) -> int:
    from .api import apply_plan
    res = apply_plan(args.model, args.plan, args.output, input_shapes=_input_shapes(args.input_shape),
                     verify=not args.no_verify)
    return _print_result(res, args)


def _cmd_demo(args) -> int:
    from .demo import run_demo
    print(run_demo(args.output, target_macs=args.target_macs))
    return 0


COMMANDS = {"inspect": _cmd_inspect, "prune": _cmd_prune, "score": _cmd_score, "apply": _cmd_apply, "demo": _cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handler = COMMANDS.get(args.command)
    if handler is None:
        from .sparsity.cli import run_sparsify
        handler = run_sparsify
    try:
        return int(handler(args) or 0)
    except OnnxPruneError as exc:
        print(f"onnxprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnxprune: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
