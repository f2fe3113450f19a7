"""Models with external data (issue 17, item 5), kept small: a few MB stand in for > 2 GB.

Lowering ``onnxprune.graph.external.LIMIT`` sends a 4 MB model through every
path a model over 2 GB takes (checker and shape inference on the skeleton,
onnxruntime sessions fed the weights as arrays, the probe on a skeleton,
external data written beside the output). The real 2.5 GB run is
``benchmarks/big_model.py``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

import onnxprune.graph.external as external
from onnxprune.pruning.api import prune_model
from onnxprune.cli import main
from onnxprune.config import PruneConfig
from onnxprune.graph.io import load_model
from onnxprune.runtime import make_session

from builders import Builder


def wide_model() -> onnx.ModelProto:
    """x[N,16,4,4] -> Conv 1x1 (256) -> Relu -> Conv 3x3 (256) -> Relu -> Conv 1x1 (8): about 2.6 MB of weights."""
    b = Builder(shape=(None, 16, 4, 4))
    h = b.op("Relu", [b.conv("x", 16, 256, k=1)])
    h = b.op("Relu", [b.conv(h, 256, 256, k=3)])
    b.output(b.conv(h, 256, 8, k=1), 4)
    return b.build()


@pytest.fixture()
def external_model(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    onnx.save(wide_model(), str(src / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=1024)
    return src / "m.onnx"


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def run(model, feed):
    return make_session(model).run(None, feed)[0]


@pytest.mark.parametrize("as_if_over_2gb", [False, True])
def test_external_data_prunes_and_saves_beside_output(external_model, tmp_path, monkeypatch, as_if_over_2gb):
    if as_if_over_2gb:
        monkeypatch.setattr(external, "LIMIT", 100_000)
    before = digests(external_model.parent)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = prune_model(external_model, out_dir / "small.onnx",
                      config=PruneConfig(criterion="l1", percentage=30, measure=False))  # external: as the input
    assert digests(external_model.parent) == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["small.onnx", "small.onnx.data"]  # no temp left
    assert (out_dir / "small.onnx").stat().st_size < 50_000 < (out_dir / "small.onnx.data").stat().st_size
    assert all(t.raw_data or t.data_location == 0 for t in res.model.graph.initializer)  # result not stripped
    written = load_model(out_dir / "small.onnx")
    feed = {"x": np.random.default_rng(0).uniform(-1, 1, (2, 16, 4, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run(written, feed), run(res.model, feed))
    assert res.verification is not None and res.verification.max_rel_error < 1e-5


def test_big_path_session_and_checks_use_the_skeleton(monkeypatch):
    """Over the limit nothing is serialised whole: a session equals the plain one."""
    m = wide_model()
    feed = {"x": np.ones((1, 16, 4, 4), np.float32)}
    plain = run(m, feed)
    monkeypatch.setattr(external, "LIMIT", 100_000)
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", _refuse_big, raising=False)
    np.testing.assert_array_equal(run(m, feed), plain)


def _refuse_big(self, *a, **k):
    if self.ByteSize() > external.LIMIT:
        raise AssertionError("a big model was serialised whole")
    return onnx.ModelProto.SerializePartialToString(self, *a, **k)


def test_cli_use_external_data_format(external_model, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code = main(["prune", str(external_model), "-o", str(out), "--percentage", "20", "--use-external-data-format",
                 "--min-fidelity", "0"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o.onnx.data").exists()
    assert load_model(out).graph.initializer


def test_failed_write_leaves_nothing(external_model, tmp_path, monkeypatch, capsys):
    """A full disk while the data file is written: no model, no data file, no staging folder."""
    real_open = open

    def full(file, mode="r", *a, **k):
        if "w" in mode and str(file).endswith(".data"):
            raise OSError(28, "No space left on device")
        return real_open(file, mode, *a, **k)

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr("builtins.open", full)
    code = main(["prune", str(external_model), "-o", str(out_dir / "o.onnx"), "--use-external-data-format",
                 "--min-fidelity", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left" in err and err.count("\n") == 1
    assert not list(out_dir.iterdir())


def test_serialized_size_is_exact_without_serialising_whole():
    """The size that routes a model to the big path equals protobuf's own, sub-graphs and functions included."""
    from onnx import helper
    m = wide_model()
    assert external.serialized_size(m) == m.ByteSize()
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "b", [],
                               [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)],
                               [onnx.numpy_helper.from_array(np.ones(300, np.float32), "big_const")])
    m.graph.node.append(helper.make_node("If", ["c"], ["y2"], then_branch=branch, else_branch=branch, name="if"))
    m.graph.node.append(helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(
        np.arange(-5, 500, dtype=np.int64), "k")))
    m.functions.append(helper.make_function("dom", "f", ["a"], ["b"], [helper.make_node("Neg", ["a"], ["b"])],
                                            [helper.make_opsetid("", 17)], attributes=["alpha"]))
    assert external.serialized_size(m) == m.ByteSize()


def test_big_path_exactness_check_reads_the_reference_weights_from_the_analysed_model(monkeypatch):
    """The masked reference of a big model holds stubs only; the check still catches one wrong weight."""
    from onnxprune.errors import VerificationError
    from onnxprune.graph.surgery import masked_reference, prune_channels
    from onnxprune.pruning.prepare import prepare
    from onnxprune.passes.verify import uniform_inputs, verify_equivalent
    monkeypatch.setattr(external, "LIMIT", 100_000)
    p = prepare(wide_model())
    removed = [u for u in range(len(p.analysis.unit_info)) if p.analysis.is_prunable(u)][:5]
    reference = masked_reference(p.analysis, removed, stubs=True)
    assert external.serialized_size(reference) < 100_000  # no weights of its own
    pruned = prune_channels(p.analysis, removed)
    feeds = uniform_inputs(p.input_shapes, n=1)
    assert verify_equivalent(pruned, reference, feeds, reference_weights=p.model).max_rel_error < 1e-5
    w = next(t for t in pruned.graph.initializer if len(t.dims) == 4 and t.dims[0] == 256)
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    with pytest.raises(VerificationError):
        verify_equivalent(pruned, reference, feeds, reference_weights=p.model)


def test_big_model_from_a_file_is_not_kept_beside_its_normalised_copy(external_model, monkeypatch):
    from onnxprune.pruning.prepare import prepare
    from onnxprune.report import count_params
    small = prepare(external_model)
    monkeypatch.setattr(external, "LIMIT", 100_000)
    big = prepare(external_model)
    assert small.kept_original is not None and big.kept_original is None
    assert big.original.SerializeToString() == small.original.SerializeToString()  # read again, the same
    assert count_params(big.original) == count_params(small.original) > 0
