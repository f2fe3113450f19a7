"""Latency tables (pieces, widths, cache), selection under a latency budget, and the --target-latency path.

Timings are never asserted (the machine is shared): the tests check the
shapes the pieces are timed at, the cache keys, and the knapsack's choice on
synthetic tables against brute force.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from builders import chain_flatten_gemm, inverted_residual, option_a_shortcut, residual_net
from onnxprune.allocation.latency import choose, group_options, min_width
from onnxprune.config import PruneConfig
from onnxprune.errors import InvalidArgumentError
from onnxprune.latency import LatencySettings, LatencyTable, TableCache, Timing, build_table, candidate_widths
from onnxprune.latency import table as table_mod
from onnxprune.latency.cache import table_key
from onnxprune.latency.predict import LatencyModel
from onnxprune.latency.pieces import WidthMasks, build_piece, group_nodes
from onnxprune.latency.table import GroupLatency
from onnxprune.pruning.prepare import prepare
from onnxprune.allocation.selection import Constraints, Target

FAST = dict(rounds=1, runs=1)


def test_candidate_widths():
    assert candidate_widths(8) == list(range(1, 9))
    w = candidate_widths(64)
    assert w[-1] == 64 and all(x in w for x in range(4, 65, 4)) and 63 in w and 33 in w
    assert all(x % 8 == 0 or x % 2 == 1 for x in candidate_widths(128))
    assert candidate_widths(64, round_to=16) == [16, 32, 48, 64]
    assert candidate_widths(20, min_width=8)[0] >= 8 and candidate_widths(20, min_width=8)[-1] == 20


def _weights(model: onnx.ModelProto) -> dict[str, tuple]:
    inits = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node}


def test_piece_of_a_chain_has_the_kept_width_on_both_sides():
    """x -> Conv(8) -> BN -> Relu -> Conv(6) -> ... -> Gemm: group of the first conv at width 3."""
    p = prepare(chain_flatten_gemm())
    a = p.analysis
    group = next(g for g in a.groups if not g.frozen and len(g.units) == 8)
    nodes = group_nodes(a, group)
    assert [n.op_type for n in nodes] == ["Conv", "Conv"]
    piece, shapes = build_piece(a, nodes, WidthMasks(a, group, 3), batch=5)
    w = _weights(piece)
    assert w[nodes[0].name][0] == 3 and w[nodes[1].name][1] == 3
    assert shapes[nodes[1].input[0]] == (5, 3, 8, 8)
    onnx.checker.check_model(piece)


def test_piece_of_a_depthwise_group_sets_group():
    p = prepare(inverted_residual())
    a = p.analysis
    group = next(g for g in a.groups if not g.frozen and len(g.units) == 24)
    nodes = group_nodes(a, group)
    piece, _ = build_piece(a, nodes, WidthMasks(a, group, 8), batch=1)
    dw = next(n for n in piece.graph.node if any(at.name == "group" and at.i > 1 for at in n.attribute))
    assert next(at.i for at in dw.attribute if at.name == "group") == 8
    assert _weights(piece)[dw.name][0] == 8


def test_stream_group_shrinks_every_stage_and_keeps_a_channel():
    """Option-A stream (8 channels, padded to 16): every tensor loses its share and keeps at least one."""
    p = prepare(option_a_shortcut())
    a = p.analysis
    group = max((g for g in a.groups if not g.frozen), key=lambda g: len(g.units))
    for width in (1, len(group.units) // 2):
        masks = WidthMasks(a, group, width)
        for node in group_nodes(a, group):
            for t in (node.input[0], node.output[0]):
                keep = masks(t)
                assert keep is None or 1 <= keep.sum() < keep.size


def test_table_and_cache(tmp_path, monkeypatch):
    p = prepare(chain_flatten_gemm())
    settings = LatencySettings(batch=2, threads=1, cache_dir=str(tmp_path), **FAST)
    table = build_table(p.analysis, settings)
    prunable = [g.id for g in p.analysis.groups if not g.frozen]
    assert sorted(table.groups) == prunable and table.cached == 0
    for gid in prunable:
        gl = table.groups[gid]
        assert list(gl.widths) == sorted(gl.widths) and gl.widths[-1] == len(p.analysis.groups[gid].units)
        assert all(t.low <= t.median <= t.high and t.median > 0 for t in gl.times)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_timing(*args, **kw):
        raise AssertionError("measured again despite a cached table")
    monkeypatch.setattr(table_mod, "measure_group", no_timing)
    monkeypatch.setattr(table_mod, "time_interleaved", no_timing)
    again = build_table(p.analysis, settings)
    assert again.cached == len(prunable) and again.groups == table.groups
    # another batch, thread count or model is another key: measured afresh
    assert table_key(p.model, settings) != table_key(p.model, LatencySettings(batch=1, threads=1))
    assert table_key(p.model, settings) != table_key(p.model, LatencySettings(batch=2, threads=2))
    assert table_key(p.model, settings) != table_key(prepare(inverted_residual()).model, settings)
    with pytest.raises(AssertionError, match="measured again"):
        build_table(p.analysis, LatencySettings(batch=3, threads=1, cache_dir=str(tmp_path), **FAST))


def _synthetic(p, curves: dict[int, dict[int, float]], dense: float) -> LatencyTable:
    t = LatencyTable(LatencySettings(**FAST), Timing(dense, dense, dense))
    for gid, curve in curves.items():
        ws = sorted(curve)
        t.groups[gid] = GroupLatency(tuple(ws), tuple(Timing(curve[w], curve[w], curve[w]) for w in ws))
    return t


def test_model_multiplies_the_two_sides_of_a_layer():
    """conv2 sits between group A (its input) and group B (its output): its time scales with r_A * r_B."""
    p = prepare(chain_flatten_gemm())
    a = p.analysis
    ga, gb = (next(g.id for g in a.groups if not g.frozen and len(g.units) == n) for n in (8, 6))
    table = _synthetic(p, {ga: {w: w / 8 for w in range(1, 9)}, gb: {w: w / 6 for w in range(1, 7)}}, 10.0)
    model = LatencyModel(a, table)
    assert model.predict({}) == pytest.approx(10.0)
    total = sum(layer.macs for layer in a.layers.values())
    share = {name: layer.macs / total for name, layer in a.layers.items()}
    conv1, conv2 = (n.name for n in group_nodes(a, a.groups[ga]))
    gemm = next(name for name in a.layers if name not in (conv1, conv2))
    want = 10.0 * (share[conv1] * 0.5 + share[conv2] * 0.5 * (3 / 6) + share[gemm] * (3 / 6))
    assert model.predict({ga: 4, gb: 3}) == pytest.approx(want)
    # the separable costs add up to the prediction at the point they are linearised around
    at = {ga: 4, gb: 3}
    assert model.group_cost(ga, 4, at) + model.group_cost(gb, 3, at) == pytest.approx(want)


def test_knapsack_over_a_synthetic_table_matches_brute_force():
    p = prepare(chain_flatten_gemm())
    a = p.analysis
    gids = [g.id for g in a.groups if not g.frozen]
    rng = np.random.default_rng(0)
    scores = {r: float(rng.random()) for r in a.prunable_units}
    curves = {}
    for gid in gids:
        n = len(a.groups[gid].units)
        curves[gid] = {w: 0.1 + w / n + (0.3 if w % 2 else 0.0) for w in range(1, n + 1)}  # odd widths slow
    dense = 2.0
    table = _synthetic(p, curves, dense)
    model = LatencyModel(a, table)
    cons = Constraints(max_layer_ratio=0.9)
    for fraction in (0.9, 0.7, 0.5):
        choice = choose(a, table, scores, fraction, cons)
        opts = [group_options(a, model, scores, g, cons) for g in gids]
        best = min((sum(o.loss for o in combo) for combo in itertools.product(*opts)
                    if model.predict({o.payload[0]: o.payload[1] for o in combo}) <= fraction * dense + 1e-12),
                   default=None)
        got = sum(scores[r] for r in choice.removed)
        assert best is not None and got == pytest.approx(best, abs=1e-9)
        assert choice.predicted_ms <= fraction * dense + 1e-9
        for g, w in choice.widths.items():  # a slow odd width is never worth it here
            assert w == len(a.groups[g].units) or w % 2 == 0
        # within a group the lowest-scored units go first
        for g in gids:
            units = a.groups[g].units
            gone = [r for r in units if r in choice.removed]
            kept = [r for r in units if r not in choice.removed]
            if gone and kept:
                assert max(scores[r] for r in gone) <= min(scores[r] for r in kept)


def test_options_respect_limits():
    p = prepare(chain_flatten_gemm())
    a = p.analysis
    gid = next(g.id for g in a.groups if not g.frozen and len(g.units) == 8)
    model = LatencyModel(a, _synthetic(p, {gid: {w: float(w) for w in range(1, 9)}}, 10.0))
    scores = {r: 1.0 for r in a.prunable_units}
    cons = Constraints(max_layer_ratio=0.5)
    opts = group_options(a, model, scores, gid, cons)
    assert [o.payload[1] for o in opts] == [8, 7, 6, 5, 4] and min_width(8, cons) == 4
    assert all(o.loss == 8 - o.payload[1] for o in opts)
    assert [o.cost for o in opts] == sorted((o.cost for o in opts), reverse=True)


def test_a_droppable_branch_gets_a_width_zero_option_only_with_allow_drop():
    p = prepare(residual_net())
    a = p.analysis
    branch = a.droppable_groups()[0]
    model = LatencyModel(a, _synthetic(p, {branch.id: {w: float(w) for w in range(1, 7)}}, 10.0))
    scores = {r: 1.0 for r in a.prunable_units}
    assert all(o.payload[1] > 0 for o in group_options(a, model, scores, branch.id, Constraints()))
    opts = group_options(a, model, scores, branch.id, Constraints(allow_drop=True))
    assert opts[-1].payload[1] == 0 and opts[-1].cost == 0 and opts[-1].loss == len(branch.units)


def test_target_latency_validation():
    assert Target(latency=0.5).describe() == "<= 50% of measured latency"
    with pytest.raises(InvalidArgumentError):
        Target(latency=1.5)
    with pytest.raises(InvalidArgumentError):
        Target(macs=0.5, latency=0.5)
    with pytest.raises(InvalidArgumentError):
        PruneConfig(criterion="magnitude", target_latency=0.5, steps=3)
    with pytest.raises(InvalidArgumentError):
        PruneConfig(criterion="magnitude", target_latency=0.5, latency_batch=0)


def test_cli_target_latency_measures_and_reports(tmp_path, capsys):
    from onnxprune.cli import main
    model = tmp_path / "m.onnx"
    onnx.save(inverted_residual(), model)
    rc = main(["prune", str(model), "-o", str(tmp_path / "fast.onnx"), "--target-latency", "0.8",
               "--latency-batch", "4", "--latency-threads", "1", "--latency-cache", str(tmp_path / "cache"),
               "--report", str(tmp_path / "r.md"), "--min-fidelity", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "latency target" in out and "measured" in out
    assert "batch 4, 1 thread(s)" in (tmp_path / "r.md").read_text()
    assert list((tmp_path / "cache").glob("*.json"))
    onnx.checker.check_model(onnx.load(tmp_path / "fast.onnx"))


def _sweep_demo(tmp_path, budgets: str, latency_batch: int) -> int:
    """``onnxprune sweep`` on the demo files (energy scores, 64 calibration rows, the rest held out)."""
    from onnxprune.cli import main
    assert main(["demo", "--files", str(tmp_path / "demo")]) == 0
    d = tmp_path / "demo"
    return main(["sweep", str(d / "model.onnx"), "--calib", str(d / "calib.npz"), "--calib-limit", "64",
                 "--criterion", "energy", "--budgets", budgets, "-o", str(tmp_path / "sw"),
                 "--latency-batch", str(latency_batch), "--no-models"])


def test_sweep_on_the_demo_writes_html_with_the_plots(tmp_path, capsys):
    assert _sweep_demo(tmp_path, "0.8,0.6", 8) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'sw'}/sweep.html, sweep.md and 4 plots"
    page = (tmp_path / "sw" / "sweep.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "top-1 accuracy" in md and "held-out rows" in md and "| 0.6 |" in md
    data = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [pt["budget"] for pt in data["points"]] == [0.8, 0.6]
    assert all(0 <= pt["quality"] <= 1 and pt["macs_kept"] <= b + 1e-9 for pt, b in zip(data["points"], (0.8, 0.6)))
    assert data["eval_description"].startswith("436 held-out rows of the calibration file (all but the 64 rows")


def test_sweep_report_without_matplotlib_keeps_the_tables(tmp_path, monkeypatch, caplog, capsys):
    """No plot extra: the report is written with its tables, no image, and says how to get the plots."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert _sweep_demo(tmp_path, "0.7", 4) == 0
    page = (tmp_path / "sw" / "sweep.html").read_text()
    assert "data:image/png" not in page and "<table>" in page
    assert not list((tmp_path / "sw").glob("*.png"))
    assert "| 0.7 |" in (tmp_path / "sw" / "sweep.md").read_text()
    assert any("onnxprune[plot]" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr().out.splitlines()[-1] == \
        f'wrote {tmp_path / "sw"}/sweep.html, sweep.md and no plots (pip install "onnxprune[plot]" for them)'


def test_one_timer_speed_against_dense():
    """Every caller times through latency.measure: models on one feed interleaved, a pruned model as a Speed."""
    from onnxprune.latency.timing import Speed, Timing, time_against_dense, time_models
    s = Speed(Timing(2.0, 1.8, 2.4), Timing(1.0, 0.9, 1.5))
    assert (s.fraction, s.fastest_fraction, s.speedup, s.outside_noise) == (0.5, 0.5, 2.0, True)
    assert not Speed(Timing(2.0, 1.4, 2.4), Timing(1.6, 1.2, 1.8)).outside_noise
    model = residual_net()
    feed = {"x": np.zeros((1, 3, 8, 8), np.float32)}
    settings = LatencySettings(rounds=2, runs=1)
    t = time_models({"a": model, "b": model}, feed, settings)
    assert set(t) == {"a", "b"} and all(v.low <= v.median <= v.high for v in t.values())
    speed = time_against_dense(model, model, feed, settings)
    assert speed.dense.median > 0 and speed.pruned.median > 0 and speed.dense.as_list()[0] == speed.dense.median
