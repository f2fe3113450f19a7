"""Tests of onnxprune.sparsity: fillers, scopes, composition, storage, errors, CLI.

Most tests use tiny models built here; one runs on the shared ResNet-20 and
skips when the shared folder is absent.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import CalibrationError, InvalidArgumentError, InvalidModelError, NothingToPruneError
from onnxprune.runtime import make_session
from onnxprune.sparsity import SparsifyConfig, save_masks, sparsify, sparsity_info
from onnxprune.cli import main
from onnxprune.sparsity.fillers import unstructured_mask
from onnxprune.sparsity.history import METADATA_KEY

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", REPO.parent / "shared"))


def conv_gemm_model(seed: int = 0, constant_weights: bool = False, scale: float = 1.0) -> onnx.ModelProto:
    """x[N,3,6,6] -> Conv(W 4x3x3x3, B) -> Relu -> Flatten -> Gemm(G 5x64, transB) -> MatMul(M 5x2) -> y[N,2]

    With ``constant_weights`` the Conv weight comes from a Constant node (PaddlePaddle style).
    ``scale`` multiplies the Gemm weight, to make global and per-layer choices differ.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = (rng.standard_normal((5, 64)) * scale).astype(np.float32)
    m = rng.standard_normal((5, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[0, 0, 0, 0]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "G"], ["h"], name="gemm", transB=1),
        helper.make_node("MatMul", ["h", "M"], ["y"], name="matmul"),
    ]
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(g, "G"), numpy_helper.from_array(m, "M")]
    if constant_weights:
        nodes.insert(0, helper.make_node("Constant", [], ["W"], name="w_const",
                                         value=numpy_helper.from_array(w, "W")))
    else:
        inits.insert(0, numpy_helper.from_array(w, "W"))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_conv_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,8,10,10] -> Conv(8->16, 3x3, pad 1, B) -> Relu -> Conv(16->8, 3x3, stride 2, B) -> y"""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((8, 16, 3, 3)) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "W2", "B2"], ["y"], name="conv2", strides=[2, 2]),
        ],
        "two_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4, 4])],
        initializer=[
            numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B1"),
            numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Dense weights of a model, whatever their storage (initializer, sparse, Constant)."""
    from onnxprune.sparsity.weights import find_weights, read_weight
    refs, _ = find_weights(model, ("Conv", "Gemm", "MatMul"))
    return {r.name: read_weight(model, r) for r in refs}


def zeros(a: np.ndarray) -> int:
    return int(a.size - np.count_nonzero(a))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(None, {"x": x})[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- fillers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("filler", ["random", "l1"])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.95])
def test_layer_fraction_is_ceil_of_threshold_times_size(filler: str, threshold: float) -> None:
    result = sparsify(conv_gemm_model(), config=SparsifyConfig(threshold=threshold, filler=filler))
    for name, w in weights_of(result.model).items():
        assert zeros(w) == math.ceil(round(threshold * w.size, 9)), name
    if threshold == 0.7:
        # 0.7 * 10 is 7.000000000000001 in floating point; the 5x2 MatMul weight still gets 7 zeros, not 8.
        assert zeros(weights_of(result.model)["M"]) == 7


def test_l1_zeroes_exactly_the_smallest_magnitudes() -> None:
    model = conv_gemm_model()
    before = weights_of(model)
    after = weights_of(sparsify(model, config=SparsifyConfig(threshold=0.4, filler="l1")).model)
    for name, w in before.items():
        k = math.ceil(0.4 * w.size)
        order = np.argsort(np.abs(w).ravel(), kind="stable")
        expected = w.ravel().copy()
        expected[order[:k]] = 0
        np.testing.assert_array_equal(after[name].ravel(), expected)


