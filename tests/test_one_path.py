"""One calibration object from one constructor, the model read once per run."""

from __future__ import annotations

import numpy as np

import onnxprune
from onnxprune import PruneConfig

from builders import option_a_shortcut


def test_a_run_reads_its_model_once(monkeypatch):
    """prune_static loads (and checks) the model once, for the calibration and the analysis alike."""
    import onnxprune.pruning.pipeline
    import onnxprune.pruning.prepare
    from onnxprune.graph.io import load_model
    calls = []

    def counting(model, **kw):
        calls.append(1)
        return load_model(model, **kw)
    monkeypatch.setattr(onnxprune.pruning.pipeline, "load_model", counting)
    monkeypatch.setattr(onnxprune.pruning.prepare, "load_model", counting)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 8, 8)).astype(np.float32)
    onnxprune.prune_static(option_a_shortcut(), None, {"x": x},
                           PruneConfig(criterion="l1", percentage=20, recover="none", measure=False))
    assert len(calls) == 1


def test_sparsify_calibration_is_load_calibrations(tmp_path):
    """sparsify reads calibration through load_calibration: a float16 model gets float16 rows, limited."""
    from onnxprune.sparsity.api import collect_calibration
    from test_fp16 import to_half
    half = to_half(option_a_shortcut())
    x = np.random.default_rng(0).uniform(-1, 1, (10, 3, 8, 8)).astype(np.float32)
    rows = collect_calibration({"x": x}, half, 6)
    assert rows["x"].dtype == np.float16 and rows["x"].shape == (6, 3, 8, 8)


def test_feeds_first_and_last_are_the_batches_at_either_end():
    from onnxprune.calibration import load_calibration
    from test_fp16 import to_half
    x = np.random.default_rng(1).uniform(-1, 1, (10, 3, 8, 8)).astype(np.float32)
    calibration = load_calibration({"x": x}, to_half(option_a_shortcut()), batch_size=4)
    every = calibration.feeds()
    assert [f["x"].shape[0] for f in every] == [4, 4, 2] and every[0]["x"].dtype == np.float16
    for got, want in ((calibration.feeds(first=1), every[:1]), (calibration.feeds(last=1), every[-1:])):
        assert len(got) == 1 and np.array_equal(got[0]["x"], want[0]["x"]) and got[0]["x"].dtype == np.float16
