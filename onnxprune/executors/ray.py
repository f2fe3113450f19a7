"""The Ray executor: the same tasks on a Ray cluster (or a local Ray instance), merged the same way.

* **Shared once.** ``share`` puts a value in the object store once; tasks get
  the reference. A ``cache=True`` value (the oracle's model) is kept by each
  worker process with what it built on it (its sessions), so a worker
  deserialises the model and builds a session once, not per task.
* **Dependencies by reference.** ``defer`` submits a task and hands its
  result reference to later tasks; Ray starts them when it is ready, on any
  node, without a round trip through the caller.
* **Sized from memory.** Every task asks Ray for its memory estimate, so a
  node never runs more tasks than fit.
* **Retries.** A task whose worker process dies is run again (Ray's
  ``max_retries``; ``max_restarts``/``max_task_retries`` for the GPU actors);
  tasks are pure functions of their inputs, so the scores are unchanged.
* **One actor per GPU.** On a cluster with GPUs, one actor per GPU runs the
  tasks; its sessions take the CUDA provider when onnxruntime there has it
  (``runtime.default_providers``), with I/O binding (``runtime.DeviceRunner``).
* **Progress.** A ``ray.wait`` loop feeds the caller's progress bar as tasks
  finish anywhere on the cluster.

Ray is an optional extra (``pip install "onnxprune[ray]"``), imported only here, only when asked for.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ..errors import OnnxPruneError
from .base import Executor, Progress, Task

logger = logging.getLogger(__name__)

RETRIES = 3
_CACHE_SIZE = 2  # cached values a worker process keeps (the current model and the one before)
_cache: "OrderedDict[str, Any]" = OrderedDict()
_cache_lock = threading.Lock()


class ExecutorError(OnnxPruneError):
    """The cluster could not run a task (workers kept dying, the cluster went away)."""


def import_ray():
    """Import Ray or say in one line how to get it."""
    try:
        import ray
    except ImportError:
        raise OnnxPruneError("--executor ray needs Ray: pip install \"onnxprune[ray]\"") from None
    return ray


@dataclass(frozen=True)
class Cached:
    """A shared value each worker process fetches once and keeps (the reference is nested, so Ray does not
    resolve it before the task starts: a worker that already holds the value skips the fetch)."""

    token: str
    ref: Any

    def get(self) -> Any:
        with _cache_lock:
            if self.token in _cache:
                _cache.move_to_end(self.token)
                return _cache[self.token]
        import ray
        value = ray.get(self.ref)
        with _cache_lock:
            _cache[self.token] = value
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return value


def run_task(fn, *args):
    """What a Ray worker runs: ``fn`` on the arguments, cached handles resolved (top-level refs Ray resolved)."""
    return fn(*(a.get() if isinstance(a, Cached) else a for a in args))


class TaskActor:
    """One per GPU: runs tasks like ``run_task``; its process keeps the cached model and sessions."""

    def run(self, fn, *args):
        return run_task(fn, *args)


class RayExecutor(Executor):
    """Tasks on a Ray cluster: ``address`` as for ``ray.init`` (None starts a local instance, "auto" joins
    the one on this machine); ``workers`` caps the tasks in flight (default: the cluster's CPUs or GPUs)."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None,
                 gpus: Optional[bool] = None) -> None:
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        elif address is not None:
            logger.info("Ray is already initialised in this process; using that cluster, not %s", address)
        resources = ray.cluster_resources()
        # a request above every node's memory would never be scheduled: cap it at the largest node's
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        self._max_memory = max([r.get("memory", 0) for r in nodes] or [0])
        n_gpus = int(resources.get("GPU", 0))
        self.use_gpus = (n_gpus > 0) if gpus is None else bool(gpus)
        slots = max(1, n_gpus if self.use_gpus and n_gpus else int(resources.get("CPU", 1)))
        self.workers = max(1, min(int(workers), slots)) if workers else slots
        self.threads = 1 if not self.use_gpus else 0  # one CPU per task: one intra-op thread
        self._run = ray.remote(run_task)
        self._actors: list = []
        self._load: list[int] = []
        if self.use_gpus:
            cls = ray.remote(TaskActor).options(num_cpus=1, num_gpus=1 if n_gpus else 0, max_restarts=RETRIES,
                                                max_task_retries=RETRIES)
            self._actors = [cls.remote() for _ in range(self.workers)]
            self._load = [0] * len(self._actors)
        logger.info("ray executor: %d %s workers", self.workers, "GPU" if self.use_gpus else "CPU")

    @property
    def providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.use_gpus else ["CPUExecutionProvider"]

    def share(self, value: Any, *, cache: bool = False) -> Any:
        ref = self.ray.put(value)
        return Cached(uuid.uuid4().hex, ref) if cache else ref

    def _submit(self, task: Task) -> tuple[Any, Optional[int]]:
        if self._actors:
            i = min(range(len(self._actors)), key=self._load.__getitem__)
            self._load[i] += 1
            return self._actors[i].run.remote(task.fn, *task.args), i
        memory = int(min(task.memory, 0.5 * self._max_memory)) if self._max_memory else int(task.memory)
        opts = {"memory": memory} if memory > 0 else {}
        return self._run.options(num_cpus=1, max_retries=RETRIES, **opts).remote(task.fn, *task.args), None

    def defer(self, task: Task) -> Any:
        ref, actor = self._submit(task)
        if actor is not None:
            self._load[actor] -= 1  # not awaited by the map loop; counts as queued work only while submitted
        return ref

    def map(self, tasks: Iterable[Task], progress: Progress = None) -> dict[tuple, Any]:
        ray = self.ray
        results: dict[tuple, Any] = {}
        pending: dict[Any, tuple[Task, Optional[int]]] = {}
        it = iter(tasks)
        try:
            while True:
                while len(pending) < 2 * self.workers:  # keep every worker fed, hold few batches alive
                    t = next(it, None)
                    if t is None:
                        break
                    ref, actor = self._submit(t)
                    pending[ref] = (t, actor)
                if not pending:
                    return results
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    t, actor = pending.pop(ref)
                    if actor is not None:
                        self._load[actor] -= 1
                    results[t.key] = self._get(ref, t)
                    if progress is not None:
                        progress(t.units)
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort: the run already failed
                    pass

    def _get(self, ref, task: Task) -> Any:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the task raised: our own errors surface as themselves
            if isinstance(e.cause, OnnxPruneError):
                raise e.cause from None
            raise e.as_instanceof_cause() from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError,
                ray.exceptions.ObjectLostError) as e:
            raise ExecutorError(f"task {task.key} failed on the Ray cluster after {RETRIES} retries: "
                                f"{type(e).__name__}") from None

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors, self._load = [], []
