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
* **tasks on an executor** — the work is (prefix of a batch) and (cut x
  batch) tasks (:mod:`.oracle_tasks`) merged in key order, run by the
  local executor's CPU workers (small convolutions do not keep several
  intra-op threads busy: a few workers, each session with its share of the
  cores, give about 10% more throughput on 2 cores) or by a Ray cluster
  (:mod:`onnxprune.executors`); every executor gives the same scores.

Costs (per sample, averaged over everything added): KL divergence of the
outputs for logits/probabilities, normalised squared error otherwise
(label-free, the default); the change of cross-entropy with labels
(``loss`` signed, ``abs`` absolute); or any callable
``cost(base_outputs, perturbed_outputs, labels) -> per-sample costs`` (one
value per row of the arrays it is given).
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import CalibrationError, InvalidArgumentError
from ..executors import Executor, LocalExecutor, Task, merge_sums
from ..graph.analysis import Analysis
from ..graph.normalize import to_proto
from ..graph.probe import PROBE_BATCH, fixed_batch_of, np_dtype
from ..progress import LogProgress, progress_bar
from ..runtime import make_session
from .oracle_cost import COSTS, CostFn, oracle_cost
from .oracle_graph import MaskInput, suffix_model
from .oracle_tasks import CutSpec, OraclePlan, cut_task, prefix_task

logger = logging.getLogger(__name__)

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)

Batch = tuple[dict[str, np.ndarray], Optional[np.ndarray]]
_MASKED = "{}__oracle_masked"  # a consumed channel tensor times its mask input


