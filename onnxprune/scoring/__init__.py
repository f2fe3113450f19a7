"""Importance criteria: each maps every prunable unit (a root id) to a score; low scores go first.

The registry (:mod:`.registry`) is the one list of criteria; everything else reads it.
"""

from .magnitude import magnitude_scores
from .random import random_scores
from .registry import CRITERIA, DATA_FREE, HALCON_MODES, NEEDS_DATA, Criterion, ScoreRequest, get_criterion, score

__all__ = ["magnitude_scores", "random_scores", "CRITERIA", "DATA_FREE", "HALCON_MODES", "NEEDS_DATA",
           "Criterion", "ScoreRequest", "get_criterion", "score"]
