"""Random criterion: the baseline every other criterion must beat."""

from __future__ import annotations

import numpy as np

from ..graph.analysis import Analysis


def random_scores(analysis: Analysis, seed: int = 0) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    units = analysis.prunable_units
    return dict(zip(units, rng.random(len(units)).tolist()))
