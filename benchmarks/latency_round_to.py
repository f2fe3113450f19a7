"""onnxruntime CPU latency of pruned models vs --round-to (channel counts multiples of N).

onnxruntime's CPU convolutions work on blocks of channels; odd channel counts
lose much of the MAC saving. Run: python benchmarks/latency_round_to.py
"""

from __future__ import annotations

import numpy as np

from common import SHARED, header, table, write_section
import onnxprune
from onnxprune.demo import demo_data, demo_files
from onnxprune.graph.io import load_model
from onnxprune.latency.timing import LatencySettings, time_models

ROUND_TOS = (1, 2, 4, 8, 16, "auto")


def interleaved_latency(models: dict, feed: dict, rounds: int, runs: int) -> dict:
    """Milliseconds per run of every model: the median over rounds of the best of ``runs`` runs.

    All sessions are timed in turn within each round (onnxprune.latency.timing), so a
    slow spell of a shared machine hits every model alike instead of one row of
    the table (back-to-back medians varied by 30% between identical models here).
    """
    return {k: t.median for k, t in time_models(models, feed, LatencySettings(rounds=rounds, runs=runs)).items()}


def main() -> None:
    rows = []
    demo_model, _ = demo_files()
    digits = demo_data()["test"]
    cases = {"demo_cnn.onnx (package)": (demo_model, digits[:1], digits[:32])}
    for name in ("resnet20_cifar10.onnx", "resnet56_cifar10.onnx"):
        cases[name] = (SHARED / "models" / name, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32),
                       np.random.default_rng(0).random((32, 3, 32, 32), dtype=np.float32))
    for name, (path, a1, a32) in cases.items():
        dense = load_model(path)
        x1, x32 = {"input": a1}, {"input": a32}
        results = {rt: onnxprune.prune_model(dense, target_macs=0.5, round_to=rt) for rt in ROUND_TOS}
        models = {"dense": dense, **{rt: r.model for rt, r in results.items()}}
        t1 = interleaved_latency(models, x1, rounds=20, runs=10)
        t32 = interleaved_latency(models, x32, rounds=10, runs=3)
        for rt, res in results.items():
            d1, d32, b1, b32 = t1["dense"], t32["dense"], t1[rt], t32[rt]
            rows.append({"model": name, "round-to": rt, "MACs kept": f"{res.report.after.macs / res.report.before.macs:.1%}",
                         "batch 1 (ms) dense -> pruned": f"{d1:.2f} -> {b1:.2f} ({d1 / b1:.2f}x)",
                         "batch 32 (ms) dense -> pruned": f"{d32:.1f} -> {b32:.1f} ({d32 / b32:.2f}x)",
                         "widths": " ".join(str(lc.after) for lc in res.report.layers)})
            print(rows[-1], flush=True)
    text = header("Latency vs --round-to (onnxruntime CPU)")
    text += ("\nMagnitude pruning to 50% of the MACs; CPUExecutionProvider, 2 threads. Dense and every variant "
             "timed in turn, round after round (batch 1: 20 rounds of 10 runs; batch 32: 10 rounds of 3); each figure "
             "is the median over rounds of the best run in a round. Rows with the same widths are the same model timed "
             "twice: their spread is the noise left on this shared machine. auto (the default): multiples of 8 for groups of 128+ channels, "
             "4 from 16, free below. widths: kept kernels per layer.\n\n")
    text += table(rows, list(rows[0]))
    write_section("latency-round-to", text)


if __name__ == "__main__":
    main()
