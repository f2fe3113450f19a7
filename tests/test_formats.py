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
    ``other``:  the batch entry read from the graph input's shape: not provably a copy, stays frozen
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


@pytest.mark.parametrize("kind", ["other", "moved"])
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
