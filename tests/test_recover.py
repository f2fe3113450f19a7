"""Recovery: verified exact before, closer to the original after."""

from __future__ import annotations

import numpy as np

from onnxprune.api import build_pruned
from onnxprune.passes.recover import recover
from onnxprune.pipeline import load_calibration
from onnxprune.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.selection import Target, select
from onnxprune.scoring import magnitude_scores

from builders import chain_flatten_gemm, inverted_residual, se_block


def distortion(model, ref, feeds):
    a = make_session(model).run(None, feeds)[0]
    b = make_session(ref).run(None, feeds)[0]
    return float(((a - b) ** 2).mean() / (b ** 2).mean())


def test_lsq_and_bias_reduce_distortion():
    for builder in (chain_flatten_gemm, inverted_residual, se_block):
        model = builder()
        p = prepare(model)
        rng = np.random.default_rng(0)
        # structured inputs (smooth, positive mean) so channel means and correlations matter
        data = rng.uniform(0, 1, (64, 3, 8, 8)).astype(np.float32) + np.linspace(0, 1, 8, dtype=np.float32)
        cal = load_calibration({"x": data[:48]}, model, batch_size=16)
        test = {"x": data[48:]}
        removed = select(p.analysis, magnitude_scores(p.analysis), Target(percentage=30))
        pruned, ver = build_pruned(p, removed)
        assert ver.max_rel_error < 1e-5
        d0 = distortion(pruned, p.model, test)
        lsq, note = recover(p, removed, pruned, cal, "lsq")
        bias, _ = recover(p, removed, pruned, cal, "bias")
        assert "least-squares" in note
        assert distortion(lsq, p.model, test) < d0
        assert distortion(bias, p.model, test) < d0
