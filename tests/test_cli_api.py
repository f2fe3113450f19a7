"""Inspect / prune / apply through the CLI and the API on tiny models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.cli import main
from onnxprune.runtime import make_session

from builders import inverted_residual, option_a_shortcut


@pytest.fixture()
def resnetish(tmp_path):
    p = tmp_path / "r.onnx"
    onnx.save(option_a_shortcut(), str(p))
    return p


def test_inspect_json(resnetish, capsys):
    assert main(["inspect", str(resnetish), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prunable_conv_num"] == 5
    assert data["prunable_kernel_num"] == 8 + 8 + 8 + 16 + 16
    frozen = [g for g in data["groups"] if g["frozen_reason"]]
    assert len(frozen) == 1 and "graph output" in frozen[0]["frozen_reason"]


def test_prune_plan_apply_roundtrip(resnetish, tmp_path, capsys):
    out, plan, out2 = tmp_path / "o.onnx", tmp_path / "plan.json", tmp_path / "o2.onnx"
    assert main(["prune", str(resnetish), "-o", str(out), "--percentage", "30", "--save-plan", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "exactness vs masked reference" in text and out.exists()
    assert main(["apply", str(resnetish), "--plan", str(plan), "-o", str(out2)]) == 0
    a, b = onnx.load(str(out)), onnx.load(str(out2))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(make_session(a).run(None, {"x": x})[0], make_session(b).run(None, {"x": x})[0])


def test_percentage_counts_kernels(resnetish):
    res = onnxprune.prune_model(str(resnetish), percentage=30)
    rep = res.report
    assert rep.prunable_kernels == 56
    assert rep.removed_kernels >= 0.3 * 56
    assert rep.after.params < rep.before.params


def test_target_macs_met():
    model = inverted_residual()
    res = onnxprune.prune_model(model, target_macs=0.6)
    assert res.report.after.macs <= 0.6 * res.report.before.macs
    # the input proto is untouched
    assert len(model.graph.initializer) == len(inverted_residual().graph.initializer)


def test_round_to_and_max_ratio():
    res = onnxprune.prune_model(option_a_shortcut(), percentage=50, round_to=4, max_layer_ratio=0.5)
    for lc in res.report.layers:
        assert lc.after >= lc.before * 0.5
    from onnxprune.pruning.prepare import prepare
    a = prepare(option_a_shortcut()).analysis
    removed = res.plan.to_units(a)
    by_group: dict = {}
    for r in removed:
        by_group[a.group_of[r]] = by_group.get(a.group_of[r], 0) + 1
    for gid, k in by_group.items():
        assert (len(a.groups[gid].units) - k) % 4 == 0


@pytest.mark.parametrize("round_to", [1, 3, 8])
def test_round_to_meets_mac_budget_with_whole_blocks(round_to):
    """Budgets hold with rounding, and each group keeps a multiple of round_to (or all its channels)."""
    from onnxprune.pruning.prepare import prepare
    from onnxprune.scoring import magnitude_scores
    from onnxprune.allocation.selection import Constraints, Target, ordered_candidates, removal_blocks, select
    p = prepare(inverted_residual())
    a = p.analysis
    scores = magnitude_scores(a)
    for keep in (0.9, 0.7, 0.5):
        removed = select(a, scores, Target(macs=keep), Constraints(round_to=round_to), cost_aware=True, cost=p.cost)
        macs, _ = p.cost.evaluate(np.array(removed, dtype=np.int64))
        order = ordered_candidates(a, {r: v / max(p.cost.unit_savings()[r][0], 1.0) for r, v in scores.items()},
                                   Constraints(round_to=round_to))
        everything = [r for b in removal_blocks(a, order, round_to) for r in b]
        floor, _ = p.cost.evaluate(np.array(everything, dtype=np.int64))
        if floor <= keep * p.cost.dense_macs:
            assert macs <= keep * p.cost.dense_macs
        else:  # coarse blocks on a tiny model: the budget is out of reach, everything admissible goes
            assert sorted(removed) == sorted(everything)
        counts: dict = {}
        for r in removed:
            counts[a.group_of[r]] = counts.get(a.group_of[r], 0) + 1
        for gid, k in counts.items():
            assert (len(a.groups[gid].units) - k) % round_to == 0
    order = sorted(scores, key=lambda r: (scores[r], r))
    blocks = removal_blocks(a, order, round_to)
    flat = [r for b in blocks for r in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(order)
    assert all(len({a.group_of[r] for r in b}) == 1 for b in blocks)


def test_auto_round_to_widths():
    """auto: multiples of 8 from 128 channels, 4 from 16, free below; the default everywhere."""
    from onnxprune.allocation.selection import Constraints, group_round_to
    assert [group_round_to("auto", w) for w in (8, 15, 16, 63, 64, 127, 128, 1280)] == [1, 1, 4, 4, 4, 4, 8, 8]
    assert group_round_to(3, 64) == 3
    assert Constraints().round_to == "auto" and onnxprune.PruneConfig().round_to == "auto"
    with pytest.raises(onnxprune.OnnxPruneError):
        Constraints(round_to="fast")


def test_plan_json_roundtrip():
    plan = onnxprune.PruningPlan({"conv1": [0, 3]}, {"criterion": "magnitude"})
    again = onnxprune.PruningPlan.from_json(plan.to_json())
    assert again.remove == plan.remove and again.meta == plan.meta
    with pytest.raises(onnxprune.InvalidArgumentError):
        onnxprune.PruningPlan.from_json("[]")


def test_demo_runs_and_leaves_nothing_behind(capsys, caplog, tmp_path, monkeypatch):
    """Without -o the demo's model goes to a temporary folder that is removed; off a terminal, progress is log lines."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert "accuracy" in out and out.rstrip().endswith("the pruned model was not kept: pass -o FILE to keep it")
    # accuracy and fidelity on the same rows, and the rows named; the speed-up with its noise verdict
    assert "accuracy (500 held-back test digits)" in out and "500 evaluation rows" in out
    assert "calibration rows" not in out.split("fidelity to dense")[1].split("\n")[0]
    speed = next(line for line in out.splitlines() if line.startswith("latency (median, batch 64)"))
    assert " ms (" in speed and "speed-up " in speed
    assert list(tmp_path.iterdir()) == []
    assert "\r" not in err
    assert any(r.name == "onnxprune.progress" and r.getMessage().startswith("oracle (local): ") for r in caplog.records)


