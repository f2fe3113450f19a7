"""Issue 17's float16 table: every shared model and its float16 versions pruned at 30%, exactness verified.

float16 versions are made with onnxconverter_common.float16.convert_float_to_float16, without and
with keep_io_types (a Cast island: float16 body, float32 inputs/outputs). Each is pruned data-free
(layer-normalised L1 magnitude, --percentage 30); the table gives prunable convs, the verified largest
output difference to the masked reference (relative to the output's range), file sizes and the
latency of the pruned models (batch 1, onnxruntime CPU, medians of interleaved rounds). One
calibrated run (oracle + least squares on ResNet-20, float32 vs float16) checks the data-aware path.

Run: python benchmarks/fp16_models.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

from core_models import SHAPES  # the input sizes the core table probes the dynamic models at
from common import SHARED, Timer, accuracy, cifar, header, table, write_section
import onnxprune
from onnxprune.graph.probe import input_dtypes
from onnxprune.runtime import make_session

VARIANTS = ("fp32", "fp16", "fp16 io")


def to_half(model: onnx.ModelProto, keep_io: bool) -> onnx.ModelProto:
    from onnxconverter_common import float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(model, keep_io_types=keep_io)


def latencies(models: dict[str, onnx.ModelProto], shapes: dict, rounds: int) -> dict[str, tuple[float, float, float]]:
    """(median, min, max) over rounds of each round's median ms; the models alternate within every round."""
    sessions, feeds = {}, {}
    rng = np.random.default_rng(0)
    for name, m in models.items():
        sessions[name] = make_session(m, ["CPUExecutionProvider"])
        dts = input_dtypes(m)
        feeds[name] = {k: rng.uniform(-1, 1, v).astype(dts[k]) for k, v in shapes.items()}
        for _ in range(2):
            sessions[name].run(None, feeds[name])
    per: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name in models:
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                sessions[name].run(None, feeds[name])
                times.append((time.perf_counter() - t0) * 1e3)
            per[name].append(float(np.median(times)))
    return {k: (float(np.median(v)), min(v), max(v)) for k, v in per.items()}


def model_rows(rounds: int, tmp: Path) -> list[dict]:
    rows = []
    for path in sorted((SHARED / "models").glob("*.onnx")):
        fp32 = onnx.load(str(path))
        shapes = SHAPES.get(path.name)
        sources = {"fp32": fp32, "fp16": to_half(fp32, False), "fp16 io": to_half(fp32, True)}
        pruned, row = {}, {"model": path.name}
        for variant, model in sources.items():
            out = tmp / f"{path.stem}-{variant.replace(' ', '_')}.onnx"
            rep = onnxprune.inspect(model, input_shapes=shapes)
            with Timer() as t:
                res = onnxprune.prune_model(model, out, percentage=30, input_shapes=shapes)
            pruned[variant] = res.model
            row[f"prunable convs {variant}"] = rep.prunable_conv_num
            row[f"max rel. err {variant}"] = f"{res.verification.max_rel_error:.1e}"
            row[f"MB {variant}"] = f"{out.stat().st_size / 1e6:.2f}"
            row[f"s {variant}"] = f"{t.seconds:.1f}"
            row[f"removed {variant}"] = res.report.removed_kernels
        probe = {k: tuple(v) for k, v in (shapes or {}).items()} or {
            k: (1,) + tuple(v[1:]) for k, v in onnxprune.inspect(fp32).input_shapes.items()}
        lat = latencies(pruned, probe, rounds)
        for variant, (med, lo, hi) in lat.items():
            row[f"ms {variant}"] = f"{med:.2f} ({lo:.2f}-{hi:.2f})"
        rows.append(row)
        print(row, flush=True)
    return rows


def oracle_row(n_calib: int, n_dev: int | None) -> list[dict]:
    """ResNet-20, oracle + least squares at 30%: float32 and float16 (calibration and evaluation split)."""
    path = SHARED / "models" / "resnet20_cifar10.onnx"
    fp32 = onnx.load(str(path))
    xc, _ = cifar("calib")
    xc = xc[::max(1, len(xc) // n_calib)][:n_calib]  # the file is sorted by class: every k-th image
    xd, yd = cifar("dev", n_dev)
    rows = []
    for variant, model in (("fp32", fp32), ("fp16", to_half(fp32, False)), ("fp16 io", to_half(fp32, True))):
        half_in = input_dtypes(model)["input"] == np.float16
        with Timer() as t:
            res = onnxprune.prune_static(model, None, {"input": xc},
                                         config=onnxprune.PruneConfig(percentage=30, criterion="oracle"))
        dev = xd.astype(np.float16) if half_in else xd
        rows.append({"variant": variant, "dense top-1": f"{accuracy(model, dev, yd):.1%}",
                     "pruned top-1": f"{accuracy(res.model, dev, yd):.1%}",
                     "MACs kept": f"{res.report.after.macs / res.report.before.macs:.1%}",
                     "exactness before recovery": f"{res.verification.max_rel_error:.1e}",
                     "recovery": res.report.extra.get("recovery", "-"), "time (s)": f"{t.seconds:.1f}"})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--dev", type=int, default=None, help="test images (default: all 5,000; they are sorted by class)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = model_rows(args.rounds, Path(tmp))
    orows = oracle_row(args.calib, args.dev)
    text = header("float16 models: every shared model and its float16 versions at 30% (issue 17)")
    text += ("\nfp16 = onnxconverter_common.float16.convert_float_to_float16(model); fp16 io = the same with "
             "keep_io_types=True (float16 body between Casts, float32 inputs/outputs). Data-free, "
             "layer-normalised L1 magnitude, `percentage=30`; the same kernels are removed in all three "
             "(column removed). max rel. err = largest output difference of the pruned model to the masked "
             "reference on random inputs in [-1, 1), relative to the output's range (the float16 tolerance is "
             "8 float16 eps = 7.8e-3). MB = pruned file size. ms = latency of the pruned model, batch 1 at the "
             "probed size, onnxruntime CPU: median over rounds of each round's median of 5 runs, the three "
             "models alternating within every round, (min-max over rounds). The machine was shared with other "
             "jobs, so latencies are noisy.\n\n")
    cols = ["model", "prunable convs fp32", "prunable convs fp16", "prunable convs fp16 io", "removed fp32",
            "removed fp16", "removed fp16 io", "max rel. err fp32", "max rel. err fp16", "max rel. err fp16 io",
            "MB fp32", "MB fp16", "MB fp16 io", "ms fp32", "ms fp16", "ms fp16 io"]
    text += table(rows, cols)
    text += (f"\nCalibrated: ResNet-20, oracle scores and least-squares recovery from {args.calib} CIFAR-10 "
             f"training images (`cifar10_calib.npz`, every {1000 // args.calib}th: the file is sorted by class), top-1 on {args.dev or 'all 5,000'} test images (`cifar10_dev.npz`, never "
             "calibrated on), 30% of the prunable kernels of the whole network (residual streams included).\n\n")
    text += table(orows, list(orows[0]))
    write_section("fp16-models", text)


if __name__ == "__main__":
    main()
