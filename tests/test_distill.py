"""--recover distill: the pruned graph's own initializers fine-tuned against the dense model, kept only if better."""

from __future__ import annotations

import builtins

import numpy as np
import onnx
import pytest

from onnxprune import PruneConfig
from onnxprune.distill import DistillSettings
from onnxprune.errors import InvalidArgumentError

from builders import Builder, residual_net

torch = pytest.importorskip("torch", reason="the distill extra (torch) is not installed")
try:
    from onnxprune.distill.engine import require_engine
    require_engine()
except InvalidArgumentError:
    pytest.skip("the distill extra (onnx2torch) is not installed", allow_module_level=True)

from onnxprune.distill.engine import EngineMissingError, Unconvertible, convert, write_back  # noqa: E402
from onnxprune.pruning.pipeline import run_pruning  # noqa: E402

FAST = DistillSettings(epochs=2, lr=1e-3, batch=32, time_s=60)


def _data(n: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (n, 3, 8, 8)) + np.linspace(0, 1, 8)).astype(np.float32)


def _config(recover: str, settings: DistillSettings = FAST) -> PruneConfig:
    return PruneConfig(criterion="magnitude", percentage=40, recover=recover, min_fidelity=0,
                       calibration_samples=64, batch_size=32, distill=settings)


def _sig(model: onnx.ModelProto) -> list[tuple]:
    return [(t.name, t.data_type, tuple(t.dims)) for t in model.graph.initializer]


def test_distilled_model_is_the_pruned_graph_checked_and_never_worse_than_least_squares():
    from onnxprune.passes.verify import check_structure
    from onnxprune.runtime import make_session
    data = {"x": _data()}
    lsq = run_pruning(residual_net(), None, data, _config("lsq"))
    dist = run_pruning(residual_net(), None, data, _config("distill"))
    assert _sig(dist.model) == _sig(lsq.model)
    assert [(n.op_type, list(n.input), list(n.output)) for n in dist.model.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in lsq.model.graph.node]
    check_structure(dist.model)
    assert np.isfinite(make_session(dist.model).run(None, {"x": data["x"][:4]})[0]).all()
    assert dist.report.after.fidelity.value >= lsq.report.after.fidelity.value  # the keep rule
    note = dist.report.extra["distillation"]
    assert ("least squares kept" in note) != ("(distilled" in note)
    assert "wall" in note and "CPU" in note
    assert dist.report.extra["fidelity_before_distillation"].value == lsq.report.after.fidelity.value
    assert "before distillation" in dist.report.markdown()


def test_weights_round_trip_by_name_bit_exactly_before_training():
    model = residual_net()
    student = convert(model)
    assert student.bindings  # conv, BN scale/bias and Gemm weights are trainable
    back = write_back(model, student.state())
    assert [t.SerializeToString() for t in back.graph.initializer] == \
        [t.SerializeToString() for t in model.graph.initializer]
    assert all("held as a constant" in why for n, why in student.frozen.items() if n.startswith(("mu", "var")))


def test_distillation_reduces_the_output_error_of_plainly_sliced_weights():
    """From the sliced weights (no least squares) the loss on the held-back rows must fall, and the kept
    weights must be the better ones."""
    from onnxprune.pruning.api import build_pruned
    from onnxprune.distill.engine import input_arrays
    from onnxprune.distill.train import Trainer
    from onnxprune.fidelity.judge import make_judge
    from onnxprune.pruning.pipeline import load_calibration
    from onnxprune.pruning.prepare import prepare
    from onnxprune.scoring import magnitude_scores
    from onnxprune.allocation.selection import Target, select
    model = residual_net()
    p = prepare(model)
    removed = select(p.analysis, magnitude_scores(p.analysis), Target(macs=0.5))
    pruned, _ = build_pruned(p, removed)
    x = _data(128)
    cal = load_calibration({"x": x[:96]}, model, batch_size=16)
    judge = make_judge(p.model, [{"x": x[96:]}], None, "held-back rows", min_fidelity=0)
    student = convert(pruned)
    settings = DistillSettings(epochs=4, lr=3e-3, batch=32, time_s=120, augment=False, patience=4)
    out = Trainer(student, p.model, pruned, input_arrays(cal), judge, settings, "cpu").run()
    assert out.improved and out.best_loss < 0.8 * out.baseline_loss
    assert len(out.curve) >= 2 and out.steps >= 3


def test_a_gemm_with_alpha_stays_frozen_and_an_unconvertible_op_keeps_least_squares():
    b = Builder()
    h = b.op("Relu", [b.conv("x", 3, 8)])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(h, 8, 6)])])
    w = b.const((b.rng.standard_normal((4, 6)) * 0.1).astype(np.float32))
    b.output(b.op("Gemm", [h, w, b.const(np.zeros(4, np.float32), "b")], transB=1, alpha=0.5), 2)
    student = convert(b.build())
    assert "alpha" in student.frozen[w] and w not in student.bindings

    b = Builder()
    h = b.op("Relu", [b.conv("x", 3, 8)])
    h = b.op("Relu", [b.conv(h, 8, 8)])
    b.output(b.op("Shrink", [b.conv(h, 8, 4, k=1)], lambd=0.1), 4)
    model = b.build()
    with pytest.raises(Unconvertible, match="Shrink"):
        convert(model)
    res = run_pruning(model, None, {"x": _data()}, _config("distill"))
    note = res.report.extra["distillation"]
    assert "cannot take Shrink" in note and "least squares kept" in note


