"""Prune, then quantize: the int8 pass, its calibration adapter, its checks, and the side-by-side report."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from builders import Builder, chain_flatten_gemm
from onnxprune.calibration.dataset import load_calibration
from onnxprune.cli import main
from onnxprune.config import PruneConfig
from onnxprune.errors import CalibrationError, InvalidArgumentError
from onnxprune.passes.base import PostconditionError, PreconditionError
from onnxprune.passes.quantize import CalibrationFeeder, QuantizePass
from onnxprune.pruning.pipeline import prune_static
from onnxprune.runtime import make_session


def _images(n: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return chain_flatten_gemm()


def test_feeder_gives_every_batch_and_rewinds(model):
    calib = load_calibration(_images(40), model, batch_size=16)
    feeder = CalibrationFeeder(calib)
    sizes = []
    while (feed := feeder.get_next()) is not None:
        sizes.append(feed["x"].shape[0])
    assert sizes == [16, 16, 8]
    feeder.rewind()
    np.testing.assert_array_equal(feeder.get_next()["x"], _images(40)[:16])
    assert len(feeder) == 3
    feeder.set_range(start_index=2, end_index=3)  # onnxruntime's strided calibration
    assert feeder.get_next()["x"].shape[0] == 8 and feeder.get_next() is None


def test_every_calibration_batch_sets_the_ranges(model):
    """The input's quantization scale covers the widest batch, wherever it comes (10 batches, the last wide)."""
    x = _images(160)
    x[-16:] *= 4.0
    calib = load_calibration(x, model, batch_size=16)
    q = QuantizePass(calib, activation_type="QInt8", reduce_range=False)(model).model
    inits = {t.name: t for t in q.graph.initializer}
    scale = float(onnx.numpy_helper.to_array(inits["x_scale"]))
    assert scale == pytest.approx(np.abs(x).max() * 2 / 255, rel=0.02) or \
        scale == pytest.approx((x.max() - min(x.min(), 0)) / 255, rel=0.02)


def test_quantize_pass_writes_qdq_int8_close_to_float(model):
    calib = load_calibration(_images(), model, batch_size=16)
    result = QuantizePass(calib)(model)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 6
    int8 = [t for t in result.model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8) == 3  # the weights of both convs (BN folded in by the pre-processing) and the Gemm
    assert "BatchNormalization" not in ops
    scales = {t.name: t for t in result.model.graph.initializer}
    conv_w = next(t for t in int8 if tuple(t.dims) == (8, 3, 3, 3))
    dq = next(n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == conv_w.name)
    assert tuple(scales[dq.input[1]].dims) == (8,)  # per output channel
    fid = result.fidelity
    assert 0 < fid["rel_l2"] < 0.1 and fid["argmax_agreement"] >= 0.9
    assert "int8 (QDQ, per-channel weights, " in result.notes[-1]
    x = _images(4, seed=9)
    got = make_session(result.model).run(None, {"x": x})[0]
    want = make_session(model).run(None, {"x": x})[0]
    assert got.shape == want.shape and np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_quantize_needs_calibration_and_keeps_its_bound(model):
    with pytest.raises(PreconditionError, match="needs calibration data"):
        QuantizePass(None)(model)
    with pytest.raises(InvalidArgumentError, match="unknown quantization"):
        PruneConfig(quantize="int4")
    calib = load_calibration(_images(), model, batch_size=16)
    with pytest.raises(PostconditionError, match="more than the bound 0"):
        QuantizePass(calib, max_rel_l2=0.0)(model)
    with pytest.raises(CalibrationError, match="--quantize int8 needs calibration data"):
        from onnxprune.pruning.api import prune_model
        prune_model(model, config=PruneConfig(criterion="magnitude", target_macs=0.7, quantize="int8",
                                              recover="none", measure=False))


def wide_chain() -> onnx.ModelProto:
    """x -> Conv(24) -> Relu -> Conv(24) -> Relu -> MaxPool -> Flatten -> Gemm(10): weights outweigh QDQ's overhead"""
    b = Builder()
    h = b.op("Relu", [b.conv(b.op("Relu", [b.conv("x", 3, 24)]), 24, 24)])
    h = b.op("Flatten", [b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])], axis=1)
    b.output(b.gemm(h, 24 * 16, 10), 2)
    return b.build()


def test_prune_then_quantize_reports_four_variants(tmp_path):
    out = tmp_path / "small_int8.onnx"
    config = PruneConfig(criterion="energy", target_macs=0.7, quantize="int8", batch_size=16, min_fidelity=0)
    res = prune_static(wide_chain(), out, _images(), config)
    written = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in written.graph.node)
    assert [v.name for v in res.report.variants] == ["dense fp32", "pruned fp32", "dense int8", "pruned int8"]
    sizes = {v.name: v.size_bytes for v in res.report.variants}
    assert sizes["pruned int8"] < sizes["dense int8"] < sizes["dense fp32"]
    assert sizes["pruned int8"] < sizes["pruned fp32"]
    assert all(set(v.latency_ms) == {1, 16} for v in res.report.variants)
    assert res.report.variants[0].fidelity is None and res.report.variants[3].fidelity["rel_l2"] > 0
    assert "| pruned int8 |" in res.report.markdown() and "pruned int8" in res.report.table()


def test_cli_quantize_without_calibration_is_one_clear_line(model, tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    rc = main(["prune", str(src), "-o", str(tmp_path / "o.onnx"), "--target-macs", "0.7", "--quantize", "int8"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs calibration data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
