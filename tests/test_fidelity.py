"""Fidelity in the user's terms: tasks guessed from outputs, costs that weigh every part, the floor and back-off."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from builders import Builder
from onnxprune import PruneConfig
from onnxprune.calibration import ArrayReader, CachedDataset
from onnxprune.calibration.dataset import Calibration
from onnxprune.cli import main
from onnxprune.errors import EXIT_BELOW_FLOOR, BelowFloorError
from onnxprune.fidelity import TaskCost, guess_task, make_judge, measure_fidelity
from onnxprune.fidelity.detection import Head, agreement
from onnxprune.pruning.pipeline import config_toward_dense, run_pruning
from onnxprune.scoring.oracle_cost import oracle_cost


def tiny_detector(classes: int = 3, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A decoded YOLOv8-style head: pixel boxes (Sigmoid x 320) concatenated with class probabilities."""
    b = Builder(shape=(None, 3, size, size), seed=seed)
    h = b.op("Relu", [b.conv("x", 3, 8)])
    box = b.op("Relu", [b.conv(h, 8, 8)])
    box = b.op("Mul", [b.op("Sigmoid", [b.conv(box, 8, 4)]), b.const(np.array(320.0, np.float32), "s")])
    cls = b.op("Relu", [b.conv(h, 8, 8)])
    cls = b.op("Sigmoid", [b.conv(cls, 8, classes)])
    cat = b.op("Concat", [box, cls], axis=1)
    out = b.op("Reshape", [cat, b.const(np.array([0, 4 + classes, -1], np.int64), "shape")])
    b.output(out, 3)
    return b.build()


