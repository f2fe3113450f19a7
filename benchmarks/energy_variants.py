"""EfficientNet-Lite0: absolute vs relative activation energy, expansion channels only (issue 3).

``energy`` ranks a unit by the squared change it causes at its consumer;
``energy_rel`` divides that by the energy of the signal the change lands on
(the residual sum for blocks with a shortcut). Same split of the ImageNet
sample as accuracy.py (calibrate on the first 250 files, measure on the
other 250), same recovery data (the 250 and their mirror images).

Run: python benchmarks/energy_variants.py
"""

from __future__ import annotations

import numpy as np

from accuracy import HIDDEN_ONLY
from common import (SHARED, Timer, accuracy, header, imagenet_images, imagenet_split, table,
                    with_mirrors, write_section)
from onnxprune.graph.surgery import prune_channels
from onnxprune.passes.recover import recover
from onnxprune.pruning.pipeline import PruneConfig, load_calibration, plan_units, score_units
from onnxprune.pruning.prepare import prepare

BUDGETS = (0.85, 0.80, 0.70)


def main() -> None:
    cf, _, ef, el = imagenet_split()
    xc, xe = imagenet_images(cf), imagenet_images(ef)
    p = prepare(SHARED / "models" / "efficientnet_lite0.onnx", exclude=HIDDEN_ONLY)
    dense = accuracy(p.model, xe, el)
    cal = load_calibration({"input": xc}, p.original, batch_size=25)
    cal_fit = load_calibration({"input": with_mirrors(xc)}, p.original, batch_size=25, limit=2 * len(xc))
    rows = []
    for crit in ("energy", "energy_rel"):
        with Timer() as t:
            scores = score_units(p, PruneConfig(criterion=crit), cal)
        for round_to in ("auto", 1):
            for budget in BUDGETS:
                cfg = PruneConfig(criterion=crit, target_macs=budget, round_to=round_to)
                removed = plan_units(p, cfg, None, scores=scores)
                pruned = prune_channels(p.analysis, removed)
                macs, _ = p.cost.evaluate(np.array(removed, dtype=np.int64))
                row = {"criterion": crit, "round-to": str(round_to), "scoring (s)": f"{t.seconds:.0f}",
                       "MACs kept": f"{macs / p.cost.dense_macs:.1%}",
                       "top-1, no recovery": f"{accuracy(pruned, xe, el):.1%}"}
                for rec in ("bias", "lsq"):
                    row[f"top-1, {rec}"] = f"{accuracy(recover(p, removed, pruned, cal_fit, rec)[0], xe, el):.1%}"
                rows.append(row)
                print(row, flush=True)
    text = header("EfficientNet-Lite0: absolute vs relative activation energy (issue 3)")
    text += (f"\nExpansion channels only (the 'hidden' scope of the accuracy table), score per MAC saved; "
             f"round-to auto (channel counts onnxruntime runs fast) and 1 (any count, as MEASURED.md's prototype); "
             f"calibration: the first 250 files of the ImageNet sample, top-1 on the other 250 (dense {dense:.1%}); "
             f"bias and least squares fitted on the 250 and their mirror images, each mirror next to its original so "
             f"that the held-back fifth that picks the ridge holds neither; ridge chosen per layer.\n\n")
    text += table(rows, list(rows[0]))
    write_section("energy-variants", text)


if __name__ == "__main__":
    main()