def test_a_time_budget_too_small_for_one_step_is_one_line(tmp_path, capsys):
    from onnxprune.cli import main
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(residual_net(), src)
    np.save(tmp_path / "x.npy", _data())
    code = main(["prune", str(src), "-o", str(out), "--calib", str(tmp_path / "x.npy"), "--criterion", "magnitude",
                 "--percentage", "40", "--min-fidelity", "0", "--recover", "distill", "--distill-time", "1e-9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("onnxprune: error:") and "too small for one training step" in err[0]


def test_the_missing_extra_is_one_line(monkeypatch, tmp_path, capsys):
    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name.split(".")[0] in ("torch", "onnx2torch"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(EngineMissingError, match=r'pip install "onnxprune\[distill\]"'):
        run_pruning(residual_net(), None, {"x": _data()}, _config("distill"))
    from onnxprune.cli import main
    src = tmp_path / "m.onnx"
    onnx.save(residual_net(), src)
    np.save(tmp_path / "x.npy", _data())
    code = main(["prune", str(src), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "x.npy"),
                 "--recover", "distill"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "onnxprune[distill]" in err[0]


def test_cli_flags_map_into_the_config_and_bad_settings_are_refused():
    from onnxprune.cli import _config, build_parser
    args = build_parser().parse_args(["prune", "m.onnx", "-o", "o.onnx", "--recover", "distill", "--distill-epochs",
                                      "2", "--distill-lr", "0.001", "--distill-batch", "4", "--distill-time", "30",
                                      "--no-distill-augment", "--seed", "3"])
    config = _config(args)
    assert config.recover == "distill"
    assert config.distill == DistillSettings(epochs=2, lr=1e-3, batch=4, time_s=30.0, augment=False, seed=3)
    sweep = build_parser().parse_args(["sweep", "m.onnx", "-o", "d", "--recover", "distill", "--distill-time", "5"])
    assert _config(sweep).distill.time_s == 5.0
    for bad in (dict(time_s=0), dict(epochs=0), dict(lr=-1.0), dict(batch=0)):
        with pytest.raises(InvalidArgumentError):
            DistillSettings(**bad)


def test_halcon_handle_takes_recover_distill():
    from onnxprune.halcon import create_pruning, get_pruning_param, set_pruning_param
    h = create_pruning(residual_net(), "magnitude")
    set_pruning_param(h, "recover", "distill")
    assert get_pruning_param(h, "recover") == "distill"
    assert h.config.distill == DistillSettings()


def test_readme_distillation_lines_run(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from test_readme import _commands, _section, run_commands
    monkeypatch.chdir(tmp_path)
    commands = _commands(_section("Recovery by distillation", "bash"))
    assert any("--recover distill" in c for c in commands)
    run_commands(commands, monkeypatch, capsys)
    assert (Path.cwd() / "distilled.onnx").stat().st_size > 0
    assert "distill:" in capsys.readouterr().out


def test_distil_in_float_then_quantize_reports_both():
    from dataclasses import replace
    res = run_pruning(residual_net(), None, {"x": _data()}, replace(_config("distill"), quantize="int8"))
    assert "distillation" in res.report.extra and "fidelity_quantized" in res.report.extra
    assert any(n.op_type == "QuantizeLinear" for n in res.model.graph.node)


def test_the_loss_is_the_runs_damage_measure_in_torch():
    """Each output kind's torch loss equals the oracle's per-sample cost (fidelity/cost.py), averaged over rows:
    a YOLO head's class scores count beside its pixel boxes, per-feature spreads weigh features."""
    from onnxprune.distill.loss import output_loss
    from onnxprune.fidelity.cost import TaskCost
    from onnxprune.fidelity.detection import Head
    from onnxprune.fidelity.tasks import OutputSpec, TaskSpec
    rng = np.random.default_rng(0)
    boxes = rng.uniform(5, 300, (3, 4, 50))
    scores = rng.uniform(0, 1, (3, 5, 50)) ** 4
    det = np.concatenate([boxes, scores], 1)
    det2 = det + np.concatenate([rng.normal(0, 3, boxes.shape), rng.normal(0, 0.05, scores.shape)], 1)
    feats = rng.normal(0, 1, (3, 6, 7)) * np.array([1, 10, 100, 0.1, 1, 5]).reshape(1, 6, 1)
    feats2 = feats + rng.normal(0, 0.3, feats.shape)
    logits, logits2 = rng.normal(0, 2, (3, 10)), rng.normal(0, 2, (3, 10))
    emb, emb2 = rng.normal(0, 1, (3, 16)), rng.normal(0, 1, (3, 16))
    cases = [(OutputSpec("d", "detect", head=Head("v8", 5)), det, det2),
             (OutputSpec("f", "features", scales=tuple(feats.std(axis=(0, 2)))), feats, feats2),
             (OutputSpec("l", "logits"), logits, logits2), (OutputSpec("e", "embed"), emb, emb2)]
    for spec, t, s in cases:
        want = TaskCost(TaskSpec("generic", (spec,), "test"))([t], [s], None).mean()
        got = output_loss(spec, torch.from_numpy(s), torch.from_numpy(t), 1.0, 0.25)
        assert float(got) == pytest.approx(want, rel=1e-6), spec.kind


def test_distillation_reads_more_rows_but_never_the_judges():
    """Scoring and fitting see the rows they would without distillation; the fine-tuning sees every other row
    read, and never one the run's fidelity is judged on."""
    from onnxprune.calibration.dataset import load_calibration
    from onnxprune.pruning.pipeline import distill_split, held_back
    x = _data(300)
    x[:, 0, 0, 0] = np.arange(300)  # each row carries its index
    config = PruneConfig(recover="distill", calibration_samples=64, distill=DistillSettings(rows=280))
    cal = load_calibration({"x": x}, residual_net(), batch_size=32, limit=None)
    usual, rows = distill_split(cal, config)
    fit, judge = held_back(usual, config)

    def ids(c):
        return set(np.concatenate([f["x"][:, 0, 0, 0] for f in c.feeds()]).astype(int))
    assert len(ids(fit)) == 64 and len(ids(judge)) == 16
    assert ids(fit) <= ids(rows) and not ids(judge) & ids(rows) and len(ids(rows)) == 300 - 16
    _, base_judge = held_back(load_calibration({"x": x[sorted(ids(usual))]}, residual_net(), batch_size=32,
                                                      limit=None), config)
    assert ids(base_judge) == ids(judge)  # the judge's rows are the ones a run without distillation holds back


def test_sweep_distils_every_budget(tmp_path):
    from onnxprune.pruning.sweep import sweep
    res = sweep(residual_net(), {"x": _data()}, [0.8, 0.6], tmp_path, write_models=False,
                config=PruneConfig(criterion="magnitude", recover="distill", calibration_samples=64, batch_size=32,
                                   distill=FAST))
    notes = [n for n in res.notes if "distillation" in n]
    assert len(notes) == 2 and not any("not run" in n for n in notes)
    assert all(("least squares kept" in n) != ("(distilled" in n) for n in notes)


def test_token_ids_train_as_integers():
    """A text model's int64 token ids reach the converted module as integers (an embedding lookup), not floats."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    V, D, H, T = 50, 8, 16, 6
    inits = [numpy_helper.from_array(rng.normal(0, 1, (V, D)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.normal(0, 0.5, (D, H)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (H, D)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("ReduceMean", ["o"], ["y"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "text", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", T])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ids = rng.integers(0, V, (96, T)).astype(np.int64)
    res = run_pruning(model, None, {"ids": ids}, replace_config(_config("distill"), task="generic"))
    note = res.report.extra["distillation"]
    assert not note.startswith("not run") and "wall" in note, note


def replace_config(config: PruneConfig, **changes) -> PruneConfig:
    from dataclasses import replace
    return replace(config, **changes)


def test_a_paddle_recognizer_whose_ranks_shape_inference_loses_converts():
    """PP-OCRv4's recognizer (weights as Constant nodes, an SVTR neck behind computed Reshapes where shape
    inference drops the ranks BatchNormalization needs) converts and matches onnxruntime at the rows' size."""
    from conftest import shared_path
    from onnxprune.distill.engine import check_outputs
    from onnxprune.pruning.prepare import prepare
    p = prepare(str(shared_path("models", "ppocrv4_rec.onnx")), {"x": (1, 3, 48, 320)})
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 320)).astype(np.float32)
    student = convert(p.model, "cpu", {"x": x.shape})
    assert len(student.bindings) > 100
    check_outputs(student, p.model, {"x": x}, "cpu")


def test_crops_keep_the_input_aspect_and_text_lines_are_not_mirrored():
    """A 8 x 80 'text line' (a left-to-right ramp): crops span at least 0.35 * 0.75 of its area at its own aspect
    (a square crop stretched tenfold would span under 30 columns), and flip=False never reverses the ramp."""
    from onnxprune.distill.train import augment_batch
    ramp = np.broadcast_to(np.arange(80, dtype=np.float32), (64, 3, 8, 80)).copy()
    out = augment_batch(ramp, np.random.default_rng(0), flip=False)
    span = out[:, 0, 4, -1] - out[:, 0, 4, 0]
    assert span.min() > 35 and np.all(np.diff(out[:, 0, 4, :], axis=-1) >= -1e-4)
    flipped = augment_batch(ramp, np.random.default_rng(0), flip=True)
    reversed_rows = (flipped[:, 0, 4, -1] < flipped[:, 0, 4, 0]).sum()
    assert 0 < reversed_rows < 64  # about half mirrored where the outputs do not care about order
