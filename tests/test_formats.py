"""Exporters and formats: opsets 11-22, tf2onnx/Keras and PyTorch-dynamo patterns, several inputs,
dynamic shapes, run-time Reshape targets.

Every model is tiny and built in code; each must prune exactly (the pass's exactness check, float32
tolerance) with the channels the pattern implies.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, version_converter

import onnxprune
from onnxprune.graph.normalize import normalize

from builders import Builder
from conftest import shared_path


def _prunable(model, **kw):
    rep = onnxprune.inspect(model, **kw)
    return rep.prunable_conv_num, rep.prunable_kernel_num, [g.frozen_reason for g in rep.groups if g.frozen_reason]


def _prune(model, **kw):
    res = onnxprune.prune_model(model, percentage=30, **kw)
    assert res.report.removed_kernels > 0
    assert res.verification.max_rel_error < 1e-4
    return res


# ---------------------------------------------------------------- run-time Reshape targets (item 4)
def runtime_reshape_head(kind: str) -> onnx.ModelProto:
    """Conv(12) -> Relu -> GAP -> Reshape(target from Shape) -> MatMul(12x5)

    ``torch``:  Shape -> Gather(0) -> Unsqueeze -> Concat(., [12])   (x.view(x.size(0), 12))
    ``paddle``: Shape -> Cast(int32) -> Slice(0:1) -> Cast(int64) -> Concat(., [12])   (PP-OCR cls head)
    ``other``:  the batch entry read from the graph input's shape: not a copy (no folding), but only the
                constant channel entry of the Concat is rewritten, so it prunes
    ``moved``:  Concat([12], Shape[0]): dim 0 copied to position 1, stays frozen
    """
    b = Builder(opset=13)
    h = b.op("GlobalAveragePool", [b.op("Relu", [b.conv("x", 3, 12)])])
    src = "x" if kind == "other" else h
    shape = b.op("Shape", [src])
    if kind == "paddle":
        n = b.op("Cast", [b.op("Slice", [b.op("Cast", [shape], to=TensorProto.INT32),
                                         b.const(np.array([0], np.int64)), b.const(np.array([1], np.int64)),
                                         b.const(np.array([0], np.int64))])], to=TensorProto.INT64)
    else:
        n = b.op("Unsqueeze", [b.op("Gather", [shape, b.const(np.array(0, np.int64))], axis=0),
                               b.const(np.array([0], np.int64))])
    c = b.const(np.array([12], np.int64))
    target = b.op("Concat", [c, n] if kind == "moved" else [n, c], axis=0)
    h = b.op("Reshape", [h, target])
    if kind == "moved":
        h = b.op("Transpose", [h], perm=[1, 0])
    b.output(b.op("MatMul", [h, b.const(b.rng.standard_normal((12, 5)).astype(np.float32))]), 2)
    return b.build()


@pytest.mark.parametrize("kind", ["torch", "paddle"])
def test_runtime_reshape_target_folds(kind):
    model = runtime_reshape_head(kind)
    normal = normalize(model)
    assert not any(n.op_type == "Shape" for n in normal.graph.node)
    assert _prunable(model)[:2] == (1, 12)
    res = _prune(model)
    assert res.report.removed_kernels == 4


def test_runtime_reshape_target_with_a_constant_channel_entry_prunes():
    """The target stays computed at run time; the Concat's constant [12] is the entry surgery rewrites."""
    model = runtime_reshape_head("other")
    assert any(n.op_type == "Shape" for n in normalize(model).graph.node)
    assert _prunable(model)[:2] == (1, 12)
    assert _prune(model).report.removed_kernels == 4


@pytest.mark.parametrize("kind", ["moved"])
def test_runtime_reshape_target_not_a_copy_stays_frozen(kind):
    model = runtime_reshape_head(kind)
    convs, kernels, reasons = _prunable(model)
    assert (convs, kernels) == (0, 0)
    assert any(r.startswith("Reshape") for r in reasons)


def test_ppocr_cls_head_prunes():
    """PP-OCR's classifier: the last conv (200 channels) sat behind a run-time Reshape target."""
    path = shared_path("models", "ppocr_mobile_cls.onnx")
    convs, kernels, reasons = _prunable(path, input_shapes={"x": [1, 3, 48, 192]})
    assert (convs, kernels) == (53, 3146)  # 52 and 2946 with the target left at run time
    assert not any("Reshape" in r for r in reasons)


