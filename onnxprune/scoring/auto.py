"""The default criterion with calibration data: the oracle where it is affordable, activation energy beyond.

The finite-difference oracle measures each unit's effect on the network
output, so its scores are comparable across layers and one global order
allocates the budget well (ResNet-56 at 70% / 50% of the MACs after least
squares: 81.9% / 75.0% top-1, better than per-group sensitivity allocation
on the same scores, benchmarks/RESULTS.md). Its cost grows with units x
MACs x images: ResNet-56 (1,072 units, 125 M MACs) on 256 images takes about
a minute on 2 cores, EfficientNet-Lite0 (11,000 units, 385 M MACs) about an
hour. Past ``ORACLE_WORK`` (about 10 minutes on 2 cores at the rate measured
for ResNet-56) the default switches to activation energy, a one-pass local
score; local scores are not comparable across layers, so with it the budget
is allocated by measured per-group sensitivity instead
(:meth:`onnxprune.config.PruneConfig.allocation_for`).

The work is counted at no fewer than ``REFERENCE_IMAGES`` images: a user who
passes fewer images asks for a faster run, and must never get the oracle
where more images would give energy (EfficientNet-Lite0 on 64 images: the
oracle ran 18.5 minutes and reached 42.6% top-1, energy on 256 images 64% in
2 minutes). The oracle's scores are also noisier on few images, so fewer
images only ever moves the choice toward energy, never away from it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

AUTO = "auto"
# units x dense MACs x images the oracle may cost by default (ResNet-56 x 256 images: 3.4e13)
ORACLE_WORK = 3e14
# images the work is counted at when fewer are given (the default --calib-limit)
REFERENCE_IMAGES = 256


def resolve_criterion(criterion: str, units: int, dense_macs: float, samples: int) -> str:
    """The concrete criterion for ``auto`` (others pass through)."""
    if criterion != AUTO:
        return criterion
    if samples <= 0:
        return "magnitude"
    counted = max(samples, REFERENCE_IMAGES)
    work = float(units) * float(dense_macs) * counted
    chosen = "oracle" if work <= ORACLE_WORK else "energy"
    logger.info("criterion auto: %s (%d units x %.3g MACs x %d images%s = %.2g, oracle up to %.2g)",
                chosen, units, dense_macs, counted,
                f" (counted at {REFERENCE_IMAGES}, {samples} given)" if counted != samples else "", work, ORACLE_WORK)
    return chosen
