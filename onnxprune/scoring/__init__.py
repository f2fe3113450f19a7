"""Importance criteria: each maps every prunable unit (a root id) to a score; low scores go first."""

from .magnitude import magnitude_scores
from .random import random_scores

__all__ = ["magnitude_scores", "random_scores"]