def test_random_is_seeded_and_keeps_survivor_values() -> None:
    model = conv_gemm_model()
    a = sparsify(model, config=SparsifyConfig(threshold=0.5, filler="random", seed=3))
    b = sparsify(model, config=SparsifyConfig(threshold=0.5, filler="random", seed=3))
    c = sparsify(model, config=SparsifyConfig(threshold=0.5, filler="random", seed=4))
    assert all(np.array_equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not all(np.array_equal(a.masks[n], c.masks[n]) for n in a.masks)
    before = weights_of(model)
    for name, w in weights_of(a.model).items():
        np.testing.assert_array_equal(w[a.masks[name]], before[name][a.masks[name]])


def test_iternonstruct_zeroes_all_below_k_delta_for_smallest_k() -> None:
    """N2D2: zero every |w| <= k*delta, k = 1, 2, ... until the fraction is reached (ties overshoot)."""
    model = conv_gemm_model()
    w = np.round(np.linspace(-0.0304, 0.0304, 108), 6).astype(np.float32).reshape(4, 3, 3, 3)
    w[0, 0, 0, :] = 0.0185  # three equal magnitudes at the cut
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    delta = 0.001
    threshold = 0.6
    result = sparsify(model, config=SparsifyConfig(threshold=threshold, filler="iternonstruct", delta=delta,
                                                   op_types=("Conv",)))
    out = weights_of(result.model)["W"]
    k = 0
    while np.count_nonzero(np.abs(w) <= k * delta) / w.size < threshold:  # N2D2's loop, verbatim semantics
        k += 1
    expected = np.where(np.abs(w) <= k * delta, 0, w)
    np.testing.assert_array_equal(out, expected)
    assert zeros(out) >= math.ceil(threshold * w.size)


def test_global_scope_ranks_all_layers_together() -> None:
    model = conv_gemm_model(scale=10.0)  # Gemm weights 10x larger: global l1 spares them
    before = weights_of(model)
    glob = sparsify(model, config=SparsifyConfig(threshold=0.5, scope="global"))
    layer = sparsify(model, config=SparsifyConfig(threshold=0.5, scope="layer"))
    total = sum(w.size for w in before.values())
    assert glob.total_zeros == math.ceil(0.5 * total)
    flat = np.concatenate([np.abs(w).ravel() for w in before.values()])
    cut = np.sort(flat)[math.ceil(0.5 * total) - 1]
    for name, w in weights_of(glob.model).items():
        np.testing.assert_array_equal(w == 0, np.abs(before[name]) <= cut)
    by_name = {s.name: s for s in glob.layers}
    assert by_name["G"].sparsity_after < 0.5 < by_name["W"].sparsity_after
    assert all(s.zeros_after == math.ceil(0.5 * s.size) for s in layer.layers)


@pytest.mark.parametrize("dim,n", [(0, 2.0), (1, 1.0), (0, math.inf), (-1, 2.0)])
def test_ln_structured_removes_whole_slices_of_smallest_norm(dim: int, n: float) -> None:
    model = conv_gemm_model()
    w = weights_of(model)["W"]
    result = sparsify(model, config=SparsifyConfig(threshold=0.5, filler="ln", dim=dim, n=n, op_types=("Conv",)))
    out = weights_of(result.model)["W"]
    slices = np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)
    norms = np.linalg.norm(slices, ord=n, axis=1)
    pruned = np.argsort(norms, kind="stable")[:math.ceil(0.5 * w.shape[dim])]
    expected = np.moveaxis(w.copy(), dim, 0)
    expected[pruned] = 0
    np.testing.assert_array_equal(out, np.moveaxis(expected, 0, dim))


def test_importance_scores_replace_magnitudes() -> None:
    model = conv_gemm_model()
    w = weights_of(model)["W"]
    scores = -np.abs(w) + 100.0  # largest weights now least important
    result = sparsify(model, config=SparsifyConfig(threshold=0.25, op_types=("Conv",)),
                      importance_scores={"W": scores})
    out = weights_of(result.model)["W"]
    k = math.ceil(0.25 * w.size)
    largest = np.argsort(np.abs(w).ravel(), kind="stable")[::-1][:k]
    assert set(np.flatnonzero(out.ravel() == 0)) == set(largest)


def test_custom_masks_are_applied_and_other_layers_left_alone(tmp_path: Path) -> None:
    model = conv_gemm_model()
    before = weights_of(model)
    mask = np.ones((5, 64), dtype=np.uint8)
    mask[:, ::3] = 0
    path = tmp_path / "masks.npz"
    np.savez(path, G=mask)
    result = sparsify(model, config=SparsifyConfig(), masks=path)
    after = weights_of(result.model)
    np.testing.assert_array_equal(after["G"], before["G"] * mask)
    np.testing.assert_array_equal(after["W"], before["W"])
    assert result.history[-1]["filler"] == "custom_mask"


