"""One declaration per setting: the command line, ``prune_model`` and ``PruneConfig`` share every default.

Read by introspection (argparse's parsed defaults, the function's signature, the dataclass fields), so a
default changed in ``config.py`` changes everywhere, and a literal copied elsewhere fails here.
"""

from __future__ import annotations

import inspect
from dataclasses import fields

import onnx
import pytest

import onnxprune
from onnxprune import PruneConfig
from onnxprune.cli import _config, build_parser, main
from onnxprune.config import ALLOCATIONS, ORACLE_COSTS, QUANTIZE_MODES, RANKINGS, RECOVERY_MODES, default
from onnxprune.executors import EXECUTORS
from onnxprune.sparsity import SparsifyConfig

from builders import option_a_shortcut, residual_net

DEFAULTS = PruneConfig()


def _parsed(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, verb_own", [
    (("prune", "m.onnx", "-o", "o.onnx"), {}),
    (("score", "m.onnx", "-o", "s.json"), {"criterion": "oracle"}),
    (("sweep", "m.onnx", "--out", "d"), {"criterion": "oracle"}),
])
def test_cli_defaults_are_the_config_defaults(argv, verb_own):
    config = _config(_parsed(*argv))
    differ = {f.name: getattr(config, f.name) for f in fields(PruneConfig)
              if getattr(config, f.name) != getattr(DEFAULTS, f.name)}
    assert differ == {"progress": True, **verb_own}  # the CLI shows progress; score/sweep score by the oracle


def test_prune_model_keywords_default_to_the_config():
    params = inspect.signature(onnxprune.prune_model).parameters
    shared = [n for n in params if n in {f.name for f in fields(PruneConfig)}]
    assert len(shared) == 13  # every keyword but scores and config
    assert {n: params[n].default for n in shared} == {n: default(n) for n in shared}


def test_cli_choices_are_the_config_choices():
    prune = build_parser()._subparsers._group_actions[0].choices["prune"]
    choices = {a.dest: tuple(a.choices) for a in prune._actions if a.choices}
    assert choices["ranking"] == RANKINGS and choices["recover"] == RECOVERY_MODES
    assert choices["allocation"] == ALLOCATIONS and choices["quantize"] == QUANTIZE_MODES
    assert choices["oracle_cost"] == ORACLE_COSTS and choices["executor"] == EXECUTORS


def test_sparsify_flags_default_to_its_config():
    args = _parsed("sparsify", "m.onnx", "-o", "o.onnx")
    want = SparsifyConfig()
    for name in ("filler", "scope", "steps", "gradual_start", "gradual_gamma", "delta", "n", "dim", "seed"):
        assert getattr(args, name) == getattr(want, name), name
    assert tuple(args.op_types.split(",")) == want.op_types


def test_config_with_conflicting_keywords_is_an_error(tmp_path):
    model = option_a_shortcut()
    with pytest.raises(ValueError, match="max_layer_ratio, percentage"):
        onnxprune.prune_model(model, percentage=30, max_layer_ratio=0.5, config=PruneConfig(percentage=20))
    # a keyword equal to the config's value (or left at its default) is no conflict
    res = onnxprune.prune_model(model, percentage=20, config=PruneConfig(percentage=20))
    assert res.report.pruned_percentage > 0


def test_data_free_cli_takes_every_data_free_criterion(tmp_path, capsys):
    path, out = tmp_path / "r.onnx", tmp_path / "o.onnx"
    onnx.save(residual_net(), str(path))
    assert main(["prune", str(path), "-o", str(out), "--percentage", "30", "--criterion", "bn_scale"]) == 0
    assert out.exists() and "not measured" in capsys.readouterr().out


def test_data_free_ranking_is_resolved_not_replaced(tmp_path):
    path = tmp_path / "r.onnx"
    onnx.save(residual_net(), str(path))
    auto = onnxprune.prune_model(str(path), percentage=30)
    per_mac = onnxprune.prune_model(str(path), percentage=30, ranking="per_mac")
    assert auto.plan.meta["ranking"] == "raw" and per_mac.plan.meta["ranking"] == "per_mac"

