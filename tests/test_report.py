"""One report, every rendering: the terminal's content in the Markdown, the HTML page's inline plots, the sweep page.

The page is checked structurally (one inline PNG per expected figure, no
external URL); where Chromium is on PATH it is also rendered headless and
the screenshot must not be blank (CI has no Chromium: that part skips).
"""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from onnxprune.cli import main
from onnxprune.demo import demo_files
from onnxprune.latency.timing import Timing
from onnxprune.report.sweep import SweepPoint, SweepResult, group_rows, write_sweep_report

MODEL = str(demo_files()[0])
PNG = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    """The decoded PNGs the page embeds (every <img>), after checking each is an inline data URI."""
    srcs = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert all(s.startswith("data:image/png;base64,") for s in srcs), srcs
    return [base64.b64decode(s.split(",", 1)[1]) for s in srcs]


def _no_external_urls(page: str) -> None:
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page) and "http://" not in page and "https://" not in page


def _prune_page(tmp_path: Path, *extra: str) -> tuple[str, str]:
    page = tmp_path / "r.html"
    assert main(["prune", MODEL, "-o", str(tmp_path / "s.onnx"), "--percentage", "30", "--report", str(page),
                 *extra]) == 0
    return page.read_text(), str(page)


def test_markdown_holds_what_the_terminal_printed(tmp_path, capsys):
    md = tmp_path / "r.md"
    assert main(["prune", MODEL, "-o", str(tmp_path / "s.onnx"), "--percentage", "30", "--report", str(md)]) == 0
    printed = capsys.readouterr().out.splitlines()
    text = md.read_text()
    assert printed[0].startswith("method: magnitude scores") and printed[0] in text
    for line in printed:  # every row of every table, every fidelity and verification line
        cells = [c for c in re.split(r"\s{2,}", line.strip()) if c and set(c) != {"-"}]
        if line.startswith("wrote "):
            continue
        assert all(c in text for c in cells), line
    assert "## Run" in text and "command: onnxprune prune" in text and "calibration set: none (data-free)" in text


def test_html_report_embeds_its_plots(tmp_path):
    pytest.importorskip("matplotlib")
    page, _ = _prune_page(tmp_path)
    images = _images(page)
    assert len(images) == 3 and all(i.startswith(PNG) and len(i) > 1000 for i in images)
    assert page.count("<figcaption>") == 3 and ".png</figcaption>" not in page
    assert "Kept kernels (output channels) per channel group" in page and "<td>MACs</td>" in page
    assert "How much each channel group matters to the magnitude criterion" in page
    _no_external_urls(page)


def test_html_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page, _ = _prune_page(tmp_path)
    assert _images(page) == [] and "<table>" in page and "tables only" in page and "onnxprune[plot]" in page


def _non_blank(png: Path) -> float:
    """Share of the screenshot's pixels that are not (near) white."""
    from PIL import Image
    img = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    return float((img < 200).mean())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH (CI has none): structure only")
def test_html_report_renders_in_headless_chromium(tmp_path):
    pytest.importorskip("matplotlib")
    page, path = _prune_page(tmp_path)
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2000",
                        f"file://{path}"], check=True, capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(PNG)
    assert _non_blank(shot) > 0.02  # tables, bars and text drawn, not an empty or broken page


def _sweep_result(n_points: int = 2) -> SweepResult:
    layers = [("conv1", 16), ("b1.conv1", 16), ("b1.conv2", 16), ("b2.conv1", 32)]
    groups = {"conv1": 0, "b1.conv2": 0, "b1.conv1": 1, "b2.conv1": 2}  # conv1 and b1.conv2: one residual stream
    points = [SweepPoint(b, b, b, Timing(1.0 * b, 0.9 * b, 1.1 * b), 0.9 * b,
                         {n: max(1, int(k * b)) for n, k in layers}) for b in (0.8, 0.6, 0.4)[:n_points]]
    return SweepResult("m", "macs", "energy", Timing(1.0, 0.95, 1.05), 0.95, "top-1 accuracy", "100 held-out rows",
                       "CPU, batch 1", points, layers, {"conv1": 3.0, "b1.conv1": 1.0, "b2.conv1": 2.0}, groups=groups)


def test_sweep_page_one_row_per_group_one_speedup_captions(tmp_path):
    pytest.importorskip("matplotlib")
    r = _sweep_result()
    assert [label for label, _ in group_rows(r)] == ["conv1 (+1 layer)", "b1.conv1", "b2.conv1"]
    page = write_sweep_report(r, tmp_path).read_text()
    assert len(_images(page)) == 4 and page.count("<figcaption>") == 4 and ".png</figcaption>" not in page
    assert "of fastest rounds" not in page and page.count("<th>speed-up</th>") == 1
    assert "1.25x</td>" in page and "1.67x</td>" in page  # outside the noise: no mark
    assert "the summed scores of its channels, counted once per group" in page
    assert "date: " in page and "machine: " in page and "calibration set: " in page
    _no_external_urls(page)


def test_sweep_speedup_inside_the_noise_is_marked():
    from onnxprune.report.sweep import speedup
    assert speedup(Timing(1.0, 0.9, 1.1), Timing(0.95, 0.85, 1.0)) == "1.05x (inside the timing noise)"
    assert speedup(Timing(1.0, 0.9, 1.1), Timing(0.5, 0.45, 0.55)) == "2.00x"