@settings(max_examples=60, deadline=None)
@given(size=st.integers(2, 300), first=st.floats(0.0, 0.95), second=st.floats(0.0, 0.95),
       filler=st.sampled_from(["random", "l1", "iternonstruct"]), seed=st.integers(0, 10_000))
def test_fillers_reach_the_target_and_only_remove_survivors(size: int, first: float, second: float, filler: str,
                                                             seed: int) -> None:
    """Property: the new mask is a subset of the old one and holds at least the target zeros,
    exactly the target for random and l1."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(size) * 0.01
    mask = unstructured_mask("l1", weights, np.ones(size, dtype=bool), math.ceil(first * size), rng, 1e-3)
    target = math.ceil(second * size)
    new = unstructured_mask(filler, np.where(mask, weights, 0.0), mask, target, rng, 1e-3)
    assert not np.any(new & ~mask)
    zeros_now = size - int(np.count_nonzero(new))
    expected = max(target, size - int(np.count_nonzero(mask)))
    if filler == "iternonstruct":
        assert zeros_now >= expected
    else:
        assert zeros_now == expected


# -- composition, history, gradual ---------------------------------------------------------------

def test_second_pass_prunes_only_survivors_and_records_history() -> None:
    first = sparsify(conv_gemm_model(), config=SparsifyConfig(threshold=0.5, filler="l1"))
    second = sparsify(first.model, config=SparsifyConfig(threshold=0.75, filler="random", seed=1))
    w1, w2 = weights_of(first.model), weights_of(second.model)
    for name in w1:
        assert np.all(w2[name][w1[name] == 0] == 0), "a weight pruned once must stay pruned"
        assert zeros(w2[name]) == math.ceil(0.75 * w1[name].size)
        np.testing.assert_array_equal(second.masks[name], first.masks[name] & second.masks[name])
    info = sparsity_info(second.model)
    assert [p["filler"] for p in info.history] == ["l1", "random"]
    by_name = {layer.name: layer for layer in info.layers}
    assert by_name["W"].history == (math.ceil(0.5 * 108) / 108, math.ceil(0.75 * 108) / 108)


def test_relative_threshold_counts_only_remaining_weights() -> None:
    first = sparsify(conv_gemm_model(), config=SparsifyConfig(threshold=0.5))
    second = sparsify(first.model, config=SparsifyConfig(threshold=0.5, relative=True))
    for layer in second.layers:
        remaining = layer.size - layer.zeros_before
        assert layer.zeros_after == layer.zeros_before + math.ceil(0.5 * remaining)


def test_threshold_already_reached_changes_nothing() -> None:
    first = sparsify(conv_gemm_model(), config=SparsifyConfig(threshold=0.6))
    again = sparsify(first.model, config=SparsifyConfig(threshold=0.3, filler="random"))
    for name, w in weights_of(first.model).items():
        np.testing.assert_array_equal(weights_of(again.model)[name], w)


def test_schedule_in_the_pruning_verbs_words() -> None:
    """steps / gradual_start / gradual_gamma mean what they mean for `prune`; the history still says the mode."""
    assert SparsifyConfig(threshold=0.6).schedule() == (0.6,) and SparsifyConfig().mode == "static"
    assert SparsifyConfig(threshold=0.6, steps=3).schedule() == (0.2, 0.4, 0.6)
    gradual = SparsifyConfig(threshold=0.5, gradual_start=0.2, gradual_gamma=0.2)
    assert gradual.schedule() == (0.2, 0.4, 0.5) and gradual.mode == "gradual"


def test_gradual_without_data_reaches_the_same_l1_masks_as_static() -> None:
    model = conv_gemm_model()
    static = sparsify(model, config=SparsifyConfig(threshold=0.8))
    gradual = sparsify(model, config=SparsifyConfig(threshold=0.8, gradual_start=0.1, gradual_gamma=0.2))
    assert gradual.steps == (0.1, 0.3, 0.5, 0.7, 0.8)
    assert all(np.array_equal(static.masks[n], gradual.masks[n]) for n in static.masks)


def test_gradual_refit_recovers_outputs_and_respects_masks() -> None:
    model = two_conv_model()
    rng = np.random.default_rng(5)
    calib = {"x": np.maximum(rng.standard_normal((96, 8, 10, 10)), 0).astype(np.float32)}
    plain = sparsify(model, config=SparsifyConfig(threshold=0.7))
    fitted = sparsify(model, config=SparsifyConfig(threshold=0.7, gradual_start=0.3, gradual_gamma=0.2),
                      calibration_data_reader=calib)
    assert fitted.steps == (0.3, 0.5, 0.7)
    assert all(layer.refit.startswith("re-fitted") for layer in fitted.layers)
    for name, w in weights_of(fitted.model).items():
        assert zeros(w) == math.ceil(0.7 * w.size)
        assert np.all(w[~fitted.masks[name]] == 0)
    test = np.maximum(rng.standard_normal((32, 8, 10, 10)), 0).astype(np.float32)
    ref = run(model, test)
    err_plain = np.linalg.norm(run(plain.model, test) - ref)
    err_fit = np.linalg.norm(run(fitted.model, test) - ref)
    assert err_fit < 0.8 * err_plain  # measured 0.71 with these seeds


def auto_pad_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,9,9] -> Conv(8, 4x4, stride 2, SAME_UPPER) -> Relu -> Conv(6, 3x2, SAME_LOWER) -> Relu
    -> Conv(4, 2x2, VALID) -> y"""
    rng = np.random.default_rng(seed)
    shapes = {"W1": (8, 4, 4, 4), "W2": (6, 8, 3, 2), "W3": (4, 6, 2, 2)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32), n) for n, s in shapes.items()]
    inits += [numpy_helper.from_array(rng.standard_normal(s[0]).astype(np.float32) * 0.1, "B" + n[1])
              for n, s in shapes.items()]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", strides=[2, 2], auto_pad="SAME_UPPER"),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", auto_pad="SAME_LOWER"),
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("Conv", ["r2", "W3", "B3"], ["y"], name="conv3", auto_pad="VALID"),
        ],
        "auto_pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_refit_of_auto_pad_convs_recovers_outputs() -> None:
    """SAME_UPPER / SAME_LOWER / VALID convs are re-fitted with the pads onnxruntime applies."""
    model = auto_pad_model()
    rng = np.random.default_rng(2)
    def images(n: int) -> np.ndarray:  # correlated pixels: with white noise the masked weights are already optimal
        x = np.maximum(rng.standard_normal((n, 4, 9, 9)), 0) + rng.standard_normal((n, 1, 9, 1))
        return x.astype(np.float32)

    calib = {"x": images(96)}
    plain = sparsify(model, config=SparsifyConfig(threshold=0.6))
    fitted = sparsify(model, config=SparsifyConfig(threshold=0.6), calibration_data_reader=calib)
    assert all(layer.refit.startswith("re-fitted") for layer in fitted.layers), [l.refit for l in fitted.layers]
    test = images(32)
    ref = run(model, test)
    assert np.linalg.norm(run(fitted.model, test) - ref) < 0.8 * np.linalg.norm(run(plain.model, test) - ref)


