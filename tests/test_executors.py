"""Executors: the oracle's tasks give the same scores (bitwise) on local threads and on a Ray instance,
also when a worker dies mid-run; the merge does not depend on the order tasks finish in.

One local Ray instance (2 CPUs, loopback, no dashboard) serves every Ray test of this module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from onnxprune.cli import main
from onnxprune.executors import LocalExecutor, Task, merge_sums
from onnxprune.pruning.prepare import prepare
from onnxprune.scoring.oracle import OracleScorer

from builders import option_a_shortcut, se_block
from conftest import shared_path

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install \"onnxprune[ray]\")")
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def ray_instance():
    import ray
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=256 << 20,
             logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


def _batches(p, n=6, k=2, seed=0, labels=False):
    rng = np.random.default_rng(seed)
    return [({name: rng.uniform(-1, 1, (n,) + tuple(s[1:])).astype(np.float32) for name, s in p.input_shapes.items()},
             rng.integers(0, 4, n) if labels else None) for _ in range(k)]


def _cifar(n: int) -> list:
    with np.load(shared_path("data", "cifar10_calib.npz")) as d:
        images = d["images"][:n]
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = ((images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    return [({"input": np.ascontiguousarray(x[i:i + 4])}, None) for i in range(0, n, 4)]


def _scores(p, data, executor=None, **kw) -> dict[int, float]:
    return OracleScorer(p.analysis, executor=executor, **kw).score_all(data)


def _ray_executor(**kw):
    from onnxprune.executors.ray import RayExecutor
    return RayExecutor(**kw)


def test_merge_is_order_independent():
    parts = {(b, c): {c: 0.1 * (b + 1) + 1e-17 * c, c + 10: 1 / (b + 3)} for b in range(5) for c in range(4)}
    keys = list(parts)
    shuffled = {k: parts[k] for k in np.random.default_rng(0).permutation(len(keys)).tolist() for k in [keys[k]]}
    assert list(shuffled) != keys
    assert merge_sums(shuffled) == merge_sums(parts)


def test_local_executor_runs_every_task_once():
    seen = []
    tasks = (Task((i,), seen.append, (i,), units=2) for i in range(7))
    progress = []
    out = LocalExecutor(workers=2, providers=["CPUExecutionProvider"]).map(tasks, progress.append)
    assert sorted(out) == [(i,) for i in range(7)] and sorted(seen) == list(range(7)) and sum(progress) == 14


@pytest.mark.parametrize("workers", [1, 2])
def test_local_scores_do_not_depend_on_workers(workers):
    p = prepare(option_a_shortcut())
    data = _batches(p)
    assert _scores(p, data, workers=workers, rows_per_run=8) == _scores(p, data, workers=3, rows_per_run=8)


def test_ray_without_ray_installed_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    assert main(["demo", "--files", str(tmp_path)]) == 0
    code = main(["score", str(tmp_path / "model.onnx"), "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "s.json"), "--executor", "ray"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and 'pip install "onnxprune[ray]"' in err
    assert not (tmp_path / "s.json").exists()


@needs_ray
@pytest.mark.parametrize("cost,labels", [("auto", False), ("loss", True)])
def test_ray_equals_local_on_a_tiny_model(ray_instance, cost, labels):
    p = prepare(option_a_shortcut())
    data = _batches(p, labels=labels)
    local = _scores(p, data, cost=cost, rows_per_run=8)
    with _ray_executor() as ex:
        remote = OracleScorer(p.analysis, cost, rows_per_run=8, executor=ex)
        got = remote.score_all(data)
    assert ex.workers == 2 and remote.threads == 1
    assert got == local  # bitwise: same provider, same runs, same merge order
    assert max(local.values()) > 0


@needs_ray
def test_ray_equals_local_on_resnet20(ray_instance):
    p = prepare(shared_path("models", "resnet20_cifar10.onnx"))
    data = _cifar(8)
    local = _scores(p, data)
    with _ray_executor() as ex:
        got = _scores(p, data, ex)
    assert got == local
    a, b = np.array([got[r] for r in local]), np.array([local[r] for r in local])
    assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max() and len(local) == len(p.analysis.prunable_units)


def _crash_once(marker: str, fn, *args):
    """Kill the worker process the first time (a machine lost mid-run), run normally on the retry."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return fn(*args)


@needs_ray
def test_killed_worker_is_retried_with_the_same_scores(ray_instance, tmp_path):
    from onnxprune.executors.ray import RayExecutor
    marker = str(tmp_path / "crashed")

    class CrashOnce(RayExecutor):
        submitted = 0

        def _submit(self, task):
            if task.key[0] != "prefix":
                CrashOnce.submitted += 1
                if CrashOnce.submitted == 5:  # a cut task in the middle of the first batch
                    task = replace(task, fn=_crash_once, args=(marker, task.fn) + task.args)
            return super()._submit(task)

    p = prepare(se_block())
    data = _batches(p, k=3)
    local = _scores(p, data, rows_per_run=8)
    with CrashOnce() as ex:
        got = _scores(p, data, ex, rows_per_run=8)
    assert os.path.exists(marker) and int(Path(marker).read_text()) != os.getpid()  # a worker did die
    assert got == local


@needs_ray
def test_actor_path_equals_local(ray_instance):
    """The per-GPU actors, forced here on the CPU: same tasks, same scores."""
    p = prepare(se_block())
    data = _batches(p)
    with _ray_executor(gpus=True) as ex:
        assert len(ex._actors) == ex.workers == 2
        got = OracleScorer(p.analysis, rows_per_run=8, executor=ex, providers=["CPUExecutionProvider"]).score_all(data)
    assert got == _scores(p, data, rows_per_run=8)


@needs_ray
def test_readme_cluster_line_scores_as_local(ray_instance, tmp_path, monkeypatch):
    """The README's cluster command, run as written (the instance above stands in for the cluster)."""
    text = README.read_text()
    block = re.findall(r"```bash\n(.*?)```", text[text.index("## Command line"):], re.S)[1]
    argv = shlex.split(block.strip())
    assert argv[0] == "onnxprune" and "--executor" in argv
    assert main(["demo", "--files", str(tmp_path)]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:] + ["--calib-limit", "32"]) == 0  # as written, on fewer images
    remote = json.loads(Path("scores.json").read_text())
    assert main(["score", "model.onnx", "--calib", "calib.npz", "-o", "local.json", "--calib-limit", "32"]) == 0
    local = json.loads(Path("local.json").read_text())
    assert remote["scores"] == local["scores"] and remote["meta"] == local["meta"]
