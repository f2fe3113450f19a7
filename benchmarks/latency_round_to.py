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
from onnxprune.report import measure_latency


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
        d1, d32 = measure_latency(dense, x1, repeats=50), measure_latency(dense, x32, repeats=10)
        for rt in (1, 2, 4, 8, 16, "auto"):
            res = onnxprune.prune_model(dense, target_macs=0.5, round_to=rt)
            m = res.model
            b1, b32 = measure_latency(m, x1, repeats=50), measure_latency(m, x32, repeats=10)
            rows.append({"model": name, "round-to": rt, "MACs kept": f"{res.report.after.macs / res.report.before.macs:.1%}",
                         "batch 1 (ms) dense -> pruned": f"{d1:.2f} -> {b1:.2f} ({d1 / b1:.2f}x)",
                         "batch 32 (ms) dense -> pruned": f"{d32:.1f} -> {b32:.1f} ({d32 / b32:.2f}x)",
                         "widths": " ".join(str(lc.after) for lc in res.report.layers)})
            print(rows[-1], flush=True)
    text = header("Latency vs --round-to (onnxruntime CPU)")
    text += ("\nMagnitude pruning to 50% of the MACs; median of repeated runs, CPUExecutionProvider, 2 threads, "
             "dense and pruned measured back to back. auto (the default): multiples of 8 for groups of 128+ channels, "
             "4 from 16, free below. widths: kept kernels per layer.\n\n")
    text += table(rows, list(rows[0]))
    write_section("latency-round-to", text)


if __name__ == "__main__":
    main()