# ---------------------------------------------------------------- opsets 11-22 (item 2)
def opset11_model() -> onnx.ModelProto:
    """At opset 11, every op whose signature later changes (attributes that became inputs):

    Conv(8) -> BN -> Relu -> Pad(spatial) -> Conv(12) -> Clip -> Split(4, 8 | attr) -> Conv each
    -> Concat -> Resize(x2) -> Conv(6) -> ReduceMean(axes attr, keepdims) -> Squeeze(axes attr)
    -> Unsqueeze(axes attr) -> Squeeze -> Gemm(3)
    """
    b = Builder(opset=11)
    h = b.op("Relu", [b.bn(b.conv("x", 3, 8), 8)])
    h = b.op("Pad", [h, b.const(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64))], mode="constant")
    h = b.op("Clip", [b.conv(h, 8, 12), b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))])
    s1, s2 = b.op("Split", [h], n_out=2, axis=1, split=[4, 8])
    h = b.op("Concat", [b.conv(s1, 4, 5, k=1), b.conv(s2, 8, 7, k=1)], axis=1)
    h = b.op("Resize", [h, b.const(np.zeros(0, np.float32)), b.const(np.array([1, 1, 2, 2], np.float32))],
             mode="nearest")
    h = b.op("ReduceMean", [b.op("Relu", [b.conv(h, 12, 6)])], axes=[2, 3], keepdims=1)
    h = b.op("Squeeze", [h], axes=[2, 3])
    h = b.op("Squeeze", [b.op("Unsqueeze", [h], axes=[2])], axes=[2])
    b.output(b.gemm(h, 6, 3), 2)
    return b.build()


def _plan(model, **kw) -> dict:
    res = _prune(model, **kw)
    return res.plan.remove


def test_every_opset_prunes_to_the_same_plan():
    base = opset11_model()
    want = _plan(base)
    assert sum(len(v) for v in want.values()) > 0
    for version in range(12, 23):
        converted = version_converter.convert_version(base, version)
        assert converted.opset_import[0].version == version
        assert _plan(converted) == want, f"opset {version}"


@pytest.mark.parametrize("version", [18, 22])
def test_resnet20_at_other_opsets(version):
    path = shared_path("models", "resnet20_cifar10.onnx")
    base = onnx.load(str(path))
    converted = version_converter.convert_version(base, version)
    assert _plan(converted) == _plan(base)


# ---------------------------------------------------------------- tf2onnx / Keras and PyTorch dynamo (item 2)
def _nhwc_builder(opset: int = 13) -> Builder:
    b = Builder(opset=opset)
    b.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])]
    return b


def _dense(b: Builder, h: str, fin: int, fout: int) -> str:
    """Keras Dense as tf2onnx writes it: MatMul by a [in, out] constant, then Add of the bias."""
    w = b.const((b.rng.standard_normal((fin, fout)) * 0.3).astype(np.float32))
    return b.op("Add", [b.op("MatMul", [h, w]), b.const(b.rng.standard_normal(fout).astype(np.float32))])


