"""Prune, then quantize (issue 15, item 5): dense / pruned x fp32 / int8, side by side.

ResNet-56: oracle scores on 128 CIFAR-10 calibration images, least squares
and int8 calibration on 256 (the same images), top-1 on the 5,000 dev
images. Pruned = 50% of the MACs, the default path (narrowing only) and
with ``--allow-block-removal``. Demo CNN: the demo's own run (oracle, 3
steps, 50% of the MACs, least squares on 256 calibration digits), int8
calibrated on the same digits, accuracy on its held-back digits.

int8: onnxruntime ``quantize_static``, QDQ, per-channel weights
(onnxprune.passes.quantize.QuantizePass). Latency: onnxruntime CPU, every
variant timed in turn, round after round.

Run: python benchmarks/quantize.py [--cache /tmp/resnet56_oracle128]
"""

from __future__ import annotations

import sys

import numpy as np

from common import Timer, accuracy, cached, header, resnet56_setup, table, write_section
from onnxprune.calibration.dataset import load_calibration
from onnxprune.latency.timing import LatencySettings, time_models
from onnxprune.demo import _prune_demo, demo_data, demo_files
from onnxprune.passes.quantize import QuantizePass
from onnxprune.pruning.pipeline import PruneConfig, run_pruning, score_units
from onnxprune.pruning.prepare import prepare
from onnxprune.scoring.blocks import drop_scores
from onnxprune.allocation.selection import Constraints, Target, select

CACHE = None  # --cache PREFIX: reuse the oracle and drop scores of ResNet-56 between benchmark runs


def rows_for(model_name: str, models: dict, x, y, feeds: dict, rounds: dict, notes: dict) -> list[dict]:
    lat = {b: {k: t.as_list() for k, t in time_models(models, f, LatencySettings(rounds=rounds[b][0],
                                                                               runs=rounds[b][1])).items()}
           for b, f in feeds.items()}
    rows = []
    for name, m in models.items():
        row = {"model": model_name, "variant": name, "size": f"{m.ByteSize() / 1e6:.3f} MB",
               "top-1": f"{accuracy(m, x, y):.1%}"}
        for b in feeds:
            med, lo, hi = lat[b][name]
            d = lat[b]["dense fp32"][0]
            row[f"batch {b} (ms, min-max)"] = f"{med:.2f} ({lo:.2f}-{hi:.2f})" + ("" if name == "dense fp32" else
                                                                                 f", {d / med:.2f}x")
        row["int8 fidelity (calibration batch)"] = notes.get(name, "")
        rows.append(row)
        print(row, flush=True)
    return rows


def quantized(models: dict, calib) -> tuple[dict, dict]:
    out, notes = dict(models), {}
    for name, m in models.items():
        result = QuantizePass(calib)(m)
        q = name.replace("fp32", "int8")
        out[q] = result.model
        fid = result.fidelity
        notes[q] = f"rel. L2 {fid['rel_l2']:.3f}, arg-max {fid.get('argmax_agreement', float('nan')):.1%}"
    return out, notes


def resnet56() -> list[dict]:
    p, cal_score, cal_fit, xd, yd = resnet56_setup()
    scores = cached(CACHE and CACHE + ".units.json",
                    lambda: score_units(p, PruneConfig(criterion="oracle"), cal_score))
    dscores = cached(CACHE and CACHE + ".drops.json", lambda: drop_scores(p.analysis, cal_score.batches()))
    models = {"dense fp32": p.original}
    config = PruneConfig(criterion="oracle", recover="lsq", measure=False)
    for label, allow in (("pruned 50% fp32", False), ("pruned 50% + drops fp32", True)):
        removed = select(p.analysis, scores, Target(macs=0.5), Constraints(allow_drop=allow), cost_aware=True,
                         cost=p.cost, drop_scores=dscores)
        models[label] = run_pruning(p.original, None, None, config, prepared=p, calibration=cal_fit,
                                    removed=removed).model
    with Timer() as t:
        models, notes = quantized(models, cal_fit)
    print(f"ResNet-56: quantized {len(models) // 2} models in {t.seconds:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    feeds = {b: {"input": rng.random((b, 3, 32, 32), dtype=np.float32)} for b in (1, 32)}
    return rows_for("ResNet-56", models, xd, yd, feeds, {1: (20, 10), 32: (10, 3)}, notes)


def demo() -> list[dict]:
    path, _ = demo_files()
    data = demo_data()
    pruned = _prune_demo(path, None, data, 0.5).model
    p = prepare(path)
    calib = load_calibration({"input": data["calib"][:256]}, p.original, batch_size=64)
    models, notes = quantized({"dense fp32": p.original, "pruned 50% fp32": pruned}, calib)
    feeds = {b: {"input": data["test"][:b]} for b in (1, 64)}
    return rows_for("demo CNN", models, data["test"], data["test_labels"], feeds, {1: (20, 10), 64: (10, 5)}, notes)


def main() -> None:
    global CACHE
    CACHE = sys.argv[sys.argv.index("--cache") + 1] if "--cache" in sys.argv else None
    write(resnet56() + demo())


def write(rows: list[dict]) -> None:
    from onnxprune.passes.quantize import cpu_quant_types
    act, reduce = cpu_quant_types()
    text = header("Prune, then quantize: dense / pruned x fp32 / int8")
    text += (f"\nint8: onnxruntime `quantize_static`, QDQ, per-channel int8 weights{' (7-bit)' if reduce else ''}, "
             f"{'uint8' if act == 'QUInt8' else 'int8'} activations (what onnxruntime advises for this CPU), MinMax "
             "calibration on the pruning's calibration data (ResNet-56: 256 CIFAR-10 training images; demo: 256 "
             "calibration digits), after onnxruntime's pre-processing (`quant_pre_process`). Pruned: oracle, "
             "score per MAC, 50% of the MACs, `--round-to auto`, least squares (ResNet-56 one-shot; demo: its own "
             "3-step run); `+ drops`: with `--allow-block-removal`. top-1 on data never calibrated on (CIFAR-10 dev, "
             "5,000 images; the demo's held-back digits). Latency: onnxruntime CPU, 2 threads; all variants of a "
             "model timed in turn, round after round; median over rounds of the best run of a round, with the "
             "spread of the rounds; speed-up against dense fp32 in the same rounds. The machine was shared with "
             "other jobs. Fidelity: the int8 model against its fp32 model on the last calibration batch (what "
             "QuantizePass reports).\n\n")
    cols = list(dict.fromkeys(c for r in rows for c in r))
    text += table(rows, cols)
    write_section("quantize", text)


if __name__ == "__main__":
    main()
