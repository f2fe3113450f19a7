"""The README's examples, run as written: its command-line lines and its Python block, on the demo files.

The front page can then never rot: a changed flag or name fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from onnxprune.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str, lang: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    block = re.search(rf"```{lang}\n(.*?)```", text[start:], re.S)
    assert block, f"no {lang} block under '## {title}'"
    return block.group(1)


def _commands(block: str) -> list[str]:
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def run_commands(commands: list[str], monkeypatch, capsys) -> None:
    """Each README line through ``main`` (``cd`` moves the test's working folder); every one must exit 0."""
    for command in commands:
        for part in command.split("&&"):
            argv = shlex.split(part)
            if argv[0] == "cd":
                monkeypatch.chdir(Path.cwd() / argv[1])
                continue
            assert argv[0] == "onnxprune", command
            assert main(argv[1:]) == 0, f"README line failed: {command}\n{capsys.readouterr().err}"


def test_readme_command_line_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = _commands(_section("Command line", "bash"))
    assert len(commands) >= 8
    run_commands(commands, monkeypatch, capsys)
    for written in ("small.onnx", "s50.onnx", "sparse.onnx", "plan.json", "report.md", "scores.json", "report.html"):
        assert (Path.cwd() / written).stat().st_size > 0, written


def test_readme_python_block_runs(tmp_path, monkeypatch):
    assert main(["demo", "--files", str(tmp_path)]) == 0
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_section("Python", "python"), str(README), "exec"), namespace)  # noqa: S102 - our own README
    import onnxprune
    assert namespace["report"].prunable_conv_num > 0
    assert isinstance(namespace["result"], onnxprune.PruneResult)
    assert 0 < onnxprune.get_pruning_param(namespace["h"], "pruned_percentage") < 100
    assert (tmp_path / "small2.onnx").exists()
