"""The criteria registry: name -> (needs calibration data?, score function, one-line help).

The CLI's choices, ``PruneConfig`` validation, the HALCON handle's modes and
the dispatch all read this one table, so a new criterion is one entry here.
A score function maps an Analysis (and, for data criteria, calibration
batches) to ``{unit root: score}``; low scores are removed first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import numpy as np

from ..calibration.readers import DEFAULT_BATCH_SIZE
from ..errors import CalibrationError, InvalidArgumentError
from ..graph.analysis import Analysis
from .activation import activation_scores, bn_scale_scores
from .magnitude import magnitude_scores
from .random import random_scores

logger = logging.getLogger(__name__)

Batches = Iterable[tuple[dict[str, np.ndarray], Optional[np.ndarray]]]


@dataclass(frozen=True)
class ScoreRequest:
    """What a score function may use: calibration batches (data criteria), a seed, oracle settings."""

    batches: Optional[list[tuple[dict[str, np.ndarray], Optional[np.ndarray]]]] = None
    samples: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    oracle_cost: Any = "auto"
    progress: bool = False
    executor: str = "local"
    ray_address: Optional[str] = None


@dataclass(frozen=True)
class Criterion:
    name: str
    needs_data: bool
    score: Callable[[Analysis, ScoreRequest], dict[int, float]]
    help: str
    halcon: bool = False  # offered as a HALCON handle mode


def _oracle(a: Analysis, req: ScoreRequest) -> dict[int, float]:
    import math

    from ..executors import make_executor
    from .oracle import OracleScorer
    with make_executor(req.executor, req.ray_address) as executor:
        scorer = OracleScorer(a, req.oracle_cost, progress=req.progress, executor=executor)
        return scorer.score_all(req.batches, total_batches=math.ceil(req.samples / max(req.batch_size, 1)))


def _activation(kind: str) -> Callable[[Analysis, ScoreRequest], dict[int, float]]:
    return lambda a, req: activation_scores(a, (f for f, _ in req.batches), kind)


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("oracle", True, _oracle, "change of the output when the kernel is removed (finite differences)",
              halcon=True),
    Criterion("energy", True, _activation("energy"), "E[x^2] x ||W[:, j]||^2 where the channel is consumed"),
    Criterion("energy_rel", True, _activation("energy_rel"), "energy relative to the residual stream it lands on"),
    Criterion("activation_mean", True, _activation("mean"), "mean |activation| where consumed"),
    Criterion("activation_std", True, _activation("std"), "standard deviation of the activation where consumed"),
    Criterion("magnitude", False, lambda a, req: magnitude_scores(a, 1), "layer-normalised L1 norm of the kernel",
              halcon=True),
    Criterion("l1", False, lambda a, req: magnitude_scores(a, 1), "same as magnitude", halcon=True),
    Criterion("l2", False, lambda a, req: magnitude_scores(a, 2), "layer-normalised L2 norm of the kernel",
              halcon=True),
    Criterion("bn_scale", False, lambda a, req: bn_scale_scores(a), "|gamma| of the BatchNorm after the kernel",
              halcon=True),
    Criterion("random", False, lambda a, req: random_scores(a, req.seed), "baseline", halcon=True),
)}

DATA_FREE = tuple(n for n, c in CRITERIA.items() if not c.needs_data)
NEEDS_DATA = tuple(n for n, c in CRITERIA.items() if c.needs_data)
HALCON_MODES = tuple(n for n, c in CRITERIA.items() if c.halcon)


def get_criterion(name: str) -> Criterion:
    """The registered criterion ``name``; InvalidArgumentError listing the choices otherwise."""
    c = CRITERIA.get(name)
    if c is None:
        raise InvalidArgumentError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    return c


def score(name: str, analysis: Analysis, request: ScoreRequest = ScoreRequest()) -> dict[int, float]:
    """Scores of every prunable unit of ``analysis`` under criterion ``name``."""
    c = get_criterion(name)
    if c.needs_data and not request.batches:
        raise CalibrationError(f"criterion {name!r} needs calibration data (--calib DIR|FILE or a "
                               "calibration_data_reader)")
    return c.score(analysis, request)
