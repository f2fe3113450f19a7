"""Models that fix their batch size (static exports, mostly 1): no flag needed, the oracle included."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.pruning.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.scoring.oracle import OracleScorer

from builders import level_heads


def _data(n: int = 8) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 1, (n, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("fixed", [1, 2])
def test_oracle_at_a_fixed_batch_equals_the_dynamic_copy(fixed):
    """Same weights, batch dim 'N' or fixed: the same scores (the fixed one is never tiled past its batch)."""
    data = _data()
    dynamic = OracleScorer(prepare(level_heads()).analysis, rows_per_run=16)  # tiles 4 perturbations x 4 rows
    want = dynamic.score_all([({"x": data[i:i + 4]}, None) for i in (0, 4)])
    scorer = OracleScorer(prepare(level_heads(fixed)).analysis)
    assert scorer.fixed_batch == fixed and scorer.rows_per_run == fixed
    got = scorer.score_all([({"x": data[i:i + fixed]}, None) for i in range(0, 8, fixed)])
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[r] for r in sorted(want)], [want[r] for r in sorted(want)], rtol=1e-5)
    assert max(want.values()) > 0


def test_prune_cli_on_a_batch_of_one_needs_no_flag(tmp_path, caplog):
    model, calib, out = tmp_path / "fixed.onnx", tmp_path / "calib.npz", tmp_path / "out.onnx"
    onnx.save(level_heads(1), str(model))
    np.savez(calib, x=_data(24))
    with caplog.at_level(logging.INFO):
        assert main(["prune", str(model), "-o", str(out), "--calib", str(calib), "--target-macs", "0.7",
                     "--min-fidelity", "0"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "the model fixes its batch size to 1: calibrating in batches of 1 (not 32)" in messages
    assert any(m.startswith("criterion auto: oracle") for m in messages)
    pruned = onnx.load(str(out))
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    outs = make_session(pruned).run(None, {"x": _data(1)})
    assert len(outs) == 4 and all(np.isfinite(o).all() for o in outs)


def test_shapes_keep_a_fixed_batch():
    """Probing and timing feeds use the model's own batch where it fixes one (a calibration row is batch 1)."""
    from onnxprune.graph.probe import resolve_input_shapes
    assert resolve_input_shapes(level_heads(2), {"x": [1, 3, 8, 8]}) == {"x": (2, 3, 8, 8)}
    assert resolve_input_shapes(level_heads(), {"x": [1, 3, 8, 8]}, batch=5) == {"x": (5, 3, 8, 8)}
    assert prepare(level_heads(2)).with_batch(64) == {"x": (2, 3, 8, 8)}
    assert prepare(level_heads()).with_batch(64) == {"x": (64, 3, 8, 8)}