class OracleScorer:
    """Accumulates oracle scores of every prunable unit over calibration batches.

    ``add_batch`` is HALCON's add_dl_pruning_batch: scores accumulate, so
    batches may arrive one at a time. ``scores()`` gives the mean cost per
    unit over all samples seen. ``executor`` runs the tasks (default: local
    CPU workers, ``workers`` of them); ``max_bytes_per_run`` and
    ``max_activation_bytes`` bound one task's run (a worker's memory).
    """

    def __init__(self, analysis: Analysis, cost: str | CostFn = "auto", *, units: Optional[Sequence[int]] = None,
                 rows_per_run: Optional[int] = None, max_bytes_per_run: int = 256 << 20,
                 max_activation_bytes: int = 2 << 30, providers=None,
                 progress: bool = False, suffix: bool = True, io_binding: Optional[bool] = None,
                 workers: Optional[int] = None, skip_silent: bool = True,
                 executor: Optional[Executor] = None) -> None:
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
        self.executor = executor or LocalExecutor(workers, providers)
        self.workers, self.threads = self.executor.workers, self.executor.threads
        # rows of one run (perturbations x batch): smaller runs stay in the CPU caches (ResNet-56: 128 rows
        # 8% faster than 256); accelerators want bigger ones
        on_cpu = list(providers or self.executor.providers)[0] == "CPUExecutionProvider"
        self.rows_per_run = max(1, rows_per_run or (128 if on_cpu else 512))
        # a model that fixes its batch (a static export) runs exactly that many rows: one perturbation per run,
        # never tiled; a fixed batch above 1 runs whole batches (no silent rows left out of a run)
        self.fixed_batch = fixed_batch_of(analysis.proto)
        if self.fixed_batch is not None:
            self.rows_per_run = self.fixed_batch
            self.skip_silent = skip_silent and self.fixed_batch == 1
            logger.info("oracle: the model fixes its batch to %d: one perturbation per run, not tiled",
                        self.fixed_batch)
        self._sum = {r: 0.0 for r in self.units}
        self._count = 0
        self._batches = 0
        self._plan_handle = None
        self.samples_seen = 0
        self.perturbation_macs = 0.0
        self.pairs_total = 0    # (unit, sample) pairs scored
        self.pairs_skipped = 0  # ... of which silent: no run needed
        self.seconds = 0.0
        self.task_seconds: dict[tuple, float] = {}  # (batch, cut) -> wall time of its task where it ran
        self.context_bytes = 0  # bytes of the prefix results of the batches scored (what a cluster transfers)
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
            out = gs.Variable(_MASKED.format(tensor), dtype=dtype)
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
        cuts: dict[int, CutSpec] = {}
        for r in self.units:
            start = min(self.mask_pos[i] for i, _ in self.unit_masks[r]) if self.use_suffix else 0
            cuts.setdefault(start, CutSpec(start)).units.append(r)
        self.cuts = [cuts[k] for k in sorted(cuts)]
        self.output_names = [o.name for o in self.model.graph.output]
        # all float activations of one sample: an upper bound of what a run keeps alive per row
        self.sample_bytes = sum(self._row_bytes(name) for name in a.probe.shapes)
        self.graph_input_names = {i.name for i in self.model.graph.input}
        self._layer_macs = self._node_macs()
        total = sum(self._layer_macs.values()) or 1.0
        names = {x for n in self.model.graph.node for x in n.input} | self.graph_input_names
        batched = frozenset(x for x in names if x and self._is_batched(x))
        frontier_names: set[str] = set()
        suffixes = {}
        for ci, cut in enumerate(self.cuts):
            cut.keep = frozenset(i for r in cut.units for i, _ in self.unit_masks[r])
            suffixes[ci], inputs, cut.outputs = suffix_model(self.model, cut.index, set(cut.keep),
                                                             batched.__contains__, self._dtypes())
            cut.inputs = inputs
            frontier_names.update(i for i in inputs if not i.startswith("__oracle_mask_"))
            cut.masks = [int(i.rsplit("_", 1)[1]) for i in inputs if i.startswith("__oracle_mask_")]
            cut.macs_fraction = sum(v for k, v in self._layer_macs.items() if k >= cut.index) / total
            # the tiled copies of this cut's inputs and the activations of a run bound its rows (per task)
            cut.row_bytes = sum(self._row_bytes(i) for i in inputs if not i.startswith("__oracle_mask_"))
            cut.max_rows = max(1, min(self.rows_per_run, int(self.max_bytes_per_run // max(cut.row_bytes, 1)),
                                      int(self.max_activation_bytes // max(self.sample_bytes, 1))))
        self.graph_inputs = [i.name for i in self.model.graph.input if not i.name.startswith("__oracle_mask_")]
        self.frontier = sorted(frontier_names - set(self.graph_inputs))
        # the prefix runs while workers run cuts: with the workers' thread count, not every core (whose
        # spinning intra-op threads would compete with them)
        self.plan = OraclePlan(self.model, self.masks, self.unit_masks, self.cuts, self.frontier, batched,
                               self._dtypes(), self.cost, self.skip_silent, float(total), self.providers,
                               self.executor.threads, self.executor.threads,
                               self.io_binding, suffixes)

    def _dtypes(self) -> dict[str, int]:
        known = {k: v for k, v in self.analysis.probe.dtypes.items() if v}
        return {**known, **{_MASKED.format(mk.tensor): known[mk.tensor] for mk in self.masks if mk.tensor in known}}

    def _probed(self, name: str) -> str:
        """The probed tensor a name stands for (a masked tensor has the shape and type of its input)."""
        return name[:-len(_MASKED.format(""))] if name.endswith(_MASKED.format("")) else name

    def _row_bytes(self, name: str) -> int:
        """Bytes per sample of a float activation with a batch axis (0 for anything else)."""
        sh = self.analysis.probe.shapes.get(self._probed(name))
        dtype = self.analysis.probe.dtypes.get(self._probed(name))
        if not sh or sh[0] != self._probe_batch or dtype not in _FLOATS:
            return 0
        return np_dtype(dtype).itemsize * int(np.prod(sh)) // self._probe_batch

    def _node_macs(self) -> dict[int, float]:
        macs: dict[int, float] = {}
        layers = self.analysis.layers
        for i, node in enumerate(self.model.graph.node):
            if node.name in layers:
                macs[i] = float(layers[node.name].macs)
        return macs

    def _is_batched(self, name: str) -> bool:
        """A float activation whose first axis is the batch: safe to tile along the batch axis."""
        if name.startswith("__oracle_mask_") or name in self.graph_input_names:
            return True
        shape = self.analysis.probe.shapes.get(self._probed(name))
        dtype = self.analysis.probe.dtypes.get(self._probed(name))
        return bool(shape) and shape[0] == self._probe_batch and dtype in _FLOATS + (0, None)

    @property
    def _probe_batch(self) -> int:
        """The batch the probe ran at: the model's own when it fixes one."""
        return self.fixed_batch if self.fixed_batch is not None else PROBE_BATCH

    # ---------------------------------------------------------------- scoring
    def _tasks(self, batches: Iterable[Batch], sizes: list[int]) -> Iterator[Task]:
        """A prefix task per batch (deferred: its result feeds the cut tasks), then its cut tasks.

        Made lazily, as the executor asks for them, so only the batches in
        flight are held. Keys (batch number, cut index) fix the merge order.
        """
        ex = self.executor
        if self._plan_handle is None:
            self._plan_handle = ex.share(self.plan, cache=True)  # the model goes out once
        # the costliest cuts first, so the workers finish together
        order = sorted(range(len(self.cuts)), key=lambda i: -len(self.cuts[i].units) * self.cuts[i].macs_fraction)
        for feeds, labels in batches:
            n = next(iter(feeds.values())).shape[0]
            if labels is not None:
                labels = np.asarray(labels).reshape(-1).astype(np.int64)
                if len(labels) != n:
                    raise CalibrationError(f"{len(labels)} labels for a batch of {n} samples")
            seq = self._batches + len(sizes)
            sizes.append(n)
            batch = ex.share((feeds, labels))
            context_size = n * sum(self._row_bytes(name) for name in self.frontier)
            self.context_bytes += context_size
            context = ex.defer(Task(("prefix", seq), prefix_task, (self._plan_handle, batch), 1,
                                    n * self.sample_bytes))
            for i in order:
                cut = self.cuts[i]
                rows = max(n, cut.max_rows)
                yield Task((seq, i), cut_task, (self._plan_handle, batch, context, i), len(cut.units),
                           context_size + rows * (cut.row_bytes + self.sample_bytes))

    def _run(self, batches: Iterable[Batch], bar=None) -> None:
        t0 = time.perf_counter()
        sizes: list[int] = []
        results = self.executor.map(self._tasks(batches, sizes), bar.update if bar is not None else None)
        merge_sums({k: r.sums for k, r in results.items()}, self._sum)
        for k in sorted(results):
            r = results[k]
            self.pairs_total += r.pairs_total
            self.pairs_skipped += r.pairs_skipped
            self.perturbation_macs += r.macs
            self.task_seconds[k] = r.seconds
        self._batches += len(sizes)
        self._count += sum(sizes)
        self.samples_seen += sum(sizes)
        self.seconds += time.perf_counter() - t0

    def add_batch(self, feeds: dict[str, np.ndarray], labels: Optional[np.ndarray] = None, bar=None) -> None:
        """Score every unit on one batch of inputs (and optional labels) and accumulate."""
        self._run([(feeds, labels)], bar)

    def scores(self) -> dict[int, float]:
        if self._count == 0:
            raise CalibrationError("no calibration batch was added before asking for oracle scores")
        return {r: s / self._count for r, s in self._sum.items()}

    def score_all(self, batches: Iterable[Batch], total_batches: Optional[int] = None) -> dict[int, float]:
        """Add every batch (a progress bar with an ETA when ``progress``, else log lines) and return the scores.

        All batches go to the executor as one stream of tasks, so a cluster
        never waits for the slowest cut of one batch before starting the next.
        """
        total = len(self.units) * total_batches if total_batches else None
        desc = f"oracle ({self.executor.name})"
        if self.progress:
            bar = progress_bar(total, desc, "unit")  # a bar on a terminal, else log lines
        else:  # the library, quiet by default: log lines (INFO of onnxprune.progress) every few seconds
            bar = LogProgress(total, desc, unit="unit")
        try:
            self._run(batches, bar)
        finally:
            bar.close()
        return self.scores()


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
