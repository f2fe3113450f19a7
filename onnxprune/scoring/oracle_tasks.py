"""The oracle's work as executor tasks: a plan every worker can rebuild, a prefix task and a cut task.

* :class:`OraclePlan` is everything a worker needs, picklable and small: the
  masked model once (serialised), the cut specifications and the mask
  layout. Sessions are built lazily, once per process that holds the plan
  (the local executor's threads share them; a Ray worker keeps its own).
* :func:`prefix_task` runs a batch once through the masked model with every
  mask at one: the outputs (the baseline), the activations where suffixes
  start, and which channels are non-zero on each sample.
* :func:`cut_task` scores the units of one cut on one batch and returns
  per-unit partial sums and counters; the caller merges them in key order.

How many rows one run takes is fixed here, from the plan, never from the
executor: every executor runs the same perturbations in the same runs, so
the scores are the same floats.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from ..runtime import DeviceRunner, make_session
from .oracle_cost import oracle_cost
from .oracle_graph import MaskInput, add_activity_outputs, suffix_model


@dataclass
class CutSpec:
    """The units whose first mask sits at node ``index``: scored together by one suffix session."""

    index: int
    inputs: list[str] = field(default_factory=list)   # suffix inputs (activations and mask inputs)
    masks: list[int] = field(default_factory=list)    # mask-input indices used in the suffix
    outputs: list[int] = field(default_factory=list)  # positions of the model outputs the suffix computes
    units: list[int] = field(default_factory=list)
    keep: frozenset = frozenset()                     # masks the suffix keeps (the others multiply by one)
    macs_fraction: float = 1.0
    max_rows: int = 128                               # rows of one run (perturbations x samples), at least a batch
    row_bytes: int = 0                                # bytes of this suffix's activation inputs per row


@dataclass
class CutResult:
    sums: dict[int, float]   # per unit: cost summed over the batch's samples
    pairs_total: int         # (unit, sample) pairs scored
    pairs_skipped: int       # ... of which silent: no run needed
    macs: float              # MACs of the suffix runs
    seconds: float = 0.0     # wall time of the task where it ran (for benchmarks and projections)


class OraclePlan:
    """The masked model, its cuts and masks: what any worker needs to run the oracle's tasks."""

    def __init__(self, model: onnx.ModelProto, masks: list[MaskInput], unit_masks: dict[int, list],
                 cuts: list[CutSpec], frontier: list[str], batched: frozenset, dtypes: dict[str, int],
                 cost: Any, skip_silent: bool, dense_macs: float, providers: Optional[Sequence[str]],
                 threads: int, prefix_threads: int, io_binding: Optional[bool],
                 suffixes: Optional[dict[int, onnx.ModelProto]] = None) -> None:
        self.model_bytes = model.SerializeToString()
        self.masks = masks
        self.unit_masks = unit_masks
        self.cuts = cuts
        self.frontier = frontier
        self.output_names = [o.name for o in model.graph.output]
        self.batched = batched
        self.dtypes = dtypes
        self.cost = cost
        self.skip_silent = skip_silent
        self.dense_macs = dense_macs
        self.providers = list(providers) if providers else None  # None: the worker's own default (CUDA if there)
        self.threads = threads
        self.prefix_threads = prefix_threads
        self.io_binding = io_binding
        self._local_init(suffixes)

    def _local_init(self, suffixes=None) -> None:
        self._lock = threading.Lock()
        self._suffixes = dict(suffixes or {})   # built by the caller already: reused in its own process
        self._runners: dict[int, DeviceRunner] = {}
        self._full = None
        self._model: Optional[onnx.ModelProto] = None
        self.activity_names: list[str] = []

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for k in ("_lock", "_suffixes", "_runners", "_full", "_model", "activity_names"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local_init()

    @property
    def model(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = onnx.load_from_string(self.model_bytes)
        return self._model

    def suffix(self, i: int) -> onnx.ModelProto:
        """The suffix model of cut ``i`` (built by the caller, or rebuilt here from the masked model)."""
        if i not in self._suffixes:
            cut = self.cuts[i]
            self._suffixes[i], _, _ = suffix_model(self.model, cut.index, set(cut.keep),
                                                   self.batched.__contains__, self.dtypes)
        return self._suffixes[i]

    def runner(self, i: int) -> DeviceRunner:
        """The session of cut ``i`` (I/O binding on CUDA), built once per process."""
        with self._lock:
            if i not in self._runners:
                session = make_session(self.suffix(i), self.providers, threads=self.threads)
                self._runners[i] = DeviceRunner(session, self.io_binding)
                self._suffixes.pop(i, None)
            return self._runners[i]

    def runners(self) -> list[DeviceRunner]:
        return [self.runner(i) for i in range(len(self.cuts))]

    def full_session(self):
        """The masked model with every suffix input and the per-channel activity exposed as outputs."""
        with self._lock:
            if self._full is None:
                exposed = onnx.ModelProto()
                exposed.CopyFrom(self.model)
                types = {vi.name: vi for vi in exposed.graph.value_info}
                for name in self.frontier:
                    vi = onnx.ValueInfoProto()
                    if name in types:
                        vi.CopyFrom(types[name])
                    else:
                        vi = helper.make_tensor_value_info(name, self.dtypes.get(name) or onnx.TensorProto.FLOAT,
                                                           None)
                    exposed.graph.output.append(vi)
                self.activity_names = add_activity_outputs(exposed, self.masks) if self.skip_silent else []
                self._full = make_session(exposed, self.providers, threads=self.prefix_threads)
            return self._full

    def ones(self, i: int, rows: int) -> np.ndarray:
        return np.ones((rows,) + self.masks[i].shape_tail, dtype=self.masks[i].dtype)

    def cost_of(self, base: list[np.ndarray], pert: list[np.ndarray], labels: Optional[np.ndarray]) -> np.ndarray:
        return oracle_cost(self.cost, base, pert, labels)


def prefix_task(plan: OraclePlan, batch: tuple[dict[str, np.ndarray], Optional[np.ndarray]]) -> dict:
    """One run of a batch with every mask at one: baseline outputs, suffix inputs, channel activity."""
    feeds, labels = batch
    n = next(iter(feeds.values())).shape[0]
    session = plan.full_session()
    full_feed = dict(feeds)
    for i, mk in enumerate(plan.masks):
        full_feed[mk.name] = plan.ones(i, n)
    names = plan.output_names + plan.frontier
    outs = session.run(names + plan.activity_names, full_feed)
    base = outs[:len(plan.output_names)]
    # per mask, [n, C]: which channels are non-zero on each sample (NaN counts as non-zero)
    activity = [a != 0 for a in outs[len(names):]] if plan.skip_silent else None
    return {"base": base, "cache": dict(zip(plan.frontier, outs[len(plan.output_names):len(names)])),
            "activity": activity, "unchanged": plan.cost_of(base, base, labels)}  # cost of a sample left unchanged


def _active(plan: OraclePlan, r: int, n: int, activity: Optional[list[np.ndarray]]) -> np.ndarray:
    """[n] bool: samples on which unit ``r`` has a non-zero channel where it is consumed.

    Elsewhere its removal multiplies zeros by zero: the masked model gives
    exactly the unmasked outputs, so those samples need no run.
    """
    if activity is None:
        return np.ones(n, dtype=bool)
    alive = np.zeros(n, dtype=bool)
    for i, pos in plan.unit_masks[r]:
        alive |= activity[i][:, pos].any(axis=1)
    return alive


def cut_task(plan: OraclePlan, batch: tuple[dict[str, np.ndarray], Optional[np.ndarray]], context: dict,
             cut_index: int) -> CutResult:
    """Every unit of one cut on one batch: per-unit cost sums (cuts touch disjoint units)."""
    t0 = time.perf_counter()
    feeds, labels = batch
    cut = plan.cuts[cut_index]
    runner = plan.runner(cut_index)
    cache = dict(context["cache"])
    cache.update(feeds)
    base, activity, unchanged = context["base"], context["activity"], context["unchanged"]
    n = next(iter(feeds.values())).shape[0]
    max_rows = max(n, cut.max_rows)
    alive = {r: _active(plan, r, n, activity) for r in cut.units}
    rows = {r: np.nonzero(a)[0] for r, a in alive.items()}
    chunks: list[list[int]] = []
    size = max_rows  # start a chunk at the first unit
    for r in cut.units:
        m = len(rows[r])
        if m == 0:
            continue
        if size + m > max_rows:
            chunks.append([])
            size = 0
        chunks[-1].append(r)
        size += m
    sums: dict[int, float] = {}
    skipped = 0
    for r in cut.units:  # a silent sample costs what no change costs
        sums[r] = float(unchanged[~alive[r]].sum())
        skipped += n - len(rows[r])
    macs = 0.0
    activations = [name for name in cut.inputs if not name.startswith("__oracle_mask_")]
    tiled: dict[int, dict] = {}  # k -> this cut's inputs tiled k times (on the device when binding)
    for chunk in chunks:
        whole = all(len(rows[r]) == n for r in chunk)
        k = len(chunk)
        idx = None if whole else np.concatenate([rows[r] for r in chunk])
        if whole and k not in tiled:
            tiled.clear()
            tiled[k] = {name: runner.upload(np.concatenate([cache[name]] * k, axis=0) if k > 1 else cache[name])
                        for name in activations}
        if whole:
            feed = dict(tiled[k])
        else:
            feed = {name: runner.upload(np.take(cache[name], idx, axis=0)) for name in activations}
        total_rows = n * k if whole else len(idx)
        for i in cut.masks:
            feed[plan.masks[i].name] = plan.ones(i, total_rows)
        offsets = np.cumsum([0] + [len(rows[r]) for r in chunk])
        for j, r in enumerate(chunk):
            for i, pos in plan.unit_masks[r]:
                if plan.masks[i].name in feed:
                    m = feed[plan.masks[i].name]
                    sel = [slice(offsets[j], offsets[j + 1])] + [slice(None)] * (m.ndim - 1)
                    sel[plan.masks[i].axis] = pos
                    m[tuple(sel)] = 0.0
        pert = runner.run([plan.output_names[i] for i in cut.outputs], feed)
        for j, r in enumerate(chunk):
            sl = slice(offsets[j], offsets[j + 1])
            own = rows[r]
            full = len(own) == n
            rows_base = base if full else [b[own] for b in base]
            changed = list(rows_base)  # outputs the suffix does not compute are unchanged
            for i, p in zip(cut.outputs, pert):
                changed[i] = p[sl]
            c = plan.cost_of(rows_base, changed, labels if full or labels is None else labels[own])
            sums[r] += float(c.sum())
        macs += cut.macs_fraction * plan.dense_macs * total_rows
    return CutResult(sums, n * len(cut.units), skipped, macs, time.perf_counter() - t0)


def context_bytes(context: Any) -> int:
    """Bytes of the arrays in a task input (for memory estimates and transfer figures)."""
    if isinstance(context, np.ndarray):
        return context.nbytes
    if isinstance(context, dict):
        return sum(context_bytes(v) for v in context.values())
    if isinstance(context, (list, tuple)):
        return sum(context_bytes(v) for v in context)
    return 0
