"""Depth as a lever (issue 15, item 4): ResNet-56 with whole residual branches dropped vs narrowing only.

Oracle scores (KL of the logits) on 128 calibration images, whole-branch
drop scores (scoring/depth.py) on the same images, least-squares recovery
on 256 (as benchmarks/accuracy.py); top-1 on all 5,000 dev images; latency
at batch 1 and 32, onnxruntime CPU (2 threads), every model timed
interleaved with the dense one.

Rows: narrowing only (the default), ``--allow-block-removal`` (selection
mixes drops and narrowing), and drops only (the k branches of lowest drop
score per MAC saved, without recovery: re-fitting every layer after the
first dropped branch takes 10+ minutes a plan on a busy 2-core machine).

Run: python benchmarks/depth.py [--cache /tmp/resnet56_oracle128]
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from common import Timer, accuracy, cached, header, resnet56_setup, table, write_section
from onnxprune.latency.timing import LatencySettings, time_models
from onnxprune.pruning.pipeline import PruneConfig, run_pruning, score_units
from onnxprune.scoring.blocks import drop_scores
from onnxprune.allocation.selection import Constraints, Target, select

CACHE = None  # --cache PREFIX: reuse the oracle and drop scores of ResNet-56 between benchmark runs

BUDGETS = (0.5, 0.35)
DROP_ONLY = (6, 9, 13)


def lowest_drops(p, dscores: dict[int, float], k: int) -> list[int]:
    """Units of the k droppable groups with the lowest drop score per MAC saved."""
    dense = p.cost.dense_macs
    per_mac = {g: s / max(dense - p.cost.evaluate(np.array(p.analysis.groups[g].units))[0], 1)
               for g, s in dscores.items()}
    chosen = sorted(per_mac, key=per_mac.get)[:k]
    return [r for g in chosen for r in p.analysis.groups[g].units]


def main() -> None:
    global CACHE
    CACHE = sys.argv[sys.argv.index("--cache") + 1] if "--cache" in sys.argv else None
    p, cal_score, cal_fit, xd, yd = resnet56_setup()
    with Timer() as t_score:
        scores = cached(CACHE and CACHE + ".units.json",
                        lambda: score_units(p, PruneConfig(criterion="oracle"), cal_score))
    with Timer() as t_drop:
        dscores = cached(CACHE and CACHE + ".drops.json", lambda: drop_scores(p.analysis, cal_score.batches()))
    print(f"oracle {t_score.seconds:.0f} s, drop scores of {len(dscores)} branches {t_drop.seconds:.0f} s", flush=True)
    plans: dict[str, list[int]] = {}
    for budget in BUDGETS:
        for allow in (False, True):
            name = f"{budget:.0%} MACs, " + ("narrow + drop (--allow-block-removal)" if allow else "narrow only (default)")
            plans[name] = select(p.analysis, scores, Target(macs=budget), Constraints(allow_drop=allow),
                                 cost_aware=True, cost=p.cost, drop_scores=dscores)
    for k in DROP_ONLY:
        plans[f"drop {k} branches only"] = lowest_drops(p, dscores, k)
    models = {"dense": p.original}
    rows = []
    config = PruneConfig(criterion="oracle", recover="lsq", measure=False)
    for name, removed in plans.items():
        recover = not name.startswith("drop")  # drops only: the raw cost of dropping (least squares is slow there)
        with Timer() as t:
            res = run_pruning(p.original, None, None, replace(config, recover="lsq" if recover else "none"),
                              prepared=p, calibration=cal_fit, removed=removed)
        models[name] = res.model
        dropped = p.analysis.dropped_groups(removed)
        macs = p.cost.evaluate(np.array(removed, dtype=np.int64))[0] / p.cost.dense_macs
        rows.append({"plan": name, "MACs kept": f"{macs:.1%}", "branches dropped": len(dropped),
                     "convs": sum(1 for n in res.model.graph.node if n.op_type == "Conv"),
                     "recovery": "least squares" if recover else "none",
                     "top-1": f"{accuracy(res.model, xd, yd):.1%}", "prune + recovery (s)": f"{t.seconds:.0f}"})
        print(rows[-1], flush=True)
    dense_acc = accuracy(p.original, xd, yd)
    rng = np.random.default_rng(0)
    lat = {}
    for batch, rounds, runs in ((1, 20, 10), (32, 10, 3)):
        feed = {"input": rng.random((batch, 3, 32, 32), dtype=np.float32)}
        lat[batch] = {k: t.as_list() for k, t in time_models(models, feed, LatencySettings(rounds=rounds,
                                                                                          runs=runs)).items()}
    for row in rows:
        for batch in (1, 32):
            med, lo, hi = lat[batch][row["plan"]]
            d = lat[batch]["dense"][0]
            row[f"batch {batch} (ms, min-max)"] = f"{med:.2f} ({lo:.2f}-{hi:.2f}), {d / med:.2f}x"
    dense_row = {"plan": "dense", "MACs kept": "100%", "branches dropped": 0,
                 "convs": sum(1 for n in p.model.graph.node if n.op_type == "Conv"), "recovery": "",
                 "top-1": f"{dense_acc:.1%}", "prune + recovery (s)": ""}
    for batch in (1, 32):
        med, lo, hi = lat[batch]["dense"]
        dense_row[f"batch {batch} (ms, min-max)"] = f"{med:.2f} ({lo:.2f}-{hi:.2f})"
    rows.insert(0, dense_row)
    text = header("Depth as a lever: ResNet-56 with residual branches dropped")
    took = (lambda t: "read from --cache" if CACHE else f"{t.seconds:.0f} s")  # noqa: E731
    text += (f"\nOracle scores (KL of the logits) of every kernel on 128 CIFAR-10 calibration images "
             f"({took(t_score)}), whole-branch drop scores on the same images ({took(t_drop)} for "
             f"{len(dscores)} branches), least-squares recovery on 256 (the layers after a dropped branch are re-fitted "
             "too; the drops-only rows without recovery); top-1 on the 5,000 dev images. Widths `--round-to auto`. Latency: onnxruntime CPU, 2 threads; "
             "all models timed in turn, round after round (batch 1: 20 rounds of 10 runs, batch 32: 10 rounds of 3), "
             "each figure the median over rounds of the best run of a round, with the spread of the rounds; speed-up "
             "against the dense model timed in the same rounds. The machine was shared with other jobs.\n\n")
    text += table(rows, list(rows[0]))
    write_section("depth", text)


if __name__ == "__main__":
    main()
