"""Sensitivity curves: how much the output moves when one group loses r% of its channels and is re-fitted.

For each prunable group and a few kept widths, the group's lowest-ranked
units (by the criterion) are removed and the layers that consume the group
are re-fitted by ridge least squares (as :mod:`onnxprune.passes.recover`
does); the distortion of the network output (:func:`oracle_cost`: KL for
logits, normalised squared error otherwise) is measured on held-back
calibration samples that the fit never saw. This is SPDY's per-layer
error database (Frantar & Alistarh 2022) with reconstruction in it.

Two things make it cheap enough for every group at every width:

* **one pass, sums only** — when a single group is pruned, every consumer
  of it sees the original activations minus some channels; the re-fit of
  any subset is a sub-matrix of A'A and A'Y gathered once
  (:class:`onnxprune.lsq.GramSystem`), so the model runs once to collect;
* **one session** — removing channels is exactly zeroing the columns that
  consume them (the masked reference), so every option runs in one session
  of the original model whose consumer weights are fed as inputs.

The block-output ``proxy`` (the consumers' own normalised error on the
held-back rows after the re-fit) comes for free and is kept beside the
output distortion for comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.analysis import Analysis
from ..graph.layout import as_matrix, from_matrix, node_attrs
from ..graph.subgraph import expose, extract_reached
from ..lsq import HELD_BACK, GramSystem, Site, fit_gram, fit_samples, stream
from ..progress import LogProgress
from ..runtime import make_session
from ..scoring.oracle_cost import oracle_cost
from .selection import Constraints, _Budget, group_round_to

logger = logging.getLogger(__name__)

# Kept fractions measured per group (the widths are rounded to the group's multiple).
LEVELS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
MAX_ROWS = 8192


@dataclass(kw_only=True)
class _Site(Site):
    """A consumer layer of one group (:class:`onnxprune.lsq.Site`): its weight fed as an input of the evaluation
    session, the original weight, and the Gram sums of its rows."""

    weight: str
    bias: Optional[str]  # bias input fed (for a Conv/Gemm without one, a zero bias the evaluation adds)
    added_bias: bool
    w_shape: tuple[int, ...]
    matrix: np.ndarray  # original weight as [C_out, features]
    bias0: np.ndarray
    taps: int  # features per input channel (kh * kw for a Conv, 1 otherwise)
    refit: bool
    system: Optional[GramSystem] = None


@dataclass
class Curve:
    """Options of one group, widest first: units removed, output distortion, block-output proxy."""

    group: int
    widths: list[int] = field(default_factory=list)
    removed: list[list[int]] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    proxy: list[float] = field(default_factory=list)


def group_orders(analysis: Analysis, scores: dict[int, float], constraints: Constraints,
                 levels: Sequence[float] = LEVELS) -> dict[int, list[list[int]]]:
    """Per prunable group, the removal sets measured: prefixes of its units in score order.

    A prefix leaves a width that is a multiple of the group's round-to and
    respects the per-layer limits (the selection's own budget of channels).
    """
    out: dict[int, list[list[int]]] = {}
    for g in analysis.groups:
        units = [r for r in g.units if r in scores and analysis.is_prunable(r)]
        if g.frozen or not units:
            continue
        order = sorted(units, key=lambda r: (scores[r], r))
        budget = _Budget(analysis, constraints)
        k_max = 0
        for r in order:
            if not budget.take(r):
                break
            k_max += 1
        n = len(g.units)
        rt = group_round_to(constraints.round_to, n)
        narrowest = -(-(n - k_max) // rt) * rt  # the narrowest width the limits allow, a multiple of rt
        sets, seen = [], set()
        for f in levels:
            kept = n if f >= 1 else min(n, max(narrowest, int(round(n * f / rt)) * rt))
            if kept in seen:
                continue
            seen.add(kept)
            sets.append(order[:n - kept])
        out[g.id] = sets
    return out


def _sites(analysis: Analysis, model: onnx.ModelProto) -> dict[int, list[_Site]]:
    """Consumer layers of every prunable group that multiply its channels by weights."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out: dict[int, list[_Site]] = {}
    for e in analysis.consumers:
        node = nodes.get(e.node)
        lab = analysis.labels.get(e.tensor)
        if node is None or lab is None or not len(lab.units):
            continue
        gid = analysis.group_of.get(int(analysis.root_of[lab.units[0]]))
        if gid is None or analysis.groups[gid].frozen:
            continue
        attrs = node_attrs(node)
        if node.op_type == "Conv" and int(attrs.get("group", 1)) != 1:
            continue  # depthwise / grouped: removed with the channels it consumes (same unit)
        if node.input[1] not in inits:
            raise ValueError(f"weight of {node.name!r} is not an initializer")
        W = numpy_helper.to_array(inits[node.input[1]])
        M = as_matrix(node.op_type, attrs, W)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        b0 = numpy_helper.to_array(inits[bias]) if bias in inits else np.zeros(M.shape[0], np.float32)
        added = bias is None and node.op_type in ("Conv", "Gemm")
        if added:
            bias = f"{node.name}__sensitivity_bias"
        refit = node.op_type in ("Conv", "Gemm") and not int(attrs.get("transA", 0))
        taps = M.shape[1] // lab.size
        out.setdefault(gid, []).append(_Site(node=node.name, op=node.op_type, attrs=attrs, input=node.input[0],
                                             output=node.output[0], weight=node.input[1], bias=bias,
                                             added_bias=added, w_shape=tuple(W.shape), matrix=M,
                                             bias0=b0.reshape(-1), taps=taps, refit=refit))
    return out


def _eval_model(model: onnx.ModelProto, sites: list[_Site]) -> onnx.ModelProto:
    """The model with every site's weight and bias as overridable inputs (a zero bias added where missing)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = {n.name: n for n in m.graph.node}
    for s in sites:
        if s.added_bias:
            m.graph.initializer.append(numpy_helper.from_array(np.zeros(s.matrix.shape[0], np.float32), s.bias))
            node = nodes[s.node]
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = s.bias
    inits = {t.name: t for t in m.graph.initializer}
    for s in sites:
        for name in (s.weight, s.bias):
            if name is not None and name in inits:
                t = inits[name]
                m.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    m.ir_version = max(m.ir_version, 4)
    return m


def _suffix(model: onnx.ModelProto, sites: list[_Site]) -> tuple[onnx.ModelProto, list[str], list[int]]:
    """The part of ``model`` from the first site on, with the sites' weights as inputs; the tensors it is fed
    and the positions of the model outputs it computes.

    Everything before the first consumer of a group is the same whatever the
    group loses, so it is computed once (the base run) and not per option;
    only this group's weights are inputs, so every other layer keeps
    onnxruntime's fast paths for constant weights. An output computed before
    the first site (another head) is unchanged: the loss takes it from the base run.
    """
    names = {s.node for s in sites}
    nodes = list(model.graph.node)
    start = min(i for i, n in enumerate(nodes) if n.name in names)
    sub, feeds, reached = extract_reached(model, nodes[start:], [o.name for o in model.graph.output], name="suffix")
    weights = {x for s in sites for x in (s.weight, s.bias)}
    return _eval_model(sub, sites), [f for f in feeds if f not in weights], reached


def _collect(model: onnx.ModelProto, sites: list[_Site], feeds: list[dict], n_fit: int, max_rows: int,
             rng: np.random.Generator) -> None:
    """One streamed pass of the original model: Gram sums of every re-fitted site, fit and held-back rows apart."""
    todo = [s for s in sites if s.refit]
    names = sorted({x for s in todo for x in (s.input, s.output)})
    if not names:
        return
    n_img = sum(next(iter(f.values())).shape[0] for f in feeds)
    for start, end, out in stream(model, names, feeds):
        for s in todo:
            x, y = out[s.input], out[s.output]
            if s.system is None:
                s.system = GramSystem(s.matrix.shape[1], s.matrix.shape[0])
            if s.op == "Conv" and s.rows_n is None:
                s.sample_per_sample(y, n_img, max_rows, rng)
            rows, target = s.rows(x, s.w_shape, start), s.targets(y, start)
            split = s.rows_before(n_fit, start, end - start, rows.shape[0])
            if split:
                s.system.add(rows[:split], target[:split], held=False)
            if split < rows.shape[0]:
                s.system.add(rows[split:], target[split:], held=True)
        del out


def _option_feeds(analysis: Analysis, s: _Site, removed: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """Weight (and bias) of a site with the removed channels' columns zero and the rest re-fitted; proxy error."""
    keep = analysis.keep_mask(s.input, removed)
    cols_keep = np.repeat(keep, s.taps)
    M, b = s.matrix.copy(), s.bias0.copy()
    proxy = 0.0
    fit = fit_gram(s.system, np.flatnonzero(cols_keep), s.matrix, s.bias0) if s.refit and s.system else None
    if fit is not None and fit.improves:
        M[:, cols_keep] = fit.weight
        b = fit.bias
    M[:, ~cols_keep] = 0.0
    if fit is not None:
        energy = s.system.yy["val"] / max(s.system.rows["val"] * M.shape[0], 1)
        proxy = min(fit.err_fit, fit.err_plain) / max(energy, 1e-30)
    feeds = {s.weight: from_matrix(s.op, s.attrs, M, s.w_shape).astype(np.float32)}
    if s.bias is not None:
        feeds[s.bias] = b.astype(np.float32).reshape(-1)
    return feeds, proxy


class Sensitivity:
    """The curves of every prunable group of ``analysis`` (``model`` is its normalised model), and the
    distortion of any combination of their options (every chosen re-fit fed at once).

    ``feeds``: calibration batches in order; the last ``held_fraction`` of
    the samples measure, the others fit (the split the recovery pass uses, :func:`onnxprune.lsq.fit_samples`).
    ``refit=False`` measures the plain removal (for runs without recovery).
    """

    def __init__(self, analysis: Analysis, model: onnx.ModelProto, scores: dict[int, float],
                 constraints: Constraints, feeds: list[dict[str, np.ndarray]], *, cost="auto",
                 held_fraction: float = HELD_BACK, levels: Sequence[float] = LEVELS, max_rows: int = MAX_ROWS,
                 refit: bool = True, seed: int = 0) -> None:
        self.analysis = analysis
        self.cost = cost
        self.orders = group_orders(analysis, scores, constraints, levels)
        self.sites_of = _sites(analysis, model)
        all_sites = [s for g in self.orders for s in self.sites_of.get(g, [])]
        for s in all_sites:
            s.refit = s.refit and refit
        n_img = sum(next(iter(f.values())).shape[0] for f in feeds)
        n_fit = fit_samples(n_img, held_fraction)
        _collect(model, all_sites, feeds, n_fit, max_rows, np.random.default_rng(seed))
        self.held = _held_back(feeds, n_fit)
        self.model = model
        self.suffixes = {g: _suffix(model, self.sites_of[g]) for g in self.orders if self.sites_of.get(g)}
        outputs = [o.name for o in model.graph.output]
        graph_inputs = {i.name for i in model.graph.input}
        cuts = sorted({x for _, feeds_of, _ in self.suffixes.values() for x in feeds_of} - set(outputs) - graph_inputs)
        base_session = make_session(expose(model, cuts))
        self.base, self.cut_values = [], []
        for f in self.held:
            values = dict(zip(outputs + cuts, base_session.run(outputs + cuts, f)))
            self.base.append([values[o] for o in outputs])
            self.cut_values.append({**f, **values})
        self._joint = None
        self._sessions: dict[int, object] = {}
        self.option_feeds: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def _distortion(self, session, inputs: list[str], option: dict[str, np.ndarray],
                    reached: Optional[list[int]] = None) -> float:
        """Mean cost over every model output; those outside ``reached`` (None: all) are the base run's."""
        costs = []
        for v, base in zip(self.cut_values, self.base):
            run = session.run(None, {**{x: v[x] for x in inputs}, **option})
            pert = list(base)
            for i, y in zip(range(len(base)) if reached is None else reached, run):
                pert[i] = y
            costs.append(oracle_cost(self.cost, base, pert, None))
        return float(np.concatenate(costs).mean())

    def loss(self, gid: int, option: dict[str, np.ndarray]) -> float:
        """Mean output distortion on the held-back samples with group ``gid``'s weights ``option`` fed."""
        if gid not in self.suffixes:
            return 0.0  # nothing multiplies its channels by weights: nothing downstream sees them
        model, inputs, reached = self.suffixes[gid]
        if gid not in self._sessions:
            self._sessions = {gid: make_session(model)}  # one group at a time: sessions are large
        return self._distortion(self._sessions[gid], inputs, option, reached)

    def curves(self) -> list[Curve]:
        out = []
        bar = LogProgress(len(self.orders), "sensitivity", unit="group")  # minutes on a detector: say so
        for gid, sets in self.orders.items():
            curve = Curve(gid)
            n = len(self.analysis.groups[gid].units)
            for i, removed in enumerate(sets):
                curve.widths.append(n - len(removed))
                curve.removed.append(list(removed))
                if not removed:
                    curve.loss.append(0.0)
                    curve.proxy.append(0.0)
                    continue
                rem = np.array(sorted(removed), dtype=np.int64)
                option, proxy = {}, 0.0
                for s in self.sites_of.get(gid, []):
                    f, p = _option_feeds(self.analysis, s, rem)
                    option.update(f)
                    proxy += p
                self.option_feeds[(gid, i)] = option
                curve.loss.append(self.loss(gid, option))
                curve.proxy.append(proxy)
            out.append(curve)
            logger.info("sensitivity of group %d (%s): %s", gid, self.analysis.groups[gid].name,
                        ", ".join(f"{w}:{l:.3g}" for w, l in zip(curve.widths, curve.loss)))
            bar.update(1)
        bar.close()
        return out

    def joint_loss(self, curves: list[Curve], choice: list[int]) -> float:
        """Distortion with every curve's chosen option applied together (each group's own re-fit)."""
        if self._joint is None:
            sites = [s for g in self.orders for s in self.sites_of.get(g, [])]
            inputs = [i.name for i in self.model.graph.input if i.name not in {x for s in sites for x in (s.weight, s.bias)}]
            self._joint = (make_session(_eval_model(self.model, sites)), inputs)
        option: dict[str, np.ndarray] = {}
        for c, i in zip(curves, choice):
            option.update(self.option_feeds.get((c.group, i), {}))
        return self._distortion(self._joint[0], self._joint[1], option)


def measure_curves(analysis: Analysis, model: onnx.ModelProto, scores: dict[int, float], constraints: Constraints,
                   feeds: list[dict[str, np.ndarray]], **kw) -> list[Curve]:
    """Sensitivity curve of every prunable group (see :class:`Sensitivity` for the settings)."""
    return Sensitivity(analysis, model, scores, constraints, feeds, **kw).curves()


def _held_back(feeds: list[dict[str, np.ndarray]], n_fit: int) -> list[dict[str, np.ndarray]]:
    """The samples after the first ``n_fit``, in their batches (the last fit batch split)."""
    out, start = [], 0
    for f in feeds:
        n = next(iter(f.values())).shape[0]
        if start + n > n_fit:
            cut = max(0, n_fit - start)
            out.append({k: v[cut:] for k, v in f.items()})
        start += n
    return out or feeds[-1:]