def test_calibration_reader_and_batches_are_accepted() -> None:
    class Reader:
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = [{"x": rng.standard_normal((8, 8, 10, 10)).astype(np.float32)} for _ in range(3)]

        def get_next(self):  # onnxruntime's CalibrationDataReader protocol
            return self.batches.pop() if self.batches else None

    result = sparsify(two_conv_model(), config=SparsifyConfig(threshold=0.5), calibration_data_reader=Reader())
    assert all(layer.refit != "no" for layer in result.layers)


# -- storage ---------------------------------------------------------------------------------------

def test_sparse_storage_round_trip_is_identical_and_smaller(tmp_path: Path) -> None:
    model = conv_gemm_model()
    out = tmp_path / "sparse.onnx"
    result = sparsify(model, out, SparsifyConfig(threshold=0.9))
    assert result.storage.format == "sparse"
    assert result.storage.sparse_bytes < result.storage.dense_bytes
    loaded = onnx.load(str(out))
    assert {t.values.name for t in loaded.graph.sparse_initializer} == {"W", "G"}  # M (5x2) gains nothing
    onnx.checker.check_model(loaded)
    dense = sparsify(model, tmp_path / "dense.onnx", SparsifyConfig(threshold=0.9, dense=True))
    assert dense.storage.format == "dense"
    assert not onnx.load(str(tmp_path / "dense.onnx")).graph.sparse_initializer
    assert out.stat().st_size < (tmp_path / "dense.onnx").stat().st_size
    x = np.random.default_rng(1).standard_normal((4, 3, 6, 6)).astype(np.float32)
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    for init in masked.graph.initializer:
        if init.name in result.masks:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * result.masks[init.name], init.name))
    np.testing.assert_array_equal(run(loaded, x), run(masked, x))
    np.testing.assert_array_equal(run(loaded, x), run(onnx.load(str(tmp_path / "dense.onnx")), x))
    assert {layer.name: layer.storage for layer in sparsity_info(out).layers} == {
        "W": "sparse", "G": "sparse", "M": "dense"}


