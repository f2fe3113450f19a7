"""Turn unit scores into a removal set that meets a target under per-layer constraints.

Units are taken in ascending score order (or score per MAC saved when
``cost_aware``); a unit is skipped when it would leave any tensor with fewer
channels than its minimum (at least one, HALCON's rule, and at least
``1 - max_layer_ratio`` of each layer). Percentage targets count kernels as
HALCON does; MAC and parameter budgets are met by a binary search on the
prefix of accepted units, costed by :class:`CostModel`. With ``round_to``
the units are taken in blocks that keep each group's width a multiple of it
(onnxruntime's blocked CPU kernels want multiples of 8), so the search
stays monotone and the budget is still met.

With ``allow_drop`` (opt-in), a group the analysis proved droppable (it
lives inside a residual branch, see :mod:`onnxprune.graph.depth`) is also
offered whole: one block of all its units, placed in the order by its
score (sum of its units' scores, or a given ``drop_scores`` entry) per MAC
the drop saves. Taking it removes the branch; blocks only ever add units,
so the search over prefixes stays monotone.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Optional, Union

import numpy as np

from ..graph.macs import CostModel
from ..config import Constraints, Target  # declared with every other setting
from ..errors import NothingToPruneError
from ..graph.analysis import Analysis

logger = logging.getLogger(__name__)


class _Budget:
    """Remaining removable channels of every distinct labelled tensor."""

    def __init__(self, analysis: Analysis, constraints: Constraints) -> None:
        roots = analysis.root_of
        producer_outputs = {layer.output for layer in analysis.layers.values()}
        seen: dict[bytes, int] = {}
        self.slack: list[int] = []
        self.touch: dict[int, list[tuple[int, int]]] = {}
        for name, lab in analysis.labels.items():
            r = roots[lab.units]
            key = r.tobytes()
            n = r.shape[0]
            minimum = 1
            if name in producer_outputs:
                minimum = max(constraints.min_kernels, math.ceil(n * (1 - constraints.max_layer_ratio) - 1e-9), 1)
            if key in seen:
                idx = seen[key]
                self.slack[idx] = min(self.slack[idx], n - minimum)
                continue
            idx = len(self.slack)
            seen[key] = idx
            self.slack.append(n - minimum)
            u, c = np.unique(r, return_counts=True)
            for root, count in zip(u.tolist(), c.tolist()):
                self.touch.setdefault(root, []).append((idx, count))

    def take(self, root: int) -> bool:
        entries = self.touch.get(root, [])
        if any(self.slack[i] < c for i, c in entries):
            return False
        for i, c in entries:
            self.slack[i] -= c
        return True


def ordered_candidates(analysis: Analysis, scores: dict[int, float], constraints: Constraints,
                       cost_aware: bool = False, cost: Optional[CostModel] = None) -> list[int]:
    """Units in removal order, each admissible given the ones before it."""
    units = [r for r in analysis.prunable_units if r in scores]
    if not units:
        raise NothingToPruneError("the model has no prunable convolution kernel "
                                  "(run `onnxprune inspect` to see why each group is frozen)")
    key = _keys(analysis, scores, units, cost_aware, cost)
    order = sorted(units, key=lambda r: (key[r], r))
    budget = _Budget(analysis, constraints)
    return [r for r in order if budget.take(r)]


def _keys(analysis: Analysis, scores: dict[int, float], units: list[int], cost_aware: bool,
          cost: Optional[CostModel]) -> dict[int, float]:
    """The order key of each unit: its score, or its score per MAC its removal saves."""
    if not cost_aware:
        return {r: scores[r] for r in units}
    savings = (cost or CostModel(analysis)).unit_savings()
    return {r: scores[r] / max(savings.get(r, (0.0, 0.0))[0], 1.0) for r in units}


def with_drop_blocks(analysis: Analysis, blocks: list[list[int]], order: list[int], scores: dict[int, float],
                     cost_aware: bool, cost: CostModel,
                     drop_scores: Optional[dict[int, float]] = None) -> tuple[list[list[int]], set[int]]:
    """``blocks`` with one block per droppable group (all its units) merged in; (blocks, ids of the drop blocks).

    A drop block goes where its key (the group's drop score, per MAC the
    drop saves when ``cost_aware``) falls among the units' keys; the other
    blocks keep the mean-rank positions :func:`removal_blocks` gave them.
    """
    key = _keys(analysis, scores, order, cost_aware, cost)
    order_keys = [key[r] for r in order]
    rank = {r: i for i, r in enumerate(order)}
    placed = [(sum(rank[r] for r in b) / len(b), rank[b[0]], i, b) for i, b in enumerate(blocks)]
    drop_ids: set[int] = set()
    for g in analysis.droppable_groups():
        if not all(r in scores for r in g.units):
            continue
        s = drop_scores[g.id] if drop_scores is not None and g.id in drop_scores else sum(scores[r] for r in g.units)
        if cost_aware:
            saved = cost.dense_macs - cost.evaluate(np.array(g.units, dtype=np.int64))[0]
            s = s / max(saved, 1.0)
        pos = float(bisect.bisect_left(order_keys, s))
        block = list(g.units)
        drop_ids.add(id(block))
        placed.append((pos, pos, len(placed), block))
    placed.sort(key=lambda t: t[:3])
    return [b for *_, b in placed], drop_ids


def group_round_to(round_to: Union[int, str], width: int) -> int:
    """The width multiple for one group of ``width`` channels.

    "auto": widths that are not multiples of 4 fall off onnxruntime's
    vectorised CPU paths, and a pruned model can run slower than the dense
    one (demo CNN at half the MACs, batch 64: dense 21-24 ms, free widths
    24-28 ms, even widths 25-35 ms, multiples of 4 13-14 ms, of 8 11-12 ms;
    measured back to back on a busy machine). Multiples of 8 match the AVX2
    blocked layout but are coarse on narrow layers, so 8 is kept for groups
    of 128 channels or more. Cost on ResNet-56 (16-64 channels) after least
    squares: none at 70% of the MACs, about 1.5 points of top-1 at 50%
    (benchmarks/RESULTS.md); use round_to=1 when only accuracy counts.
    """
    if round_to != "auto":
        return int(round_to)
    return 8 if width >= 128 else 4 if width >= 16 else 1


def removal_blocks(analysis: Analysis, order: list[int], round_to: Union[int, str]) -> list[list[int]]:
    """Group the ordered units into blocks whose removal keeps every group's width a multiple of ``round_to``.

    A group's units are cut, in their order, into blocks (the first of a
    group of n channels holds n mod round_to units, the next ones round_to);
    blocks are then ordered by the mean rank of their units, a greedy
    knapsack over blocks. Each block only removes channels, so MACs and
    parameters fall with every block taken, and a budget can be met by a
    search over how many blocks to take. Trailing units that do not fill a
    block are not removed.
    """
    if round_to != "auto" and int(round_to) <= 1:
        return [[r] for r in order]
    rank = {r: i for i, r in enumerate(order)}
    by_group: dict[int, list[int]] = {}
    for r in order:
        by_group.setdefault(analysis.group_of[r], []).append(r)
    blocks: list[list[int]] = []
    for gid, units in by_group.items():
        n = len(analysis.groups[gid].units)
        rt = group_round_to(round_to, n)
        start, size = 0, (n % rt or rt)
        while start + size <= len(units):
            blocks.append(units[start:start + size])
            start, size = start + size, rt
    # a block goes where its units sit on average: cheap units are not held back by one dearer neighbour
    blocks.sort(key=lambda b: (sum(rank[r] for r in b) / len(b), rank[b[0]]))
    return blocks


def select(analysis: Analysis, scores: dict[int, float], target: Target,
           constraints: Constraints = Constraints(), cost_aware: bool = False,
           cost: Optional[CostModel] = None, drop_scores: Optional[dict[int, float]] = None) -> list[int]:
    """Roots of the units to remove (``drop_scores``: group id -> score of dropping it whole, with allow_drop)."""
    target = target.effective
    order = ordered_candidates(analysis, scores, constraints, cost_aware, cost)
    blocks = removal_blocks(analysis, order, constraints.round_to)
    cost = cost or CostModel(analysis)
    drop_ids: set[int] = set()
    if constraints.allow_drop:
        blocks, drop_ids = with_drop_blocks(analysis, blocks, order, scores, cost_aware, cost, drop_scores)

    def take(k: int) -> list[int]:
        return list(dict.fromkeys(r for b in blocks[:k] for r in b))  # a drop block repeats narrowed units

    if target.percentage is not None:
        total = sum(len(analysis.unit_kernels[r]) for r in analysis.prunable_units)
        want = total * target.percentage / 100.0
        chosen: dict[int, None] = {}
        count = 0
        for b in blocks:
            if count >= want - 1e-9:
                break
            for r in b:
                if r not in chosen:
                    chosen[r] = None
                    count += len(analysis.unit_kernels[r])
        return list(chosen)
    is_macs = target.macs is not None
    limit = (target.macs if is_macs else target.params) * (cost.dense_macs if is_macs else cost.dense_params)

    def measure(k: int) -> float:
        return _measure_units(cost, take(k), is_macs)

    lo, hi = 0, len(blocks)
    if measure(hi) > limit:
        logger.warning("target %s cannot be reached within the per-layer limits; removing every admissible unit",
                       target.describe())
        return take(hi)
    while lo < hi:  # every block removes channels only, so the measure falls with k
        mid = (lo + hi) // 2
        if measure(mid) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return _cheapest_last_block(analysis, blocks, lo, scores,
                                lambda units: _measure_units(cost, units, is_macs) <= limit, drop_ids)


def _measure_units(cost: CostModel, units: list[int], is_macs: bool) -> float:
    m, p = cost.evaluate(np.array(units, dtype=np.int64))
    return m if is_macs else p


def _cheapest_last_block(analysis: Analysis, blocks: list[list[int]], k: int, scores: dict[int, float],
                         fits, drop_ids: frozenset[int] | set[int] = frozenset(), scan: int = 512) -> list[int]:
    """The first k-1 blocks plus, of the blocks that would meet the budget after them, the lowest-scored one.

    The k-th block in per-MAC order can overshoot the budget by a lot when
    blocks are coarse (round-to 8 on a 32-channel layer); a later block with
    a lower score often meets it too. Only a group's next block qualifies, so
    widths stay multiples of round-to.
    """
    if k == 0:
        return []
    base = list(dict.fromkeys(r for b in blocks[:k - 1] for r in b))
    done = set(base)
    taken: dict[int, int] = {}
    for b in blocks[:k - 1]:
        if id(b) in drop_ids:
            continue
        g = analysis.group_of[b[0]]
        taken[g] = taken.get(g, 0) + 1
    seen: dict[int, int] = dict(taken)
    best, best_score = blocks[k - 1], sum(scores[r] for r in blocks[k - 1] if r not in done)
    for b in blocks[k - 1:k - 1 + scan]:
        if id(b) in drop_ids:  # a whole group: always a valid last block
            sc = sum(scores[r] for r in b if r not in done)
            if sc < best_score and fits(base + [r for r in b if r not in done]):
                best, best_score = b, sc
            continue
        g = analysis.group_of[b[0]]
        nth = seen.get(g, 0)
        seen[g] = nth + 1
        if nth != taken.get(g, 0):  # an earlier block of this group is not taken
            continue
        if any(r in done for r in b):
            continue
        sc = sum(scores[r] for r in b)
        if sc < best_score and fits(base + b):
            best, best_score = b, sc
    return base + [r for r in best if r not in done]
