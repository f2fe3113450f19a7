"""Evaluation rows: every row of an evaluation set, or every calibration row calibration did not take; streamed."""

from __future__ import annotations

import numpy as np

from onnxprune.calibration import spread_indices
from onnxprune.fidelity.held_out import held_out, outputs_of
from onnxprune.runtime import make_session

from builders import Builder


def _model(batch=None):
    b = Builder(shape=(batch, 3, 4, 4))
    b.output(b.conv(b.op("Relu", [b.conv("x", 3, 4)]), 4, 2, k=1), 4)
    return b.build()


def _sorted_file(path, n=50):
    """Float inputs whose first pixel is the row index; labels sorted by class (5 classes of 10)."""
    x = np.zeros((n, 3, 4, 4), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    np.savez(path, x=x, labels=np.repeat(np.arange(5), n // 5))
    return x


def _rows(batches):
    got = list(batches)
    return np.concatenate([f["x"][:, 0, 0, 0] for f, _ in got]).astype(int), got


def test_calibration_file_gives_every_row_calibration_did_not_take(tmp_path):
    _sorted_file(tmp_path / "c.npz")
    ev = held_out(tmp_path / "c.npz", None, _model(), preprocess=None, batch_size=8, calibration_limit=20)
    rows, batches = _rows(ev.batches())
    want = np.setdiff1d(np.arange(50), spread_indices(50, 20))
    np.testing.assert_array_equal(rows, want)
    assert [len(y) for _, y in batches] == [8, 8, 8, 6]  # re-batched after the taken rows are dropped
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.repeat(np.arange(5), 10)[want])
    assert ev.description(30) == ("30 held-out rows of the calibration file (all but the 20 rows spread over it "
                                  "that calibration took)")
    np.testing.assert_array_equal(_rows(ev.batches())[0], want)  # a second pass streams the same rows
    assert held_out(tmp_path / "c.npz", None, _model(), preprocess=None, batch_size=8, calibration_limit=50) is None


def test_evaluation_set_is_used_whole_and_a_fixed_batch_of_one_is_kept(tmp_path):
    x = _sorted_file(tmp_path / "e.npz", 30)
    ev = held_out(None, tmp_path / "e.npz", _model(), preprocess=None, batch_size=8, calibration_limit=10)
    rows, _ = _rows(ev.batches())
    np.testing.assert_array_equal(rows, np.arange(30))
    assert ev.description(30) == "all 30 rows of the evaluation set"
    fixed = held_out(tmp_path / "e.npz", None, _model(1), preprocess=None, batch_size=1, calibration_limit=10)
    rows, batches = _rows(fixed.batches())
    assert len(rows) == 20 and all(len(y) == 1 for _, y in batches)
    four = held_out(tmp_path / "e.npz", None, _model(4), preprocess=None, batch_size=4, calibration_limit=10)
    rows, batches = _rows(four.batches())  # the reader yields 28 rows (7 batches), 9 of them taken: 19 left
    assert [len(y) for _, y in batches] == [4] * 4  # full batches of the model's 4 only
    np.testing.assert_array_equal(rows, np.setdiff1d(np.arange(28), spread_indices(30, 10))[:16])
    seven = held_out(tmp_path / "e.npz", None, _model(4), preprocess=None, batch_size=4, calibration_limit=7)
    assert [len(y) for _, y in seven.batches()] == [4] * 5  # 21 rows left: the last one does not fill a batch
    model = _model()
    outs, labels = outputs_of({"dense": model}, ev.batches())
    want = make_session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.concatenate([b[0] for b in outs["dense"]]), want, rtol=1e-6)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(5), 6))
