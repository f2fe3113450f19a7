"""float16 models and Cast islands (fp16 body, fp32 inputs/outputs) prune as they are.

Weights stay float16; exactness is checked with the float16 tolerance of
:func:`onnxprune.passes.verify.tolerance`; recovery solves in float32/64 and writes float16.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.errors import VerificationError
from onnxprune.runtime import make_session
from onnxprune.passes.verify import HALF_RTOL, RTOL, tolerance, verify_equivalent

from builders import PATTERNS, chain_flatten_gemm, se_block
from conftest import shared_path


def to_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float32 initializer, input and output as float16 (what a float16 export looks like;
    Resize's roi/scales stay float32, as the spec wants)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = {x for n in out.graph.node if n.op_type == "Resize" for x in n.input[1:]}
    for i, t in enumerate(out.graph.initializer):
        if t.data_type == TensorProto.FLOAT and t.name not in keep:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for n in out.graph.node:
        for a in n.attribute:
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    for v in list(out.graph.input) + list(out.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(out)
    return out


def cast_island(model: onnx.ModelProto) -> onnx.ModelProto:
    """float32 x -> Cast(fp16) -> the float16 body -> Cast(fp32) -> float32 outputs."""
    half = to_half(model)
    g = half.graph
    x = g.input[0].name
    for n in g.node:
        for j, name in enumerate(n.input):
            if name == x:
                n.input[j] = x + "_h"
    outs = []
    for o in g.output:
        for n in g.node:
            for j, name in enumerate(n.output):
                if name == o.name:
                    n.output[j] = o.name + "_h"
        outs.append(o.name)
    g.node.insert(0, helper.make_node("Cast", [x], [x + "_h"], name="cast_in", to=TensorProto.FLOAT16))
    for name in outs:
        g.node.append(helper.make_node("Cast", [name + "_h"], [name], name=f"cast_out_{name}", to=TensorProto.FLOAT))
    for v in list(g.input) + list(g.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(half)
    return half


def _float_types(model: onnx.ModelProto) -> set[int]:
    """Element types of the producers' weights and biases."""
    used = {x for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") for x in n.input[1:]}
    return {t.data_type for t in model.graph.initializer if t.name in used}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = make_session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(
        np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32)})[0].astype(np.float32)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("variant", ["fp16", "cast_island"])
def test_fp32_plan_applies_to_half_model(pattern, variant):
    """The fp32 model's plan applies to its float16 version: exact surgery there, weights stay
    float16, and the result computes the fp32 pruned model's function up to float16 rounding."""
    fp32 = PATTERNS[pattern]()
    half = to_half(fp32) if variant == "fp16" else cast_island(fp32)
    assert tolerance(half)[0] == HALF_RTOL and tolerance(fp32)[0] == RTOL
    ref = onnxprune.prune_model(fp32, percentage=30)
    assert ref.report.removed_kernels > 0
    assert onnxprune.inspect(half).prunable_kernel_num == onnxprune.inspect(fp32).prunable_kernel_num
    res = onnxprune.apply_plan(half, ref.plan)
    assert res.report.removed_kernels == ref.report.removed_kernels
    assert _float_types(res.model) == {TensorProto.FLOAT16}
    io_type = TensorProto.FLOAT16 if variant == "fp16" else TensorProto.FLOAT
    assert res.model.graph.input[0].type.tensor_type.elem_type == io_type
    assert res.model.graph.output[0].type.tensor_type.elem_type == io_type
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    want, got = _run(ref.model, x), _run(res.model, x)
    assert np.abs(got - want).max() <= 2e-2 * max(np.abs(want).max(), 1.0)


def test_half_tolerance_still_catches_a_wrong_channel():
    """Changing one kernel of a float16 model moves the output far beyond the float16 tolerance."""
    half = to_half(chain_flatten_gemm())
    broken = onnx.ModelProto()
    broken.CopyFrom(half)
    w = broken.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr[0] = 0
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    feeds = [{"x": np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float16)}]
    verify_equivalent(half, half, feeds)
    with pytest.raises(VerificationError, match="differs from the reference"):
        verify_equivalent(broken, half, feeds)


def test_onnxconverter_keep_io_types():
    """onnxconverter_common's float16 conversion with keep_io_types: a Cast island with a stale
    float16 value_info on the float32 output, which normalisation must not take for the real type."""
    float16 = pytest.importorskip("onnxconverter_common.float16")
    fp32 = se_block()
    for keep_io in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = float16.convert_float_to_float16(fp32, keep_io_types=keep_io)
        res = onnxprune.prune_model(half, percentage=30)
        assert res.report.removed_kernels > 0
        assert res.verification.max_rel_error <= HALF_RTOL
        assert _float_types(res.model) == {TensorProto.FLOAT16}
        want = TensorProto.FLOAT if keep_io else TensorProto.FLOAT16
        assert res.model.graph.output[0].type.tensor_type.elem_type == want


@pytest.mark.parametrize("criterion", ["oracle", "energy"])
@pytest.mark.parametrize("variant", ["fp16", "cast_island"])
def test_half_scoring_and_recovery(criterion, variant):
    """Data-aware scoring and least squares on a float16 model fed float32 calibration arrays:
    the re-fit happens (in float32/64) and is written back as float16."""
    half = (to_half if variant == "fp16" else cast_island)(chain_flatten_gemm())
    x = np.random.default_rng(2).uniform(-1, 1, (20, 3, 8, 8)).astype(np.float32)
    res = onnxprune.prune_static(half, None, {"x": x},
                                 config=onnxprune.PruneConfig(percentage=30, criterion=criterion, recover="lsq"))
    assert res.report.removed_kernels > 0
    assert "least-squares re-fit of" in res.report.extra["recovery"]
    assert not res.report.extra["recovery"].startswith("least-squares re-fit of 0 ")
    assert _float_types(res.model) == {TensorProto.FLOAT16}
    out = _run(res.model, x[:4])
    assert np.isfinite(out).all()


def test_halcon_handle_on_half_model():
    half = to_half(chain_flatten_gemm())
    h = onnxprune.create_pruning(half, mode="oracle")
    onnxprune.set_pruning_param(h, "percentage", 30)
    x = np.random.default_rng(3).uniform(-1, 1, (8, 3, 8, 8))
    onnxprune.add_pruning_batch(h, {"x": x})
    pruned = onnxprune.gen_pruned_model(h)
    assert _float_types(pruned) == {TensorProto.FLOAT16}
    assert onnxprune.get_pruning_param(h, "pruned_kernel_num") > 0


@pytest.mark.parametrize("keep_io", [False, True])
def test_shared_resnet20_half(keep_io):
    """ResNet-20 converted with onnxconverter_common prunes at 30% with the fp32 model's kernel counts."""
    float16 = pytest.importorskip("onnxconverter_common.float16")
    path = shared_path("models", "resnet20_cifar10.onnx")
    fp32 = onnx.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(fp32, keep_io_types=keep_io)
    res = onnxprune.prune_model(half, percentage=30)
    ref = onnxprune.prune_model(fp32, percentage=30)
    assert res.report.removed_kernels == ref.report.removed_kernels == 208
    assert res.report.after.macs == ref.report.after.macs
    assert res.verification.max_rel_error <= HALF_RTOL
    assert _float_types(res.model) == {TensorProto.FLOAT16}