def test_sparsify_says_why_its_file_is_not_smaller(tmp_path, capsys):
    """50% zeros stay dense (sparse tensors pay off above 67%): the size line says why the file did not shrink."""
    out = tmp_path / "sparse.onnx"
    assert main(["sparsify", MODEL, "-o", str(out), "--threshold", "0.5", "--scope", "global"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("size: "))
    assert out.stat().st_size >= Path(MODEL).stat().st_size
    assert f"the input was {Path(MODEL).stat().st_size} bytes: not smaller, because a zero stored densely" in line
    assert "onnxprune.sparsity" in line and "gzip" in line
    small = tmp_path / "s90.onnx"  # 90%: stored sparse, smaller, and no excuse printed
    assert main(["sparsify", MODEL, "-o", str(small), "--threshold", "0.9", "--scope", "global"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("size: "))
    assert "not smaller" not in line and small.stat().st_size < Path(MODEL).stat().st_size


def _report(back_off: bool):
    from onnxprune.fidelity.measure import Fidelity
    from onnxprune.report import LayerChange, ModelStats, Report
    fid = Fidelity("classify", "top1_agreement", {"top1_agreement": 0.97}, 32, "held-back calibration rows", 0.9)
    rep = Report(ModelStats(1000, 10_000, 4000, 1.0), ModelStats(500, 4_000, 2000, 0.6, fidelity=fid),
                 [LayerChange("a", "Conv", 16, 8, 0), LayerChange("b", "Conv", 16, 8, 0),
                  LayerChange("c", "Conv", 32, 20, 1), LayerChange("d", "Conv", 8, 8, None)], 20, 64,
                 extra={"latency_range_ms": {"before": [1.0, 0.9, 1.1], "after": [0.6, 0.55, 0.65]}})
    if back_off:
        rep.extra["back_off_points"] = [[0.2, 0.7], [0.6, 0.99], [0.4, 0.97]]
    return rep


@pytest.mark.parametrize("back_off", [False, True])
def test_prune_page_has_one_plot_per_expected_figure(back_off):
    """Kept share and kept widths always; fidelity vs MACs only when the back-off tried more than one budget."""
    pytest.importorskip("matplotlib")
    page = _report(back_off).html("t")
    images = _images(page)
    assert len(images) == (3 if back_off else 2) and all(i.startswith(PNG) and len(i) > 1000 for i in images)
    assert ("Fidelity to the dense model against the MACs kept" in page) == back_off
    from onnxprune.report.prune import layer_rows  # the widths figure: a row per channel group that shrank
    assert layer_rows(_report(back_off)) == ([("a (+1 layer)", 16), ("c", 32)], [8, 20])
    _no_external_urls(page)


def test_group_importance_counts_each_unit_once_in_its_group():
    """The prune report's per-group importance: the run's own scores, each unit once, the removed part exact."""
    from onnxprune import prune_model
    from onnxprune.pruning.prepare import prepare
    from onnxprune.report.groups import group_of_layer
    from onnxprune.scoring import magnitude_scores
    res = prune_model(MODEL, percentage=40, criterion="magnitude")
    analysis = prepare(MODEL).analysis
    scores = magnitude_scores(analysis)
    rows = res.report.importance
    assert [g.layer for g in rows] == list(dict.fromkeys(  # one row per group, named by its first prunable layer
        [next(n for n, lay in analysis.layers.items() if lay.prunable_kernels
              and group_of_layer(analysis).get(n, n) == group_of_layer(analysis).get(name, name))
         for name, layer in analysis.layers.items() if layer.prunable_kernels]))
    assert sum(g.total for g in rows) == pytest.approx(sum(scores.values()), rel=1e-9)
    assert sum(g.removed for g in rows) == pytest.approx(sum(scores[r] for r in res.removed_units), rel=1e-9)
    assert all(0 <= g.removed <= g.total for g in rows) and any(g.removed > 0 for g in rows)
    assert res.report.to_dict()["importance"][0]["label"] == rows[0].label
    from onnxprune import apply_plan  # a saved plan carries no scores: nothing to plot, not a row of zeros
    assert apply_plan(MODEL, res.plan).report.importance == []


def test_sparsify_shares_the_report_and_json_of_prune(tmp_path, capsys):
    """sparsify --report x.html|x.md and --json render the one report the terminal prints."""
    import json
    out, page, md = tmp_path / "s.onnx", tmp_path / "r.html", tmp_path / "r.md"
    assert main(["sparsify", MODEL, "-o", str(out), "--threshold", "0.6", "--report", str(md)]) == 0
    printed = capsys.readouterr().out.splitlines()
    text = md.read_text()
    verification = next(x for x in printed if x.startswith("verification: ok"))
    assert verification in text and "## Run" in text and "command: onnxprune sparsify" in text
    assert main(["sparsify", MODEL, "-o", str(out), "--threshold", "0.6", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["exit_code"] == 0 and got["output"] == str(out) and got["verification"]["ok"]
    zeros = sum(round(w["sparsity_after"] * np.prod(w["shape"])) for w in got["layers"])
    assert got["sparsity"]["after"] == pytest.approx(zeros / got["values"]) and got["sparsity"]["after"] > 0.55
    if importlib.util.find_spec("matplotlib") is not None:
        assert main(["sparsify", MODEL, "-o", str(out), "--threshold", "0.6", "--report", str(page)]) == 0
        html = page.read_text()
        assert len(_images(html)) == 1 and "zero after the run" in html
        _no_external_urls(html)