def test_score_then_prune_with_scores_cli(tmp_path, capsys):
    """`score` writes per-kernel oracle scores once; `prune --scores` reuses them for any budget."""
    model = tmp_path / "m.onnx"
    onnx.save(option_a_shortcut(), str(model))
    data = np.random.default_rng(0).uniform(0, 255, (24, 8, 8, 3)).astype(np.uint8)
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=data, labels=np.arange(24) % 4)
    scores = tmp_path / "scores.json"
    assert main(["score", str(model), "--calib", str(calib), "-o", str(scores), "--calib-limit", "16"]) == 0
    saved = json.loads(scores.read_text())
    assert saved["format"] == "onnxprune-scores" and saved["meta"]["samples"] == 16
    for budget in ("0.8", "0.6"):
        out = tmp_path / f"o{budget}.onnx"
        assert main(["prune", str(model), "-o", str(out), "--scores", str(scores), "--target-macs", budget]) == 0
        assert out.exists()
    out = tmp_path / "oracle.onnx"
    assert main(["prune", str(model), "-o", str(out), "--calib", str(calib), "--calib-limit", "16",
                 "--target-macs", "0.7", "--steps", "2", "--report", str(tmp_path / "r.md")]) == 0
    text = capsys.readouterr().out
    md = (tmp_path / "r.md").read_text()
    assert "least-squares" in text and md.startswith("# onnxprune: m.onnx -> oracle.onnx\n")
    for printed in ("method: oracle scores", "fidelity to dense", "before recovery", "Kept kernels per layer",
                    "least-squares"):  # what the terminal printed is in the report file too
        assert printed in text and printed in md, printed


def test_calibration_errors_are_clear(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(option_a_shortcut(), str(model))
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 8, 8, 5), np.uint8))
    code = main(["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--calib", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.npz" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--calib", str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and "empty" in err


def test_external_data_model(tmp_path):
    """Weights stored beside the model (external data) load; the written model is self-contained."""
    src = tmp_path / "ext"
    src.mkdir()
    onnx.save_model(option_a_shortcut(), str(src / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    assert (src / "m.onnx.data").exists()
    res = onnxprune.prune_model(str(src / "m.onnx"), tmp_path / "o.onnx", percentage=20)
    assert res.output_path.exists() and res.report.after.params < res.report.before.params
    make_session(onnx.load(str(res.output_path)))


def test_cli_float_model_inputs_from_npy(tmp_path):
    """--calib with float32 model inputs in an .npy: fed unchanged (no image preprocessing forced on them)."""
    import numpy as np

    from onnxprune.demo import demo_data, demo_files
    model, _ = demo_files()
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, demo_data()["calib"][:32])
    assert main(["score", str(model), "--calib", str(inputs), "--criterion", "energy",
                 "-o", str(tmp_path / "s.json")]) == 0
    assert main(["prune", str(model), "-o", str(tmp_path / "p.onnx"), "--calib", str(inputs),
                 "--criterion", "energy", "--target-macs", "0.8"]) == 0
    assert (tmp_path / "p.onnx").exists()
    # a preprocessing flag with float inputs is a clear error, not silently ignored
    assert main(["score", str(model), "--calib", str(inputs), "--mean", "0.5", "-o", str(tmp_path / "t.json")]) == 2