def test_half_sparse_stays_dense_and_says_why() -> None:
    result = sparsify(conv_gemm_model(), config=SparsifyConfig(threshold=0.5))
    assert result.storage.format == "dense"
    assert "1/3 density" in result.storage.reason
    assert not result.model.graph.sparse_initializer


def test_resparsifying_a_sparse_model_reads_its_sparse_tensors(tmp_path: Path) -> None:
    first = sparsify(conv_gemm_model(), tmp_path / "a.onnx", SparsifyConfig(threshold=0.9))
    assert first.model.graph.sparse_initializer
    second = sparsify(tmp_path / "a.onnx", tmp_path / "b.onnx", SparsifyConfig(threshold=0.95))
    for name, w in weights_of(second.model).items():
        assert zeros(w) == math.ceil(0.95 * w.size)
        assert np.all(w[weights_of(first.model)[name] == 0] == 0)


def test_constant_node_weights_are_sparsified_and_stored_sparse() -> None:
    model = conv_gemm_model(constant_weights=True)
    result = sparsify(model, config=SparsifyConfig(threshold=0.9))
    stats = {layer.name: layer for layer in result.layers}
    assert stats["W"].source == "constant" and stats["W"].storage == "sparse"
    const = next(n for n in result.model.graph.node if n.op_type == "Constant")
    assert const.attribute[0].name == "sparse_value"
    assert zeros(weights_of(result.model)["W"]) == math.ceil(0.9 * 108)
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    reference = sparsify(model, config=SparsifyConfig(threshold=0.9, dense=True)).model
    np.testing.assert_array_equal(run(result.model, x), run(reference, x))


def test_shared_weight_is_sparsified_once() -> None:
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "S"], ["a"], name="mm1"),
         helper.make_node("MatMul", ["a", "S"], ["y"], name="mm2")],
        "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(w, "S")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = {"x": np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)}
    result = sparsify(model, config=SparsifyConfig(threshold=0.5), calibration_data_reader=calib)
    assert len(result.layers) == 1 and result.layers[0].nodes == ("mm1", "mm2")
    assert result.layers[0].zeros_after == 8
    assert result.layers[0].refit.startswith("skipped")


def test_structured_then_unstructured_report_shows_both() -> None:
    model = conv_gemm_model()
    entry = model.metadata_props.add()
    entry.key, entry.value = "onnxprune.channels", "conv: 6 -> 4 output channels"
    structured = sparsify(model, config=SparsifyConfig(threshold=0.5, filler="ln", dim=0, op_types=("Conv",)))
    both = sparsify(structured.model, config=SparsifyConfig(threshold=0.75, op_types=("Conv",)))
    info = sparsity_info(both.model)
    conv = next(layer for layer in info.layers if layer.name == "W")
    assert (conv.zero_channels, conv.channels) == (2, 4)
    assert conv.zeros == math.ceil(0.75 * 108)
    assert [p["filler"] for p in info.history] == ["ln", "l1"]
    assert info.other_metadata == {"onnxprune.channels": "conv: 6 -> 4 output channels"}


# -- safety and errors -----------------------------------------------------------------------------

