"""The oracle criterion: the change of a cost when one unit is removed (Molchanov et al. 2017).

Removal is emulated exactly as the surgery does it: the unit's channels are
zeroed at every place they are consumed (the masked reference). Three things
make this fast enough to run often:

* **one session, mask inputs** — every consumed channel tensor is multiplied
  by a per-sample mask input ``[N, C, 1, 1]``, so no session is rebuilt per
  unit;
* **suffix only** — the graph is cut just before the first masked node of a
  unit; everything before the cut is computed once per batch (one run with
  all masks at one) and fed to a *suffix session*;
* **perturbations batched** — k units are evaluated in one run by tiling the
  batch k times along the batch axis, each copy with its own mask;
* **silent units skipped** — a unit whose channels are zero on a sample
  wherever they are consumed (a ReLU that never fires there, a dead
  channel) cannot change that sample's outputs: the full run reports, per
  sample, which channels are non-zero, and only the (unit, sample) pairs
  that can change anything are run; the others get the cost of no change;
* **cuts in parallel on the CPU** — small convolutions do not keep several
  intra-op threads busy, so on the CPU provider the cuts are shared among a
  few workers, each session with its share of the cores (about 10% more
  throughput on 2 cores than one session with 2 threads).

Costs (per sample, averaged over everything added): KL divergence of the
outputs for logits/probabilities, normalised squared error otherwise
(label-free, the default); the change of cross-entropy with labels
(``loss`` signed, ``abs`` absolute); or any callable
``cost(base_outputs, perturbed_outputs, labels) -> per-sample costs`` (one
value per row of the arrays it is given).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx import helper

from ..errors import CalibrationError, InvalidArgumentError
from ..graph.analysis import Analysis
from ..graph.normalize import to_proto
from ..graph.probe import np_dtype
from ..runtime import DeviceRunner, default_providers, make_session
from .oracle_cost import COSTS, CostFn, oracle_cost
from .oracle_graph import MaskInput, add_activity_outputs, suffix_model

logger = logging.getLogger(__name__)

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@dataclass
class _Cut:
    index: int
    session: object = None
    inputs: list[str] = field(default_factory=list)
    masks: list[int] = field(default_factory=list)  # mask-input indices used in the suffix
    units: list[int] = field(default_factory=list)
    macs_fraction: float = 1.0
    runner: object = None


class OracleScorer:
    """Accumulates oracle scores of every prunable unit over calibration batches.

    ``add_batch`` is HALCON's add_dl_pruning_batch: scores accumulate, so
    batches may arrive one at a time. ``scores()`` gives the mean cost per
    unit over all samples seen.
    """

    def __init__(self, analysis: Analysis, cost: str | CostFn = "auto", *, units: Optional[Sequence[int]] = None,
                 rows_per_run: Optional[int] = None, max_bytes_per_run: int = 512 << 20,
                 max_activation_bytes: int = 4 << 30, providers=None,
                 progress: bool = False, suffix: bool = True, io_binding: Optional[bool] = None,
                 workers: Optional[int] = None, skip_silent: bool = True) -> None:
        if isinstance(cost, str) and cost not in COSTS:
            raise InvalidArgumentError(f"unknown oracle cost {cost!r}; choose one of {', '.join(COSTS)} or a callable")
        self.analysis = analysis
        self.cost = cost
        self.units = list(units) if units is not None else list(analysis.prunable_units)
        self.max_bytes_per_run = max_bytes_per_run
        self.max_activation_bytes = max_activation_bytes
        self.providers = providers
        self.progress = progress
        self.use_suffix = suffix
        self.io_binding = io_binding  # None: bind on CUDA only
        self.skip_internal = suffix  # the plain (whole-network) mode keeps every mask, as the naive oracle does
        self.skip_silent = skip_silent
        self.workers, self.threads = _worker_split(providers, workers)
        # rows of one run (perturbations x batch): smaller runs stay in the CPU caches (ResNet-56: 128 rows
        # 8% faster than 256); accelerators want bigger ones
        on_cpu = list(providers or default_providers())[0] == "CPUExecutionProvider"
        self.rows_per_run = max(1, rows_per_run or (128 if on_cpu else 512))
        self._lock = threading.Lock()
        self._sum = {r: 0.0 for r in self.units}
        self._count = 0
        self.samples_seen = 0
        self.perturbation_macs = 0.0
        self.pairs_total = 0    # (unit, sample) pairs scored
        self.pairs_skipped = 0  # ... of which silent: no run needed
        self.seconds = 0.0
        self._build()

    # ---------------------------------------------------------------- graph building
    def _build(self) -> None:
        a = self.analysis
        graph = gs.import_onnx(a.proto)
        tensors = graph.tensors()
        nodes = {n.name: n for n in graph.nodes}
        self.masks: list[MaskInput] = []
        edges_by_tensor: dict[str, list] = {}
        for e in a.consumers:
            # an edge whose channels are all removed together with what they feed needs no mask:
            # the unit's masks further on already zero everything it could change (and the cut moves later)
            if self.skip_internal and a.labels[e.tensor].axis != 0 and a.stays_in_unit(e).all():
                continue
            edges_by_tensor.setdefault(e.tensor, []).append(e)
        mul_names: dict[int, str] = {}
        for tensor, edges in edges_by_tensor.items():
            lab = a.labels[tensor]
            rank = len(a.probe.shapes[tensor])
            if lab.axis == 0:
                continue
            tail = [1] * (rank - 1)
            tail[lab.axis - 1] = lab.size
            idx = len(self.masks)
            name = f"__oracle_mask_{idx}"
            dtype = np_dtype(a.probe.dtypes.get(tensor, 0))  # float16 in a float16 body
            m = gs.Variable(name, dtype=dtype, shape=["N"] + tail)
            graph.inputs.append(m)
            out = gs.Variable(f"{tensor}__oracle_masked", dtype=dtype)
            mul = gs.Node("Mul", f"__oracle_mul_{idx}", inputs=[tensors[tensor], m], outputs=[out])
            graph.nodes.append(mul)
            for e in edges:
                nodes[e.node].inputs[e.input_index] = out
            self.masks.append(MaskInput(name, tensor, tuple(tail), lab.axis, a.root_of[lab.units], dtype))
            mul_names[idx] = mul.name
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        self.model = to_proto(graph, a.proto)
        order = {n.name: i for i, n in enumerate(self.model.graph.node)}
        self.mask_pos = {i: order[name] for i, name in mul_names.items()}
        # masks each unit touches, and where it starts
        self.unit_masks: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, mk in enumerate(self.masks):
            for r in np.unique(mk.roots).tolist():
                self.unit_masks.setdefault(int(r), []).append((i, np.nonzero(mk.roots == r)[0]))
        self.units = [r for r in self.units if r in self.unit_masks]
        self._sum = {r: 0.0 for r in self.units}
        cuts: dict[int, _Cut] = {}
        for r in self.units:
            start = min(self.mask_pos[i] for i, _ in self.unit_masks[r]) if self.use_suffix else 0
            cuts.setdefault(start, _Cut(start)).units.append(r)
        self.cuts = [cuts[k] for k in sorted(cuts)]
        self.output_names = [o.name for o in self.model.graph.output]
        # all float activations of one sample: an upper bound of what a run keeps alive per row
        from ..graph.probe import PROBE_BATCH
        self.sample_bytes = sum(np_dtype(a.probe.dtypes[name]).itemsize * int(np.prod(sh)) // PROBE_BATCH
                                for name, sh in a.probe.shapes.items()
                                if sh and sh[0] == PROBE_BATCH and a.probe.dtypes.get(name) in _FLOATS)
        self.graph_input_names = {i.name for i in self.model.graph.input}
        self._layer_macs = self._node_macs()
        total = sum(self._layer_macs.values()) or 1.0
        frontier_names: set[str] = set()
        for cut in self.cuts:
            keep = {i for r in cut.units for i, _ in self.unit_masks[r]}
            proto, inputs = self._suffix_model(cut.index, keep)
            cut.inputs = inputs
            frontier_names.update(i for i in inputs if not i.startswith("__oracle_mask_"))
            cut.masks = [int(i.rsplit("_", 1)[1]) for i in inputs if i.startswith("__oracle_mask_")]
            cut.session = make_session(proto, self.providers, threads=self.threads)
            cut.macs_fraction = sum(v for k, v in self._layer_macs.items() if k >= cut.index) / total
        self.graph_inputs = [i.name for i in self.model.graph.input if not i.name.startswith("__oracle_mask_")]
        self.frontier = sorted(frontier_names - set(self.graph_inputs))
        exposed = onnx.ModelProto()
        exposed.CopyFrom(self.model)
        types = {vi.name: vi for vi in exposed.graph.value_info}
        for name in self.frontier:
            vi = onnx.ValueInfoProto()
            if name in types:
                vi.CopyFrom(types[name])
            else:
                vi = helper.make_tensor_value_info(name, self.analysis.probe.dtypes.get(name) or onnx.TensorProto.FLOAT, None)
            exposed.graph.output.append(vi)
        self.activity_names = add_activity_outputs(exposed, self.masks) if self.skip_silent else []
        self.full_session = make_session(exposed, self.providers)
        for cut in self.cuts:
            cut.runner = DeviceRunner(cut.session, self.io_binding)

    def _node_macs(self) -> dict[int, float]:
        macs: dict[int, float] = {}
        layers = self.analysis.layers
        for i, node in enumerate(self.model.graph.node):
            if node.name in layers:
                macs[i] = float(layers[node.name].macs)
        return macs

    def _is_batched(self, name: str) -> bool:
        """A float activation whose first axis is the batch: safe to tile along the batch axis."""
        from ..graph.probe import PROBE_BATCH
        shape = self.analysis.probe.shapes.get(name)
        dtype = self.analysis.probe.dtypes.get(name)
        if name.startswith("__oracle_mask_") or name in self.graph_input_names:
            return True
        return bool(shape) and shape[0] == PROBE_BATCH and dtype in _FLOATS + (0, None)

    def _suffix_model(self, start: int, keep_masks: Optional[set[int]] = None) -> tuple[onnx.ModelProto, list[str]]:
        return suffix_model(self.model, start, keep_masks, self._is_batched, self.analysis.probe.dtypes)

    # ---------------------------------------------------------------- scoring
    def _ones(self, i: int, rows: int) -> np.ndarray:
        return np.ones((rows,) + self.masks[i].shape_tail, dtype=self.masks[i].dtype)

    def _cost(self, base: list[np.ndarray], pert: list[np.ndarray], labels: Optional[np.ndarray]) -> np.ndarray:
        return oracle_cost(self.cost, base, pert, labels)

    def add_batch(self, feeds: dict[str, np.ndarray], labels: Optional[np.ndarray] = None, bar=None) -> None:
        """Score every unit on one batch of inputs (and optional labels) and accumulate."""
        t0 = time.perf_counter()
        n = next(iter(feeds.values())).shape[0]
        if labels is not None:
            labels = np.asarray(labels).reshape(-1).astype(np.int64)
            if len(labels) != n:
                raise CalibrationError(f"{len(labels)} labels for a batch of {n} samples")
        full_feed = dict(feeds)
        for i, mk in enumerate(self.masks):
            full_feed[mk.name] = self._ones(i, n)
        names = self.output_names + self.frontier
        outs = self.full_session.run(names + self.activity_names, full_feed)
        base = outs[:len(self.output_names)]
        cache = dict(zip(self.frontier, outs[len(self.output_names):len(names)]))
        cache.update(feeds)
        # per mask, [n, C]: which channels are non-zero on each sample (NaN counts as non-zero)
        activity = [a != 0 for a in outs[len(names):]] if self.skip_silent else None
        unchanged = self._cost(base, base, labels)  # the cost of a sample the unit cannot change
        # the costliest cuts first, so the workers finish together
        order = sorted(self.cuts, key=lambda c: -len(c.units) * c.macs_fraction)
        args = (cache, base, labels, n, activity, unchanged, bar)
        if self.workers > 1 and len(order) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                for f in [pool.submit(self._score_cut, c, *args) for c in order]:
                    f.result()
        else:
            for cut in order:
                self._score_cut(cut, *args)
        self._count += n
        self.samples_seen += n
        self.seconds += time.perf_counter() - t0

    def _active(self, r: int, n: int, activity: Optional[list[np.ndarray]]) -> np.ndarray:
        """[n] bool: samples on which unit ``r`` has a non-zero channel where it is consumed.

        Elsewhere its removal multiplies zeros by zero: the masked model gives
        exactly the unmasked outputs, so those samples need no run.
        """
        alive = np.zeros(n, dtype=bool) if activity is not None else np.ones(n, dtype=bool)
        for i, pos in self.unit_masks[r] if activity is not None else ():
            alive |= activity[i][:, pos].any(axis=1)
        return alive

    def _score_cut(self, cut: _Cut, cache: dict, base: list, labels: Optional[np.ndarray], n: int,
                   activity: Optional[list[np.ndarray]], unchanged: np.ndarray, bar) -> None:
        """Every unit of one cut on one batch; cuts touch disjoint units, so workers may run them at once."""
        # the tiled copies of this cut's inputs bound how many rows fit in one run
        # (memory budgets are shared by the workers running at the same time)
        row_bytes = sum(cache[name].nbytes for name in cut.inputs if name in cache) / n
        max_rows = max(n, min(self.rows_per_run,
                              int(self.max_bytes_per_run // self.workers // max(row_bytes, 1)),
                              int(self.max_activation_bytes // self.workers // max(self.sample_bytes, 1))))
        alive = {r: self._active(r, n, activity) for r in cut.units}
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
        skipped = 0
        for r in cut.units:  # a silent sample costs what no change costs
            self._sum[r] += float(unchanged[~alive[r]].sum())
            skipped += n - len(rows[r])
        silent_units = len(cut.units) - sum(len(c) for c in chunks)
        with self._lock:
            self.pairs_total += n * len(cut.units)
            self.pairs_skipped += skipped
            if bar is not None and silent_units:
                bar.update(silent_units)
        tiled: dict[int, dict] = {}  # k -> this cut's inputs tiled k times (on the device when binding)
        for chunk in chunks:
            whole = all(len(rows[r]) == n for r in chunk)
            k = len(chunk)
            idx = None if whole else np.concatenate([rows[r] for r in chunk])
            if whole and k not in tiled:
                tiled.clear()
                tiled[k] = {name: cut.runner.upload(np.concatenate([cache[name]] * k, axis=0) if k > 1
                                                    else cache[name])
                            for name in cut.inputs if not name.startswith("__oracle_mask_")}
            if whole:
                feed = dict(tiled[k])
            else:
                feed = {name: cut.runner.upload(np.take(cache[name], idx, axis=0))
                        for name in cut.inputs if not name.startswith("__oracle_mask_")}
            total_rows = n * k if whole else len(idx)
            for i in cut.masks:
                feed[self.masks[i].name] = self._ones(i, total_rows)
            offsets = np.cumsum([0] + [len(rows[r]) for r in chunk])
            for j, r in enumerate(chunk):
                for i, pos in self.unit_masks[r]:
                    if self.masks[i].name in feed:
                        m = feed[self.masks[i].name]
                        sel = [slice(offsets[j], offsets[j + 1])] + [slice(None)] * (m.ndim - 1)
                        sel[self.masks[i].axis] = pos
                        m[tuple(sel)] = 0.0
            pert = cut.runner.run(self.output_names, feed)
            for j, r in enumerate(chunk):
                sl = slice(offsets[j], offsets[j + 1])
                own = rows[r]
                full = len(own) == n
                c = self._cost(base if full else [b[own] for b in base], [p[sl] for p in pert],
                               labels if full or labels is None else labels[own])
                self._sum[r] += float(c.sum())
            with self._lock:
                self.perturbation_macs += cut.macs_fraction * self._dense_macs() * total_rows
                if bar is not None:
                    bar.update(k)

    def _dense_macs(self) -> float:
        return float(sum(self._layer_macs.values()))

    def scores(self) -> dict[int, float]:
        if self._count == 0:
            raise CalibrationError("no calibration batch was added before asking for oracle scores")
        return {r: s / self._count for r, s in self._sum.items()}

    def score_all(self, batches: Iterable[tuple[dict[str, np.ndarray], Optional[np.ndarray]]],
                  total_batches: Optional[int] = None) -> dict[int, float]:
        """Add every batch (with a progress bar and ETA when ``progress``) and return the scores."""
        bar = None
        if self.progress:
            from tqdm import tqdm
            total = len(self.units) * total_batches if total_batches else None
            bar = tqdm(total=total, desc="oracle", unit="unit", dynamic_ncols=True)
        try:
            for feeds, labels in batches:
                self.add_batch(feeds, labels, bar)
        finally:
            if bar is not None:
                bar.close()
        return self.scores()


def _worker_split(providers, workers: Optional[int]) -> tuple[int, int]:
    """(workers, intra-op threads per session): one worker on accelerators, a few on the CPU."""
    first = list(providers or default_providers())[0]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if workers is None:
        workers = 1 if first != "CPUExecutionProvider" or cores < 2 else max(2, cores // 4)
    workers = max(1, int(workers))
    return workers, (max(1, cores // workers) if workers > 1 else 0)


def naive_oracle(analysis: Analysis, batches: list[tuple[dict[str, np.ndarray], Optional[np.ndarray]]],
                 units: Sequence[int], cost: str = "auto", providers=None) -> dict[int, float]:
    """Reference implementation: one zero-masked model and session per unit, full network each time.

    Used by the benchmark and tests to check the fast oracle; never by the tool itself.
    """
    from ..graph.surgery import masked_reference
    base_sess = make_session(analysis.proto, providers)
    names = [o.name for o in analysis.proto.graph.output]
    bases = [base_sess.run(names, f) for f, _ in batches]
    out: dict[int, float] = {}
    for r in units:
        sess = make_session(masked_reference(analysis, [r]), providers)
        total, count = 0.0, 0
        for (feeds, labels), base in zip(batches, bases):
            pert = sess.run(names, feeds)
            total += float(oracle_cost(cost, base, pert, labels).sum())
            count += next(iter(feeds.values())).shape[0]
        out[r] = total / count
    return out