def _v8(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[N, A, 4] boxes and [N, A, C] scores as one (N, 4 + C, A) head."""
    return np.concatenate([boxes, scores], axis=2).transpose(0, 2, 1)


def _two_detections():
    rng = np.random.default_rng(0)
    a, c = 100, 3
    boxes = np.column_stack([rng.uniform(40, 280, a), rng.uniform(40, 280, a), rng.uniform(20, 60, a),
                             rng.uniform(20, 60, a)])[None]
    scores = np.full((1, a, c), 0.01)
    scores[0, 10, 1] = 0.9
    scores[0, 50, 2] = 0.8
    return boxes, scores


def test_detection_cost_weighs_class_scores_against_pixel_boxes():
    """Losing every detection must cost more than shifting boxes by a pixel; a summed distortion says the
    opposite, because the pixel boxes dwarf the probabilities in the one tensor."""
    boxes, scores = _two_detections()
    base = _v8(boxes, scores)
    lost = _v8(boxes, np.where(scores > 0.5, 0.1, scores))
    shifted = _v8(boxes + 1.0, scores)
    summed = [float(oracle_cost("auto", [base], [q], None)[0]) for q in (lost, shifted)]
    assert summed[0] < summed[1]  # today's blind spot, kept as the reason for the task cost
    spec = guess_task(onnx.ModelProto(), [base], names=["output0"])
    assert spec.task == "detect" and spec.outputs[0].head == Head("v8", 3)
    cost = TaskCost(spec)
    task_costs = [float(cost([base], [q], None)[0]) for q in (lost, shifted)]
    assert task_costs[0] > 50 * task_costs[1] > 0


def test_detection_agreement_counts_matches():
    boxes, scores = _two_detections()
    base = _v8(boxes, scores)
    same = agreement([base], [base], Head("v8", 3), 0.25)
    assert same["detection_f1"] == 1.0 and same["reference_detections"] == 2 and same["map50_95"] == 1.0
    one_lost = scores.copy()
    one_lost[0, 50, 2] = 0.1
    got = agreement([base], [_v8(boxes, one_lost)], Head("v8", 3), 0.25)
    assert got["precision"] == 1.0 and got["recall"] == 0.5 and got["detection_f1"] == pytest.approx(2 / 3)
    wrong_class = scores.copy()
    wrong_class[0, 10, 1], wrong_class[0, 10, 0] = 0.01, 0.9
    got = agreement([base], [_v8(boxes, wrong_class)], Head("v8", 3), 0.25)
    assert got["precision"] == 0.5 and got["recall"] == 0.5


def test_tasks_guessed_from_outputs():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 10))
    seq = rng.random((8, 20, 30))
    seq /= seq.sum(-1, keepdims=True)
    pmap = rng.random((8, 1, 16, 16))
    feats = rng.standard_normal((8, 5, 40))
    assert guess_task(onnx.ModelProto(), [logits]).task == "classify"
    assert guess_task(onnx.ModelProto(), [seq]).task == "ocr"
    assert guess_task(onnx.ModelProto(), [pmap]).task == "segment"
    spec = guess_task(onnx.ModelProto(), [feats])
    assert spec.task == "generic" and spec.outputs[0].kind == "features" and spec.outputs[0].feature_axis == 1
    assert guess_task(onnx.ModelProto(), [logits], task="embed").task == "embed"


def test_unit_norm_rows_are_an_embedding_measured_by_cosine_and_neighbours():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((6, 16))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    spec = guess_task(onnx.ModelProto(), [emb])
    assert spec.task == "embed" and spec.outputs[0].kind == "embed"
    onehot = np.eye(4)[[0, 1, 2, 3, 0]]  # probabilities of norm 1 stay a classifier's
    assert guess_task(onnx.ModelProto(), [onehot]).task == "classify"
    out = emb.copy()
    out[0] = emb[1]  # row 0 now equals row 1: row 1's nearest neighbour becomes row 0
    fid = measure_fidelity(spec, [[emb]], [[out]])

    def nearest(x, i):
        return max((j for j in range(len(x)) if j != i), key=lambda j: x[i] @ x[j] / np.linalg.norm(x[j]))

    same = np.mean([nearest(emb, i) == nearest(out, i) for i in range(6)])
    assert fid.headline == "cosine" and fid.value == pytest.approx((5 + float(emb[0] @ emb[1])) / 6)
    assert fid.values["neighbour_agreement"] == pytest.approx(same) and same < 1.0


def test_ocr_fidelity_is_exact_match_of_ctc_strings():
    ref = np.zeros((3, 5, 4))
    for i, s in enumerate([[1, 1, 0, 2, 2], [3, 0, 3, 0, 0], [0, 0, 0, 0, 1]]):
        ref[i, np.arange(5), s] = 1.0
    out = ref.copy()
    out[0, 1] = [0, 0, 0, 1]  # "1 3 2" instead of "1 2"
    out[2, 3] = [0, 1, 0, 0]  # "1 1" collapsed -> "1": the same string
    spec = guess_task(onnx.ModelProto(), [ref])
    fid = measure_fidelity(spec, [[ref]], [[out]])
    assert fid.headline == "exact_match" and fid.value == pytest.approx(2 / 3)


def _calibration(x: np.ndarray, labels=None) -> Calibration:
    return Calibration(CachedDataset(ArrayReader({"x": x.astype(np.float32)}, labels=labels, batch_size=16)), 16)


def test_split_holds_back_rows_spread_over_a_sorted_file():
    x = np.arange(80, dtype=np.float32).reshape(80, 1, 1, 1) * np.ones((1, 3, 2, 2), np.float32)
    labels = np.repeat(np.arange(8), 10)
    fit, held = _calibration(x, labels).split(16)
    assert len(held) == 16 and len(fit) == 64
    assert set(held.labels.tolist()) == set(range(8))
    seen = set(np.concatenate([f["x"][:, 0, 0, 0] for f in fit.feeds()]).tolist())
    assert seen.isdisjoint(np.concatenate([f["x"][:, 0, 0, 0] for f in held.feeds()]).tolist())


def test_tiny_detector_task_cost_keeps_detections_better_than_summed(tmp_path):
    model = tiny_detector()
    x = np.random.default_rng(1).uniform(-1, 1, (96, 3, 16, 16)).astype(np.float32)
    f1 = {}
    for cost in ("auto", "mse"):
        res = run_pruning(model, None, _calibration(x), PruneConfig(criterion="oracle", target_macs=0.6,
                                                                    oracle_cost=cost, min_fidelity=0,
                                                                    round_to=1, recover="none"))
        fid = res.report.after.fidelity
        assert fid.task == "detect" and fid.data == "held-back calibration rows" and fid.samples == 16
        f1[cost] = fid.value
    assert f1["auto"] > f1["mse"]


def test_floor_refuses_and_back_off_finds_a_budget(tmp_path, capsys):
    from onnxprune.demo import write_demo_files
    folder = write_demo_files(str(tmp_path / "demo"))
    out = tmp_path / "out.onnx"
    args = [str(folder / "model.onnx"), "-o", str(out), "--calib", str(folder / "calib.npz"), "--target-macs", "0.3",
            "--criterion", "energy", "--recover", "none", "--allocation", "greedy", "--calib-limit", "96"]
    assert main(["prune"] + args) == EXIT_BELOW_FLOOR  # default floor of a classifier: top-1 agreement 0.9
    err = capsys.readouterr().err
    assert "below the fidelity floor" in err and "nothing was written" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["prune"] + args + ["--back-off"]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "back-off: asked <= 30% of MACs" in text and "floor 0.9 met" in text
    with pytest.raises(BelowFloorError) as info:
        run_pruning(str(folder / "model.onnx"), None, str(folder / "calib.npz"),
                    PruneConfig(criterion="energy", target_macs=0.3, recover="none", allocation="greedy",
                                calibration_samples=96))
    fid = info.value.result.report.after.fidelity
    assert fid.below_floor and fid.floor == 0.9 and fid.data == "held-back calibration rows" and fid.samples == 16
    assert "top1" in fid.values  # labels in the .npz give accuracy too


def test_config_toward_dense():
    c = PruneConfig(target_macs=0.5)
    assert config_toward_dense(c, 0.5).target_macs == 0.75
    assert config_toward_dense(PruneConfig(percentage=40), 0.25).percentage == 30
    assert config_toward_dense(PruneConfig(target_latency=0.6), 0.5).target_latency == pytest.approx(0.8)


def test_without_data_fidelity_says_random_inputs():
    model = tiny_detector()
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)
    judge = make_judge(model, [{"x": x}], None, "random inputs (no data given)", min_fidelity=0)
    fid = judge.measure(model)
    assert fid.value == 1.0 and fid.floor is None and "random inputs" in fid.text()


def test_latency_claims_only_outside_the_timing_noise():
    from onnxprune.report import ModelStats, Report
    lat = {"target": 0.8, "measured_fraction": 0.7, "missed_by": 0.0, "dense_ms": [1.0, 0.9, 1.3],
           "pruned_ms": [0.7, 0.6, 0.95], "where": "CPU", "outside_noise": False}
    rep = Report(ModelStats(10, 100, 1, 1.0), ModelStats(5, 50, 1, 0.7), extra={"latency": lat})
    assert "could not tell" in rep.table() and "inside the timing noise" in rep.table()
    rep.extra["latency"] = dict(lat, outside_noise=True)
    assert "target 80% met" in rep.table() and "noise" not in rep.table()
    plain = Report(ModelStats(10, 100, 1, 1.0), ModelStats(5, 50, 1, 0.9),
                   extra={"latency_range_ms": {"before": [1.0, 0.8, 1.2], "after": [0.9, 0.85, 1.1]}})
    assert "speed-up 1.11x (inside the timing noise)" in plain.table()


def test_one_relative_l2_for_raw_distortion_and_the_generic_task():
    """The raw distortion (quantize's bound, sparsity's output change, the variants table) and the generic
    task's per-feature figure are one function; its value is the textbook ||y - y0|| / ||y0||."""
    from onnxprune.fidelity.distortion import argmax_agreement, distortion, relative_l2
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)]
    out = [r + np.float32(0.1) * rng.normal(size=r.shape).astype(np.float32) for r in ref]
    a, b = np.concatenate([x.ravel() for x in ref]), np.concatenate([x.ravel() for x in out])
    want = np.linalg.norm(b.astype(np.float64) - a) / np.linalg.norm(a.astype(np.float64))
    assert relative_l2(ref, out) == pytest.approx(want, rel=1e-12)
    assert relative_l2(ref + [np.arange(3)], out + [np.arange(3) + 5]) == relative_l2(ref, out)  # ints skipped
    agree = np.mean(np.concatenate([(o.argmax(-1) == r.argmax(-1)) for r, o in zip(ref, out)]))
    assert argmax_agreement(ref, out) == agree
    assert distortion(ref, out) == {"rel_l2": relative_l2(ref, out), "argmax_agreement": agree}
    spec = guess_task(onnx.ModelProto(), [np.concatenate(ref)], "generic", ["y"])
    fid = measure_fidelity(spec, [[ref[0]], [ref[1]]], [[out[0]], [out[1]]])
    scale = np.asarray(spec.outputs[0].scales).reshape(1, -1)
    assert fid.values["rel_l2"] == relative_l2([np.concatenate(ref)], [np.concatenate(out)], scale)