def test_input_file_and_proto_are_never_modified(tmp_path: Path) -> None:
    model = conv_gemm_model()
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    digest = sha(path)
    snapshot = model.SerializeToString()
    sparsify(path, tmp_path / "out.onnx", SparsifyConfig(threshold=0.9))
    sparsify(model, tmp_path / "out2.onnx", SparsifyConfig(threshold=0.9))
    assert sha(path) == digest
    assert model.SerializeToString() == snapshot
    with pytest.raises(InvalidArgumentError, match="is the input file"):
        sparsify(path, path, SparsifyConfig(threshold=0.5))
    assert sha(path) == digest


@pytest.mark.parametrize("kwargs,match", [
    ({"threshold": 1.0}, r"threshold must be in \[0, 1\)"),
    ({"threshold": -0.1}, r"threshold must be in \[0, 1\)"),
    ({"filler": "magnitude"}, "unknown filler 'magnitude'"),
    ({"scope": "model"}, "unknown scope"),
    ({"filler": "ln", "scope": "global"}, "no global form"),
    ({"op_types": ("Add",)}, "not supported"),
    ({"gradual_start": 0.1, "gradual_gamma": 0.0}, r"gamma in \(0, 1\]"),
    ({"gradual_start": 0.1}, "needs both a start and a gamma"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"steps": 2, "gradual_start": 0.1, "gradual_gamma": 0.1}, "not both"),
])
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        SparsifyConfig(**kwargs)


def test_bad_inputs_are_refused_with_clear_errors(tmp_path: Path) -> None:
    model = conv_gemm_model()
    with pytest.raises(InvalidModelError, match="no such file"):
        sparsify(tmp_path / "missing.onnx")
    with pytest.raises(InvalidArgumentError, match=r"has shape \[3, 3\] but the weight has shape \[4, 3, 3, 3\]"):
        sparsify(model, masks={"W": np.ones((3, 3))})
    with pytest.raises(InvalidArgumentError, match="not a weight being sparsified"):
        sparsify(model, masks={"nope": np.ones((3, 3))})
    with pytest.raises(InvalidArgumentError, match="only 0 and 1"):
        sparsify(model, masks={"M": np.full((5, 2), 0.5)})
    with pytest.raises(InvalidArgumentError, match="no effect with the random filler"):
        sparsify(model, config=SparsifyConfig(filler="random"), importance_scores={"M": np.ones((5, 2))})
    with pytest.raises(InvalidArgumentError, match="--dim 3 is out of range for G"):
        sparsify(model, config=SparsifyConfig(filler="ln", dim=3))
    with pytest.raises(CalibrationError, match="no input named 'a', 'b'; it expects 'x'"):
        sparsify(two_conv_model(), calibration_data_reader={"a": np.ones((2, 8, 10, 10)), "b": np.ones(2)})
    with pytest.raises(CalibrationError, match=r"axis 1 .*8"):
        sparsify(two_conv_model(), calibration_data_reader={"x": np.ones((2, 3, 10, 10), dtype=np.float32)})
    with pytest.raises(NothingToPruneError):
        sparsify(model, config=SparsifyConfig(nodes_to_exclude=("W", "gemm", "M")))
    with pytest.raises(InvalidArgumentError, match="folder .* does not exist"):
        sparsify(model, tmp_path / "no" / "out.onnx")


# -- CLI -------------------------------------------------------------------------------------------

def cli(*argv: str) -> int:
    """``onnxprune sparsify ARGV`` through the command line's one entry point (and its error handler)."""
    return main(["sparsify", *argv])


def test_cli_sparsify_info_and_mask_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.onnx"
    onnx.save(conv_gemm_model(), str(src))
    out = tmp_path / "out.onnx"
    masks = tmp_path / "masks.npz"
    assert cli(str(src), "-o", str(out), "--threshold", "0.9", "--filler", "iternonstruct", "--scope", "global",
               "--save-masks", str(masks)) == 0
    printed = capsys.readouterr().out
    assert "storage: sparse" in printed and "verification: ok" in printed and "total: 3 weights" in printed
    assert cli(str(src), "-o", str(tmp_path / "again.onnx"), "--masks", str(masks)) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(
        [w for w in weights_of(onnx.load(str(out))).values()][0],
        [w for w in weights_of(onnx.load(str(tmp_path / "again.onnx"))).values()][0])
    assert cli(str(out), "--info") == 0
    info = capsys.readouterr().out
    assert "pass 1: iternonstruct threshold 0.9, global, static" in info
    assert cli(str(src), "-o", str(tmp_path / "x.onnx"), "--threshold", "1.5") == 2
    assert "threshold must be in [0, 1)" in capsys.readouterr().err
    assert cli(str(src), "--threshold", "0.5") == 2
    assert "-o OUT" in capsys.readouterr().err
    assert cli(str(tmp_path / "missing.onnx"), "-o", str(out)) == 2
    with pytest.raises(SystemExit):
        cli(str(src), "-o", str(out), "--filler", "magnitude")


