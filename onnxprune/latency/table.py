"""Latency lookup table: per channel group, the measured time of its layers at a few kept widths.

HALP's idea, post-training and on the user's runtime: instead of assuming
that time follows MACs (it does not: widths off the vector size fall off
onnxruntime's blocked kernels), time each group's layers
(:mod:`.pieces`) at candidate widths on the provider, batch and thread count
the user names. Widths are every multiple of 4 (groups up to 64 channels) or
8 (up to 256; coarser above) plus a few odd ones, so the table itself shows
which widths are fast. Tables are cached on disk (:mod:`.cache`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Union

from ..graph.analysis import Analysis, Group
from .cache import TableCache, table_key
from .timing import LatencySettings, Timing, feeds_for, time_interleaved
from .pieces import WidthMasks, build_piece, group_nodes

logger = logging.getLogger(__name__)


def candidate_widths(n: int, round_to: Union[int, str, None] = None, min_width: int = 1) -> list[int]:
    """Kept widths to time for a group of ``n`` channels, ascending, always ending with ``n``.

    ``round_to`` given as an integer (the user's constraint) allows only its
    multiples; otherwise the grid above plus a few odd widths.
    """
    if isinstance(round_to, int) and round_to > 1:
        widths = set(range(round_to, n + 1, round_to))
    elif n <= 16:
        widths = set(range(1, n + 1))
    else:
        step = 4 if n <= 64 else 8 if n <= 256 else 8 * math.ceil(n / 32 / 8)
        widths = set(range(step, n + 1, step))
        widths |= {n - 1, (n // 2) | 1, (3 * n // 4) | 1, (n // 4) | 1}
    widths.add(n)
    return sorted(w for w in widths if min_width <= w <= n or w == n)


@dataclass(frozen=True)
class GroupLatency:
    """Measured time of one group's layers (ms) at each kept width, ascending widths."""

    widths: tuple[int, ...]
    times: tuple[Timing, ...]

    def ms(self, width: int) -> float:
        return self.times[self.widths.index(width)].median

    @property
    def dense(self) -> float:
        return self.times[-1].median


@dataclass
class LatencyTable:
    """Per group id: its :class:`GroupLatency`; ``dense`` is the whole model's measured time."""

    settings: LatencySettings
    dense: Timing
    groups: dict[int, GroupLatency] = field(default_factory=dict)
    cached: int = 0


def _group_key(analysis: Analysis, group: Group, widths: list[int]) -> str:
    return f"{'|'.join(group.layers)}#{len(group.units)}#{','.join(map(str, widths))}"


def measure_group(analysis: Analysis, group: Group, widths: list[int], settings: LatencySettings) -> GroupLatency:
    """Time the group's layers at every width, interleaved (all widths in each round)."""
    nodes = group_nodes(analysis, group)
    if not nodes:
        return GroupLatency(tuple(widths), tuple(Timing(0.0, 0.0, 0.0) for _ in widths))
    models, feeds = {}, {}
    for w in widths:
        piece, shapes = build_piece(analysis, nodes, WidthMasks(analysis, group, w), settings.batch)
        models[w] = piece
        feeds[w] = feeds_for(piece, shapes)
    times = time_interleaved(models, feeds, settings)
    return GroupLatency(tuple(widths), tuple(times[w] for w in widths))


def build_table(analysis: Analysis, settings: LatencySettings = LatencySettings(),
                round_to: Union[int, str, None] = None, cache: Optional[TableCache] = None) -> LatencyTable:
    """Measure (or read from the cache) the table of every prunable group and the dense model's time."""
    cache = cache if cache is not None else TableCache(settings.cache_dir)
    key = table_key(analysis.proto, settings)
    stored = cache.load(key)
    shapes = {k: (settings.batch,) + tuple(v[1:]) for k, v in analysis.probe.input_shapes.items()}
    if "dense" in stored:
        dense = Timing(*stored["dense"])
    else:
        dense = time_interleaved({0: analysis.proto}, {0: feeds_for(analysis.proto, shapes)}, settings)[0]
        stored["dense"] = dense.as_list()
    table = LatencyTable(settings, dense)
    changed = "groups" not in stored
    entries = stored.setdefault("groups", {})
    for group in analysis.groups:
        if group.frozen:
            continue
        n = len(group.units)
        widths = candidate_widths(n, round_to)
        gkey = _group_key(analysis, group, widths)
        if gkey in entries:
            e = entries[gkey]
            table.groups[group.id] = GroupLatency(tuple(e["widths"]), tuple(Timing(*t) for t in e["times"]))
            table.cached += 1
            continue
        gl = measure_group(analysis, group, widths, settings)
        table.groups[group.id] = gl
        entries[gkey] = {"widths": list(gl.widths), "times": [t.as_list() for t in gl.times]}
        changed = True
    if changed or "dense" not in stored:
        cache.store(key, stored)
    logger.info("latency table: %d groups (%d from the cache), dense model %s on %s", len(table.groups),
                table.cached, dense.text(), settings.describe())
    return table

