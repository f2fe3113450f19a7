"""Issue 25: attention heads as units — a tiny BERT-style encoder at half its heads, exports, PP-OCRv4's recognizer.

1. A 4-layer encoder built in code (D=256, 8 heads of 32, MLP 1024, T=128, pre-LayerNorm, Erf GELU):
   half the heads of every layer removed (lowest L1), exactness verified, onnxruntime CPU latency of
   dense and pruned timed interleaved at batch 1 and 8.
2. The same kind of encoder written in PyTorch (HF-BERT style attention) and exported with the legacy and
   the dynamo exporter (skipped without torch; dynamo needs onnxscript): heads found, exact at half.
3. PP-OCRv4 recognizer (../shared): heads found by inspect; data-free L1 pruning at 70% of the MACs.

Run: python benchmarks/attention.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

from common import REPO, SHARED, Timer, header, table, write_section
import onnxprune
from onnxprune.pruning.api import build_pruned
from onnxprune.latency.timing import LatencySettings, time_against_dense
from onnxprune.pruning.prepare import prepare
from onnxprune.scoring.registry import score

sys.path.insert(0, str(REPO / "tests"))
from attention_builders import Encoder, torch_encoder  # noqa: E402 - the test suite's builders

LAYERS, T, D, H, FFN = 4, 128, 256, 8, 1024


def encoder_in_code() -> onnx.ModelProto:
    e = Encoder(T=T, D=D, H=H, seed=0)
    x = "x"
    for _ in range(LAYERS):
        x = e.b.op("Add", [x, e.attention(e.layer_norm(x))])
        x = e.b.op("Add", [x, e.mlp(e.layer_norm(x), hidden=FFN)])
    return e.build(x)


def half_heads(p) -> list[int]:
    """The lower-L1 half of every head group."""
    l1 = score("l1", p.analysis)
    removed = []
    for g in p.analysis.groups:
        if g.heads_of and not g.frozen:
            removed += sorted(g.units, key=lambda r: l1[r])[:len(g.units) // 2]
    return removed


def heads_row(name: str, model: onnx.ModelProto, shapes=None) -> tuple[dict, onnx.ModelProto, object]:
    p = prepare(model, shapes)
    groups = [g for g in p.analysis.groups if g.heads_of]
    removed = half_heads(p)
    rng = np.random.default_rng(0)
    feeds = [{k: rng.standard_normal(s).astype(np.float32) for k, s in p.with_batch(2).items()}]
    with Timer() as t:
        pruned, ver = build_pruned(p, removed, extra_feeds=feeds)
    macs = p.cost.evaluate(np.array(removed, dtype=np.int64))[0]
    return ({"model": name, "head groups (prunable)": f"{len(groups)} ({sum(not g.frozen for g in groups)})",
             "heads": sum(len(g.units) for g in groups), "removed": len(removed),
             "MACs kept": f"{macs / p.cost.dense_macs:.1%}", "max rel. error vs masked reference": f"{ver.max_rel_error:.1e}",
             "surgery s": f"{t.seconds:.1f}"}, pruned, p)


def main() -> None:
    rows, speed = [], []
    row, pruned, p = heads_row(f"encoder in code ({LAYERS}x, D={D}, {H} heads, T={T})", encoder_in_code())
    rows.append(row)
    dense = p.model
    for batch in (1, 8):
        settings = LatencySettings(provider="CPUExecutionProvider", batch=batch, threads=1, rounds=9, runs=3)
        feed = {"x": np.random.default_rng(1).standard_normal((batch, T, D)).astype(np.float32)}
        got = time_against_dense(dense, pruned, feed, settings)
        speed.append({"batch": batch, "dense": got.dense.text(), "half heads": got.pruned.text(),
                      "speed-up": f"{got.speedup:.2f}x"})
    for exporter in ("legacy", "dynamo"):
        exported = torch_encoder(layers=2, T=16, D=D, H=H, ffn=FFN, exporter=exporter)
        if exported is not None:
            rows.append(heads_row(f"PyTorch {exporter} export (2x, T=16)", exported, {"x": (1, 16, D)})[0])
    rec = SHARED / "models" / "ppocrv4_rec.onnx"
    notes = ""
    if rec.exists():
        rows.append(heads_row("PP-OCRv4 recognizer", onnx.load(str(rec)), {"x": (1, 3, 48, 320)})[0])
        res = onnxprune.prune_model(rec, target_macs=0.7, criterion="l1", input_shapes={"x": [1, 3, 48, 320]})
        heads = [g for g in prepare(rec, {"x": (1, 3, 48, 320)}).analysis.groups if g.heads_of]
        kept = [lc for lc in res.report.layers if lc.name in {name for g in heads for name in g.layers}]
        notes = (f"PP-OCRv4 recognizer, whole model, L1 data-free at 70% of the MACs: verified, max rel. error "
                 f"{res.verification.max_rel_error:.1e}; QKV widths after: "
                 + ", ".join(f"{k.name} {k.after}/{k.before}" for k in kept) + ".\n")
    text = header("Attention heads (issue 25)") + "\n" + table(rows, list(rows[0])) + "\n"
    text += ("onnxruntime CPU, 1 thread, the encoder in code, dense vs half its heads (Q, K, V, W_o and both "
             "attention products halved; the MLP untouched), timed interleaved (median of 9 rounds, best of 3):\n\n")
    text += table(speed, list(speed[0])) + "\n" + notes
    print(text)
    write_section("attention", text)


if __name__ == "__main__":
    main()
