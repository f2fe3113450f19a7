"""Argument groups every verb shares (model, targets, calibration data, oracle) and their parsing.

One definition per group, so ``prune``, ``score`` and ``sparsify`` take exactly the same
calibration flags and build the same Preprocess from them.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..config import ALLOCATIONS, DEFAULT_PERCENTAGE, ORACLE_COSTS, RANKINGS, RECOVERY_MODES, default
from ..errors import InvalidArgumentError
from ..executors import EXECUTORS


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


EXCLUDE_HELP = "layer name or fnmatch pattern whose channel group is left alone (repeatable)"


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
    t.add_argument("--percentage", type=float,
                   help=f"share of prunable kernels REMOVED, 0-100 (default {DEFAULT_PERCENTAGE:g}); the --target-* "
                        "flags give the share KEPT, 0-1")
    t.add_argument("--target-macs", type=float, help="keep at most this fraction of the MACs, 0-1, e.g. 0.5")
    t.add_argument("--target-params", type=float, help="keep at most this fraction of the parameters, 0-1")
    t.add_argument("--target-latency", type=float,
                   help="keep at most this fraction (0-1) of the dense model's latency, measured on --latency-provider "
                        "at --latency-batch with --latency-threads (widths chosen from a measured table)")
    add_constraint_args(p)
    p.add_argument("--allocation", default=default("allocation"), choices=ALLOCATIONS,
                   help="how a MAC/parameter budget is shared among channel groups: greedy (one global order of "
                        "unit scores; the default for the oracle and without data), sensitivity (each group's "
                        "output distortion measured at a few widths after least squares, then a knapsack; the "
                        "default for local criteria such as energy), spdy (sensitivity plus a search of "
                        "per-group weights by the joint distortion), block (judged at the re-fitted layers)")
    _add_latency_args(p)


def add_constraint_args(p: argparse.ArgumentParser) -> None:
    """--exclude, --round-to, --max-layer-ratio, --min-kernels (``prune`` and ``sweep``)."""
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=EXCLUDE_HELP)
    p.add_argument("--round-to", type=_round_to, default=default("round_to"), metavar="N|auto",
                   help="keep channel counts of each group multiples of N; auto (default): 8 for groups of 128+ "
                        "channels, 4 from 16, free below (fast widths for onnxruntime's CPU kernels)")
    p.add_argument("--max-layer-ratio", type=float, default=default("max_layer_ratio"),
                   help="never remove more than this fraction of one layer's kernels (default %(default)s)")
    p.add_argument("--min-kernels", type=int, default=default("min_kernels"),
                   help="kernels every layer keeps at least (default %(default)s)")


def _add_recover_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recover", choices=RECOVERY_MODES, default=default("recover"),
                   help="after pruning: least-squares re-fit (auto: with calibration data), bias compensation, none, or "
                        "distill: least squares, then fine-tuning against the dense model on the calibration rows, "
                        "kept when it beats least squares on the held-back rows (pip install \"onnxprune[distill]\"; "
                        "default %(default)s)")


def _add_latency_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("latency (with --target-latency)")
    g.add_argument("--latency-provider", help="onnxruntime execution provider to time on (default: CUDA when "
                                              "available, else CPU), e.g. CPUExecutionProvider")
    g.add_argument("--latency-batch", type=int, default=default("latency_batch"),
                   help="batch size latency is measured at (default %(default)s)")
    g.add_argument("--latency-threads", type=int, default=default("latency_threads"),
                   help="intra-op threads latency is measured with (default %(default)s: 0 is onnxruntime's choice)")
    g.add_argument("--latency-cache", metavar="DIR",
                   help="where measured latency tables are kept (default ~/.cache/onnxprune/latency)")


def _add_calib_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration data")
    g.add_argument("--calib", help="folder of images, or .npy/.npz (uint8 NHWC images or float model inputs)")
    g.add_argument("--calib-limit", type=int, default=default("calibration_samples"),
                   help="calibration samples to use, spread evenly over the folder or file (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=default("batch_size"),
                   help="samples per onnxruntime run when scoring and re-fitting (default %(default)s; a model that "
                        "fixes its batch size is calibrated at that size)")
    g.add_argument("--size", help="HxW the images are brought to (default: the model's input size)")
    g.add_argument("--resize", type=int, help="resize the shorter side to this, then center-crop to --size")
    g.add_argument("--letterbox", nargs="?", const="bottom-right", choices=["bottom-right", "center"],
                   help="keep the aspect ratio: fit the image into --size and pad with grey 114 at the "
                        "bottom/right (default) or on both sides (center, Ultralytics' LetterBox); a model whose "
                        "metadata has imgsz needs no --size")
    g.add_argument("--scale", type=float, default=None, help="pixel scale (default 1/255)")
    g.add_argument("--mean", help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225")
    g.add_argument("--bgr", action="store_true", help="feed channels in BGR order")
    g.add_argument("--nhwc", action="store_true", help="the model takes NHWC input")
    g.add_argument("--grayscale", action="store_true", help="convert the images to one channel (1-channel models)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def _add_fidelity_args(p: argparse.ArgumentParser, floor: bool = True, evaluation: bool = True) -> None:
    from ..fidelity.tasks import DEFAULT_FLOORS, HEADLINES, TASKS
    g = p.add_argument_group("fidelity to the dense model (measured on calibration rows held back from scoring "
                             "and fitting, or on --eval)")
    g.add_argument("--task", default=default("task"), choices=list(TASKS),
                   help="what the outputs are to their user, which sets the oracle's cost and the fidelity "
                        "reported: " + ", ".join(f"{t}: {h.replace('_', ' ')}" for t, h in HEADLINES.items())
                        + " (default auto: guessed from the output shapes and exporter metadata)")
    if evaluation:
        g.add_argument("--eval", metavar="DIR|FILE",
                       help="data to measure fidelity (and top-1 with labels) on instead of held-back calibration "
                            "rows")
    if floor:
        g.add_argument("--min-fidelity", type=_fraction, default=default("min_fidelity"), metavar="F",
                       help="floor of that fidelity (default per task: "
                            + ", ".join(f"{t} {v:g}" for t, v in DEFAULT_FLOORS.items())
                            + "; 0: none): below it nothing is written and the exit code is 3")
        g.add_argument("--back-off", action="store_true",
                       help="below the floor, search the smallest step back toward dense that meets it (bisection "
                            "of the budget, reusing the scores) and write that")


def _add_oracle_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("oracle")
    g.add_argument("--oracle-cost", default=default("oracle_cost"), choices=ORACLE_COSTS,
                   help="label-free output distortion (auto: KL for logits/probabilities, else normalised MSE), "
                        "or with labels the signed (loss) / absolute (abs) change of cross-entropy")
    g.add_argument("--ranking", default=default("ranking"), choices=RANKINGS,
                   help="order of removal: per_mac (score per MAC saved), raw score, or flops_reg (score - "
                        "lambda*MACs); default %(default)s: per_mac, raw for a data-free run (no --calib, no --scores)")
    g.add_argument("--flops-lambda", type=float, default=default("flops_lambda"),
                   help="lambda of --ranking flops_reg: score minus lambda times the MACs a unit saves "
                        "(default %(default)s)")
    g.add_argument("--layer-norm", action="store_true", help="per-layer L2 normalisation of scores")
    g.add_argument("--executor", default=default("executor"), choices=EXECUTORS,
                   help="where the oracle runs: local CPU workers (default) or a Ray cluster (pip install "
                        "\"onnxprune[ray]\"); the scores are the same")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join, as for ray.init (e.g. auto, or ray://head:10001); "
                        "default: start a local Ray instance")


_PREPROCESS_FLAGS = ("size", "resize", "letterbox", "scale", "mean", "std", "bgr", "nhwc", "grayscale")


def _preprocess(args):
    """The Preprocess the flags describe; None for a data file given without any preprocessing flag.

    Float model inputs in an .npy/.npz are fed unchanged, so they must not get
    a Preprocess by default (uint8 images in such a file get the default one,
    with a warning, inside ``open_calibration``); a folder of images always
    needs one. A flag given with float inputs is an error there, not ignored.
    """
    from pathlib import Path

    from ..calibration import Preprocess
    calib = getattr(args, "calib", None)
    given = any(getattr(args, f, None) not in (None, False) for f in _PREPROCESS_FLAGS)
    if not given and (calib is None or not Path(calib).is_dir()):
        return None
    def floats(flag: str, text: Optional[str]):
        try:
            return tuple(float(v) for v in text.split(",")) if text else None
        except ValueError:
            raise InvalidArgumentError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0.5,0.5,0.5") from None
    size = None
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise InvalidArgumentError(f"--size {args.size!r}: expected HxW, e.g. 224x224") from None
        size = (h, w)
    kw = dict(size=size, resize=args.resize, scale=1 / 255 if args.scale is None else args.scale,
              channel_order="BGR" if args.bgr else "RGB", layout="NHWC" if args.nhwc else "NCHW",
              grayscale=args.grayscale, letterbox=getattr(args, "letterbox", None))
    if args.mean:
        kw["mean"] = floats("--mean", args.mean)
    if args.std:
        kw["std"] = floats("--std", args.std)
    return Preprocess(**kw)


def _add_distill_args(p: argparse.ArgumentParser) -> None:
    """The settings of ``--recover distill`` (:class:`onnxprune.distill.DistillSettings`); :func:`_distill` maps
    them into the config."""
    from ..distill.settings import DistillSettings
    d = DistillSettings()
    g = p.add_argument_group("distillation (with --recover distill; pip install \"onnxprune[distill]\")")
    g.add_argument("--distill-epochs", type=int, default=d.epochs,
                   help=f"passes over the calibration rows, fewer when --distill-time runs out (default {d.epochs})")
    g.add_argument("--distill-lr", type=float, default=d.lr,
                   help=f"Adam learning rate, cosine-decayed over the steps that fit the budget (default {d.lr:g})")
    g.add_argument("--distill-batch", type=int, default=d.batch, help=f"rows per training step (default {d.batch})")
    g.add_argument("--distill-time", type=float, default=d.time_s, metavar="SECONDS",
                   help=f"wall-clock budget of the fine-tuning in seconds (default {d.time_s:g})")
    g.add_argument("--distill-rows", type=int, default=d.rows, metavar="N",
                   help=f"calibration rows the fine-tuning may read beyond --calib-limit (default {d.rows}; scoring "
                        "and least squares keep theirs, the held-back rows are never trained on)")
    g.add_argument("--distill-augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="random-resized crops and flips of NCHW image inputs while fine-tuning (default on)")


def _distill(args):
    """The DistillSettings the flags describe (the defaults when the command has none of them)."""
    from ..distill.settings import DistillSettings
    d = DistillSettings()
    return DistillSettings(epochs=getattr(args, "distill_epochs", d.epochs), lr=getattr(args, "distill_lr", d.lr),
                           batch=getattr(args, "distill_batch", d.batch), time_s=getattr(args, "distill_time", d.time_s),
                           augment=getattr(args, "distill_augment", d.augment), seed=getattr(args, "seed", d.seed),
                           rows=getattr(args, "distill_rows", d.rows))