def keras_model(head: str) -> onnx.ModelProto:
    """NHWC x -> Transpose(0,3,1,2) -> Conv(8) -> Relu -> Conv(16) -> Relu -> head -> Dense(10) -> Relu -> Dense(4)

    heads: ``reducemean`` ReduceMean([2,3], keepdims=0); ``nhwc_reshape`` Transpose(0,2,3,1) ->
    ReduceMean([1,2]) -> Reshape([-1, 16]); ``squeeze`` GlobalAveragePool -> Squeeze([2,3]);
    ``nhwc_flatten`` Transpose(0,2,3,1) -> Reshape([-1, 8*8*16]) (channel innermost);
    ``nhwc_dense`` Transpose(0,2,3,1) -> Dense(16) on the last axis -> Relu -> ReduceMean([1,2], keepdims=0);
    ``squeeze_all`` GlobalAveragePool -> Squeeze without axes.
    """
    b = _nhwc_builder()
    h = b.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    h = b.op("Relu", [b.conv(h, 3, 8)])
    h = b.op("Relu", [b.conv(h, 8, 16)])
    width = 16
    if head == "reducemean":
        h = b.op("ReduceMean", [h], axes=[2, 3], keepdims=0)
    elif head == "nhwc_reshape":
        h = b.op("ReduceMean", [b.op("Transpose", [h], perm=[0, 2, 3, 1])], axes=[1, 2], keepdims=1)
        h = b.op("Reshape", [h, b.const(np.array([-1, 16], np.int64))])
    elif head == "squeeze":
        h = b.op("Squeeze", [b.op("GlobalAveragePool", [h]), b.const(np.array([2, 3], np.int64))])
    elif head == "nhwc_flatten":
        h = b.op("Transpose", [h], perm=[0, 2, 3, 1])
        h = b.op("Reshape", [h, b.const(np.array([-1, 8 * 8 * 16], np.int64))])
        width = 8 * 8 * 16
    elif head == "nhwc_dense":
        h = b.op("Relu", [_dense(b, b.op("Transpose", [h], perm=[0, 2, 3, 1]), 16, 16)])
        h = b.op("ReduceMean", [h], axes=[1, 2], keepdims=0)
    elif head == "squeeze_all":
        h = b.op("Squeeze", [b.op("GlobalAveragePool", [h])])
    h = b.op("Relu", [_dense(b, h, width, 10)])
    b.output(_dense(b, h, 10, 4), 2)
    return b.build()


@pytest.mark.parametrize("head", ["reducemean", "nhwc_reshape", "squeeze", "nhwc_flatten", "nhwc_dense",
                                  "squeeze_all"])
def test_keras_patterns(head):
    model = keras_model(head)
    convs, kernels, reasons = _prunable(model)
    extra = 16 if head == "nhwc_dense" else 0  # the channels-last Dense is a prunable layer too
    assert (convs, kernels) == (3 + (extra > 0), 8 + 16 + 10 + extra), reasons  # convs and hidden Dense
    _prune(model)


def dynamo_model() -> onnx.ModelProto:
    """PyTorch dynamo export (opset 18): asymmetric pads on a Conv and in a Pad node (axes input),
    ReduceMean with an axes input and keepdims=0, then Gemm(transB) heads.

    x -> Conv(8, pads 0,0,1,1, s2) -> Relu -> Pad([1,0]|[0,1] on H, W via axes) -> Conv(12, valid)
      -> Relu -> ReduceMean(axes=[-1,-2], keepdims=0) -> Gemm(6) -> Relu -> Gemm(3)
    """
    b = Builder(opset=18)
    w = b.const((b.rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32))
    h = b.op("Relu", [b.op("Conv", ["x", w], kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[2, 2])])
    h = b.op("Pad", [h, b.const(np.array([1, 0, 0, 1], np.int64)), b.const(np.array(0, np.float32)),
                     b.const(np.array([2, 3], np.int64))], mode="constant")
    w = b.const((b.rng.standard_normal((12, 8, 3, 3)) * 0.3).astype(np.float32))
    h = b.op("Relu", [b.op("Conv", [h, w], kernel_shape=[3, 3])])
    h = b.op("ReduceMean", [h, b.const(np.array([-1, -2], np.int64))], keepdims=0)
    h = b.op("Relu", [b.gemm(h, 12, 6)])
    b.output(b.gemm(h, 6, 3), 2)
    return b.build()


def test_dynamo_patterns():
    model = dynamo_model()
    convs, kernels, reasons = _prunable(model)
    assert (convs, kernels) == (3, 8 + 12 + 6), reasons
    _prune(model)


# ---------------------------------------------------------------- several inputs (item 3)
def multi_input_model(kind: str) -> onnx.ModelProto:
    """``scalar``: x -> Conv(8) -> Relu -> GAP -> Flatten -> Gemm(6) -> * s[N,1] -> Relu -> Gemm(3)
    ``two_images``: Conv(8)(a) + Conv(8)(b) -> Relu -> Conv(6)
    ``mask``: x -> Conv(8) -> Relu -> * m[N,1,8,8] -> Conv(6)
    """
    b = Builder()
    img = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3, 8, 8])  # noqa: E731
    if kind == "scalar":
        b.inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1]))
        h = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [b.conv("x", 3, 8)])])])
        h = b.op("Relu", [b.op("Mul", [b.gemm(h, 8, 6), "s"])])
        b.output(b.gemm(h, 6, 3), 2)
    elif kind == "two_images":
        b.inputs = [img("a"), img("b")]
        h = b.op("Relu", [b.op("Add", [b.conv("a", 3, 8), b.conv("b", 3, 8)])])
        b.output(b.conv(h, 8, 6), 4)
    else:
        b.inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 1, 8, 8]))
        h = b.op("Mul", [b.op("Relu", [b.conv("x", 3, 8)]), "m"])
        b.output(b.conv(h, 8, 6), 4)
    return b.build()


