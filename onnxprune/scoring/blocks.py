"""The oracle of a whole residual branch: how much the output changes when a droppable group goes.

A unit's oracle score is the output change when that one channel is
zeroed; dropping a branch zeroes all of its group's channels at once, and
the change is not the sum of the single ones (the branch's constant output
stays, the channels interact). So each droppable group is measured whole:
the masked reference with every channel of the group zeroed is run on the
calibration batches and costed like the oracle (same cost function, mean
per sample), which makes the figure comparable with the units' scores in
a per-MAC ranking (:func:`onnxprune.allocation.selection.with_drop_blocks`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import numpy as np

from ..graph.analysis import Analysis
from ..graph.surgery import masked_reference
from ..runtime import make_session
from .oracle_cost import oracle_cost

logger = logging.getLogger(__name__)


def drop_scores(analysis: Analysis, batches: Iterable[tuple[dict[str, np.ndarray], Optional[np.ndarray]]],
                cost: Any = "auto", groups: Optional[Iterable[int]] = None) -> dict[int, float]:
    """Group id -> mean per-sample cost of dropping the group, for every droppable group (or ``groups``)."""
    batches = list(batches)
    wanted = [g.id for g in analysis.droppable_groups()] if groups is None else list(groups)
    if not wanted or not batches:
        return {}
    base_sess = make_session(analysis.proto)
    names = [o.name for o in base_sess.get_outputs()]
    base = [base_sess.run(names, feeds) for feeds, _ in batches]
    out: dict[int, float] = {}
    for gid in wanted:
        sess = make_session(masked_reference(analysis, analysis.groups[gid].units))
        total, count = 0.0, 0
        for (feeds, labels), b in zip(batches, base):
            total += float(oracle_cost(cost, b, sess.run(names, feeds), labels).sum())
            count += next(iter(feeds.values())).shape[0]
        out[gid] = total / max(count, 1)
        logger.debug("drop score of group %d (%s): %.4g", gid, analysis.groups[gid].name, out[gid])
    return out