def test_cli_gradual_refit_with_calibration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--calib takes float model inputs as they are."""
    src = tmp_path / "two.onnx"
    onnx.save(two_conv_model(), str(src))
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=np.random.default_rng(0).standard_normal((40, 8, 10, 10)).astype(np.float32))
    assert cli(str(src), "-o", str(tmp_path / "out.onnx"), "--threshold", "0.6", "--gradual-start", "0.2",
               "--gradual-gamma", "0.2", "--calib", str(calib), "--samples", "32") == 0
    printed = capsys.readouterr().out
    assert "re-fitted" in printed and "steps 0.2, 0.4, 0.6" in printed and "on calibration samples" in printed


def test_cli_sparsify_from_an_image_folder_with_preprocessing_flags(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The same --calib and preprocessing flags as prune; the result equals the API's with that Preprocess."""
    from PIL import Image

    from onnxprune.calibration import Preprocess
    from onnxprune.cli.sparsify import sparsify_report

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    src = tmp_path / "in.onnx"
    onnx.save(conv_gemm_model(), str(src))
    out = tmp_path / "out.onnx"
    assert cli(str(src), "-o", str(out), "--threshold", "0.5", "--calib", str(folder), "--calib-limit", "20",
               "--resize", "7", "--size", "6x6", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3", "--bgr") == 0
    printed = capsys.readouterr().out
    assert "on calibration samples" in printed
    pre = Preprocess(size=(6, 6), resize=7, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), channel_order="BGR")
    config = SparsifyConfig(threshold=0.5, refit_samples=20)
    api = sparsify(conv_gemm_model(), config=config, calibration_data_reader=folder, preprocess=pre)
    for name, w in weights_of(onnx.load(str(out))).items():
        np.testing.assert_array_equal(w, weights_of(api.model)[name])
    verification = next(line for line in printed.splitlines() if line.startswith("verification:"))
    assert verification in sparsify_report(api).table()
    plain = sparsify(conv_gemm_model(), config=config, calibration_data_reader=folder, preprocess=Preprocess())
    assert plain.verification.output_change != api.verification.output_change  # the flags reached the data


def test_cli_bad_sparsify_arguments_exit_with_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.onnx"
    onnx.save(conv_gemm_model(), str(src))
    assert cli(str(src), "-o", str(tmp_path / "o.onnx"), "--threshold", "0.5", "--masks", str(tmp_path / "m.npz")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onnxprune: error: ") and "--masks" in err
    assert cli(str(src), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "missing")) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(str(src), "--scope", "sometimes")
    assert exc.value.code == 2


def test_save_masks_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        save_masks({"W": np.ones((2, 2), dtype=bool)}, tmp_path / "nope" / "m.npz")


# -- real model ------------------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / "models" / "resnet20_cifar10.onnx").exists(),
                    reason="shared models folder absent (set ONNXPRUNE_SHARED)")
def test_resnet20_global_l1_sparse_storage(tmp_path: Path) -> None:
    src = SHARED / "models" / "resnet20_cifar10.onnx"
    digest = sha(src)
    out = tmp_path / "r20.onnx"
    result = sparsify(src, out, SparsifyConfig(threshold=0.9, scope="global"))
    assert result.total_zeros == math.ceil(0.9 * result.total_size)
    assert result.storage.format == "sparse" and result.verification.ok
    assert out.stat().st_size < 0.5 * src.stat().st_size
    info = sparsity_info(out)
    assert info.total_zeros == result.total_zeros and len(info.history) == 1
    assert METADATA_KEY in {p.key for p in onnx.load(str(out)).metadata_props}
    assert sha(src) == digest