_MULTI = {"scalar": ((2, 14), {"x": (3, 8, 8), "s": (1,)}), "two_images": ((2, 16), {"a": (3, 8, 8), "b": (3, 8, 8)}),
          "mask": ((1, 8), {"x": (3, 8, 8), "m": (1, 8, 8)})}


def _multi_data(kind: str, n: int = 24) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    data = {k: rng.uniform(-1, 1, (n,) + s).astype(np.float32) for k, s in _MULTI[kind][1].items()}
    if kind == "mask":
        data["m"] = (data["m"] > 0).astype(np.float32)
    return data


@pytest.mark.parametrize("kind", sorted(_MULTI))
def test_multi_input_data_free(kind):
    model = multi_input_model(kind)
    convs, kernels, reasons = _prunable(model)
    assert (convs, kernels) == _MULTI[kind][0], reasons
    _prune(model)


@pytest.mark.parametrize("kind", sorted(_MULTI))
def test_multi_input_calibrated_per_input_name(kind, tmp_path):
    """Calibration arrays keyed by input name: arrays in Python, an .npz through the command line."""
    model = multi_input_model(kind)
    data = _multi_data(kind)
    res = onnxprune.prune_static(model, None, data,
                                 config=onnxprune.PruneConfig(percentage=30, criterion="oracle", recover="lsq",
                                                                 min_fidelity=0))
    assert res.report.removed_kernels > 0 and "least-squares" in res.report.extra["recovery"]
    src, npz, out = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "p.onnx"
    onnx.save(model, str(src))
    np.savez(npz, **data)
    from onnxprune.cli import main
    assert main(["prune", str(src), "-o", str(out), "--calib", str(npz), "--percentage", "30",
                 "--min-fidelity", "0"]) in (0, None)
    assert out.exists()


# ---------------------------------------------------------------- dynamic shapes (item 3)
def dynamic_model(record: str) -> onnx.ModelProto:
    """x [N,3,H,W] -> Conv(8) -> Relu -> Flatten -> Gemm(8*6*6 -> 4): runs only at 6x6.

    The size is recorded as ``value_info`` (of a Cast of the input), ``metadata`` (imgsz) or by a
    second input with ``fixed`` dims (a mask); ``none`` records nothing.
    """
    b = Builder(shape=(None, 3, None, None))
    b.inputs[0].type.tensor_type.shape.dim[2].dim_param = "H"
    b.inputs[0].type.tensor_type.shape.dim[3].dim_param = "W"
    x = b.op("Cast", ["x"], to=TensorProto.FLOAT)
    h = b.op("Relu", [b.conv(x, 3, 8)])
    if record == "fixed":
        b.inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 1, 6, 6]))
        h = b.op("Mul", [h, "m"])
    b.output(b.gemm(b.op("Flatten", [h]), 8 * 36, 4), 2)
    model = b.build()
    if record == "value_info":
        model.graph.value_info.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 6, 6]))
    elif record == "metadata":
        helper.set_model_props(model, {"imgsz": "[6, 6]"})
    return model


@pytest.mark.parametrize("record", ["value_info", "metadata", "fixed"])
def test_dynamic_sizes_from_the_file(record):
    model = dynamic_model(record)
    rep = onnxprune.inspect(model)
    assert rep.input_shapes["x"][2:] == (6, 6)
    _prune(model)


def test_dynamic_sizes_nothing_recorded_asks_for_input_shape(tmp_path, capsys):
    model = dynamic_model("none")
    with pytest.raises(onnxprune.errors.InvalidArgumentError, match="--input-shape"):
        onnxprune.inspect(model)
    assert onnxprune.inspect(model, input_shapes={"x": [1, 3, 6, 6]}).prunable_kernel_num == 8
    path = tmp_path / "d.onnx"
    onnx.save(model, str(path))
    from onnxprune.cli import main
    assert main(["inspect", str(path)]) not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input-shape" in err[0]
