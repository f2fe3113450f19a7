"""Spearman rank correlation of cheap criteria with the oracle (cf. Molchanov et al. 2017, Table 1).

Models: the demo digits CNN (BatchNorm kept, so |gamma| exists) and ResNet-20
(BatchNorm folded by the exporter: no bn_scale). Oracle: KL of the outputs on
128 calibration samples; the other data-driven criteria use the same samples.

Run: python benchmarks/criteria_correlation.py
"""

from __future__ import annotations

import numpy as np

from common import SHARED, Timer, cifar, header, table, write_section
from onnxprune.demo import demo_data, demo_files
from onnxprune.pruning.pipeline import PruneConfig, load_calibration, score_units
from onnxprune.pruning.prepare import prepare

CRITERIA = ("magnitude", "l2", "bn_scale", "activation_mean", "activation_std", "energy", "random")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    demo_model, _ = demo_files()
    xc, _ = cifar("calib")  # the file is sorted by class: take a random mix
    xc = xc[np.random.default_rng(0).permutation(len(xc))[:128]]
    cases = {"demo digits CNN": (demo_model, {"input": demo_data()["calib"][:128]}),
             "ResNet-20": (SHARED / "models" / "resnet20_cifar10.onnx", {"input": xc})}
    rows = []
    for name, (model, data) in cases.items():
        p = prepare(model)
        cal = load_calibration(data, p.original, batch_size=64)
        with Timer() as t:
            oracle = score_units(p, PruneConfig(criterion="oracle"), cal)
        units = sorted(oracle)
        o = np.array([oracle[r] for r in units])
        row = {"model": f"{name} ({len(units)} units)", "oracle time (s)": f"{t.seconds:.1f}"}
        for crit in CRITERIA:
            s = score_units(p, PruneConfig(criterion=crit), cal)
            v = np.array([s[r] for r in units])
            rho = spearman(o, v)
            row[crit] = "n/a" if not np.isfinite(rho) else f"{rho:.2f}"
        rows.append(row)
        print(row, flush=True)
    text = header("Rank correlation of criteria with the oracle (issue 3)")
    text += ("\nSpearman's rho between each criterion's unit scores and the oracle's (whole network, all "
             "prunable units). n/a: the criterion is constant on this model (no BatchNorm).\n\n")
    text += table(rows, list(rows[0]))
    write_section("criteria-correlation", text)


if __name__ == "__main__":
    main()
