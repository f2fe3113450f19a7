"""The command line's edges: help for every flag, -v anywhere, --version, --json, --report targets, exit codes."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import onnxprune
from onnxprune.cli import COMMANDS, build_parser, main
from onnxprune.demo import demo_files
from onnxprune.errors import EXIT_BELOW_FLOOR, BelowFloorError

MODEL = str(demo_files()[0])


def _verbs() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("verb", sorted(_verbs()))
def test_every_flag_has_help(verb):
    missing = [a.option_strings or a.dest for a in _verbs()[verb]._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_prune_help_names_the_real_default():
    text = _verbs()["prune"].format_help()
    assert "{auto,oracle," in text and "default: auto with --calib" in " ".join(text.split())
    assert "share of prunable kernels REMOVED, 0-100" in " ".join(text.split())


@pytest.mark.parametrize("argv, verbose", [
    (["inspect", "m.onnx"], False), (["-v", "inspect", "m.onnx"], True), (["inspect", "m.onnx", "-v"], True),
    (["prune", "m", "-o", "x", "-v"], True)])
def test_verbose_before_or_after_the_verb(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"onnxprune {onnxprune.__version__}\n"


def test_sweep_takes_o_for_its_folder():
    assert build_parser().parse_args(["sweep", "m.onnx", "-o", "dir"]).out == "dir"


def test_prune_json_is_one_object_on_stdout(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main(["prune", MODEL, "-o", str(out), "--target-macs", "0.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(data) == ["exit_code", "fidelity_note", "macs", "output", "params", "prunable_kernels",
                            "pruned_kernels", "size_bytes"]
    assert data["fidelity_note"].startswith("not measured (no data given")
    assert data["output"] == str(out) and data["exit_code"] == 0 and out.exists()
    assert data["macs"]["before"] == 5_534_592 and data["macs"]["after"] <= 0.5 * 5_534_592
    assert data["params"]["before"] == 45_098 > data["params"]["after"]


def test_prune_json_on_failure_says_the_exit_code(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"output": None, "exit_code": 2, "error": f"{tmp_path / 'missing.onnx'}: no such file"}
    assert err == f"onnxprune: error: {tmp_path / 'missing.onnx'}: no such file\n"


def test_below_floor_exits_3(monkeypatch, capsys):
    def below(args):
        raise BelowFloorError("fidelity 0.80 is below --min-fidelity 0.90: nothing written")
    monkeypatch.setitem(COMMANDS, "inspect", below)
    assert main(["inspect", MODEL]) == EXIT_BELOW_FLOOR == 3
    assert capsys.readouterr().err == "onnxprune: error: fidelity 0.80 is below --min-fidelity 0.90: nothing written\n"


def test_report_html_is_a_page(tmp_path):
    page = tmp_path / "r.html"
    assert main(["prune", MODEL, "-o", str(tmp_path / "s.onnx"), "--percentage", "30", "--report", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<table>") == 2 and "<td>MACs</td>" in text
    assert "Kept kernels per layer" in text and "command: onnxprune prune" in text


def test_report_of_unknown_kind_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    assert main(["prune", MODEL, "-o", str(out), "--report", str(tmp_path / "r.txt")]) == 2
    assert capsys.readouterr().err == (f"onnxprune: error: --report {tmp_path / 'r.txt'}: give a .md, .json or "
                                       ".html file (or - for stdout)\n")
    assert list(tmp_path.iterdir()) == []


def test_report_dash_is_markdown_on_stdout(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    assert main(["prune", MODEL, "-o", str(out), "--report", "-"]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.startswith("# onnxprune: ") and "| | before | after | kept |\n" in stdout
    assert stderr == f"wrote {out}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]
    assert main(["prune", MODEL, "-o", str(out), "--report", "-", "--json"]) == 2


@pytest.mark.parametrize("special", ["/dev/stdout", "/dev/null"])
def test_report_to_a_special_file(tmp_path, capfd, special):
    out = tmp_path / "s.onnx"
    assert main(["prune", MODEL, "-o", str(out), "--report", special]) == 0
    assert out.exists()
    assert ("| | before | after | kept |" in capfd.readouterr().out) == (special == "/dev/stdout")


def test_data_free_prune_takes_the_ranking_given(tmp_path):
    """The data-free run goes the one config path: ranking auto resolves to raw, a given ranking is kept."""
    seen = []
    for extra in ([], ["--ranking", "per_mac"]):
        plan = tmp_path / f"plan{len(seen)}.json"
        assert main(["prune", MODEL, "-o", str(tmp_path / f"s{len(seen)}.onnx"), "--save-plan", str(plan),
                     *extra]) == 0
        seen.append(json.loads(plan.read_text())["meta"]["ranking"])
    assert seen == ["raw", "per_mac"]


def test_uint8_images_of_another_size_are_resized_with_a_warning(tmp_path, caplog):
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=np.random.default_rng(0).integers(0, 255, (8, 32, 32, 1), dtype=np.uint8))
    assert main(["score", MODEL, "--calib", str(calib), "--criterion", "energy", "-o", str(tmp_path / "s.json")]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{calib}: input images of 32x32 are resized to the model's 28x28 (resize_crop; --size/--resize choose how)"]
