"""``onnxprune sparsify``: the command line of unstructured sparsity.

Only this module prints. It raises what the library raises: ``onnxprune.cli.main``
turns every OnnxPruneError into one line on stderr and exit code 2, as for
every verb. Calibration data comes through the same flags as ``prune``
(``--calib`` and the preprocessing flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import InvalidArgumentError
from ..graph.io import check_output_path
from ..report.document import text
from ..report.sparsify import SparsifyReport, info_document
from .args import _add_calib_args, _preprocess
from .output import check_report_target, write_report
from ..sparsity.api import save_masks, sparsify, sparsity_info
from ..sparsity.config import FILLERS, SCOPES, SparsifyConfig
from ..sparsity.results import SparsifyResult

logger = logging.getLogger(__name__)

_D = SparsifyConfig()  # the flags' defaults are the config's


def _norm_order(text: str) -> float:
    if text.lower() in ("inf", "infinity"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--n must be a number or 'inf', got {text!r}") from None


def add_sparsify_parser(subparsers: Any) -> None:
    """Register ``sparsify`` on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "sparsify", help="set a fraction of the Conv/Gemm/MatMul weights to zero (unstructured sparsity)",
        description="Zero a fraction of the weights (N2D2 / torch.nn.utils.prune style), verify the result in "
                    "onnxruntime and store ONNX sparse tensors where that makes the file smaller.",
    )
    p.add_argument("model", help="input .onnx model (never modified)")
    p.add_argument("-o", "--output", help="output .onnx model")
    p.add_argument("--info", action="store_true", help="print per-layer sparsity and the history of MODEL, then exit")
    p.add_argument("--threshold", type=float, default=None,  # None: not given (it conflicts with --masks)
                   help=f"fraction of weights (ln: of slices) zero afterwards, in [0, 1); default {_D.threshold:g}")
    p.add_argument("--filler", choices=FILLERS, default=_D.filler, help="how to pick the zeros (default %(default)s)")
    p.add_argument("--scope", choices=SCOPES, default=_D.scope,
                   help="threshold per layer or over all layers (torch's global_unstructured; default %(default)s)")
    p.add_argument("--steps", type=int, default=_D.steps,
                   help="reach the threshold in N equal steps, re-fitting between (default %(default)s)")
    p.add_argument("--gradual-start", type=float, default=_D.gradual_start, help="N2D2 Gradual: the first step's threshold")
    p.add_argument("--gradual-gamma", type=float, default=_D.gradual_gamma,
                   help="N2D2 Gradual: threshold increment per step")
    p.add_argument("--delta", type=float, default=_D.delta,
                   help="iternonstruct step: zero |w| <= k*delta (default %(default)s)")
    p.add_argument("--n", type=_norm_order, default=_D.n,
                   help="norm order of the ln filler (number or inf; default %(default)s)")
    p.add_argument("--dim", type=int, default=_D.dim,
                   help="axis whose slices the ln filler removes (default %(default)s)")
    p.add_argument("--relative", action="store_true",
                   help="threshold is a fraction of the weights still non-zero (torch's PruningContainer)")
    p.add_argument("--op-types", default=",".join(_D.op_types),
                   help="comma-separated op types whose weights are pruned (Conv,ConvTranspose,Gemm,MatMul)")
    p.add_argument("--exclude", action="append", default=None, metavar="NAME",
                   help="node or weight name (glob allowed) to leave dense; repeat or separate by commas")
    p.add_argument("--importance", metavar="NPZ", help="importance scores per weight name (torch's importance_scores)")
    p.add_argument("--masks", metavar="NPZ", help="explicit masks per weight name, 1 = keep (custom_from_mask)")
    p.add_argument("--save-masks", metavar="NPZ", help="write the resulting masks per weight name")
    _add_calib_args(p)
    p.add_argument("--samples", dest="calib_limit", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="alias of --calib-limit: calibration samples the re-fit uses")
    p.add_argument("--no-refit", action="store_true", help="do not re-fit even with --calib")
    p.add_argument("--dense", action="store_true",
                   help="store ordinary dense initializers (masks made permanent, torch's remove)")
    p.add_argument("--seed", type=int, default=_D.seed,
                   help="seed of the random filler and of the re-fit sampling (default %(default)s)")
    p.add_argument("--report", metavar="FILE|-", help="also write the report: .md, .json or .html by the extension")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (the report's figures) on stdout instead of the tables")
    p.set_defaults(handler=run_sparsify)


def run_sparsify(args: argparse.Namespace) -> int:
    """Run ``sparsify`` (or ``--info``) from parsed arguments; returns the exit code."""
    if args.info:
        print(text(info_document(sparsity_info(args.model))))
        return 0
    if not args.output:
        raise InvalidArgumentError("give the output file with -o OUT (or use --info to inspect MODEL)")
    if args.masks and args.threshold is not None:
        raise InvalidArgumentError("--masks gives the masks explicitly; drop --threshold (or drop --masks)")
    exclude = tuple(x for item in (args.exclude or []) for x in item.split(",") if x)
    config = SparsifyConfig(
        threshold=_D.threshold if args.threshold is None else args.threshold, filler=args.filler, scope=args.scope,
        steps=args.steps, gradual_start=args.gradual_start, gradual_gamma=args.gradual_gamma, delta=args.delta, n=args.n, dim=args.dim,
        relative=args.relative, op_types=args.op_types, nodes_to_exclude=exclude, seed=args.seed, dense=args.dense,
        refit=not args.no_refit, refit_samples=args.calib_limit,
    )
    if args.save_masks:
        check_output_path(args.save_masks, args.model, args.output)
    check_report_target(args)
    result = sparsify(args.model, args.output, config, args.calib, masks=args.masks,
                      importance_scores=args.importance, preprocess=_preprocess(args))
    report = sparsify_report(result, _file_bytes(args.model))
    write_report(report, args.report, f"onnxprune sparsify: {Path(args.model).name} -> {Path(args.output).name}", args)
    masks = save_masks(result.masks, args.save_masks) if args.save_masks else None
    if args.json:
        print(json.dumps({**report.to_dict(), "exit_code": 0, "masks": str(masks) if masks else None}, default=str))
        return 0
    to = sys.stderr if args.report == "-" else sys.stdout
    if args.report != "-":
        print(report.table())
    print(f"wrote {result.output_path}", file=to)
    if masks:
        print(f"masks: {len(result.masks)} written to {masks}", file=to)
    return 0


def _file_bytes(path: str) -> Optional[int]:
    """The model file's size; None when weights live in external data (the comparison would mislead)."""
    from ..graph.io import has_external_data
    return None if has_external_data(path) else Path(path).stat().st_size


def sparsify_report(result: SparsifyResult, input_bytes: Optional[int] = None) -> SparsifyReport:
    """The run's one report (terminal, --report, --json); ``input_bytes``: the input model's size, to say why the
    written file is not smaller when it is not."""
    from ..sparsity.history import METADATA_KEY
    record = sum(len(p.key) + len(p.value) for p in result.model.metadata_props if p.key == METADATA_KEY)
    return SparsifyReport(result, input_bytes, (METADATA_KEY, record))
