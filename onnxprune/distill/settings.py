"""Settings of ``--recover distill``: one frozen, validated object (no torch import here).

The defaults are safe rather than tuned: a small Adam step with cosine decay
(the least-squares weights are already close, a large step throws that away:
measured, 1e-4 helped ResNet-56 on 968 rows but cost EfficientNet-Lite0 three
points on 219, where 3e-5 gained on both), augmentation on every batch for
image inputs, and a wall-clock budget that bounds the run whatever the epochs
say.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class DistillSettings:
    """How the pruned model is fine-tuned against the dense one on the unlabeled calibration rows.

    ``epochs``: passes over the fit rows (fewer when ``time_s`` runs out);
    ``lr``: Adam's learning rate, decayed to 0 on a cosine over the steps that
    fit the budget; ``batch``: rows per step; ``time_s``: wall-clock budget of
    the training in seconds; ``augment``: random-resized crops and flips for
    NCHW image inputs (none for other inputs); ``feature_weight``: weight of the
    feature-map term at the re-fitted layers' outputs (0: outputs only);
    ``temperature``: of the KL term on logits; ``patience``: epochs without a
    lower held-back loss before stopping early; ``seed``: of shuffling and
    augmentation; ``rows``: calibration rows the fine-tuning may read beyond
    ``--calib-limit`` (scoring and least squares keep their rows; the rows
    held back for fidelity are never trained on); ``ema``: decay of an
    exponential moving average of the weights, judged and kept instead of the
    last step's (0: off).
    """

    epochs: int = 8
    lr: float = 3e-5
    batch: int = 16
    time_s: float = 600.0
    augment: bool = True
    feature_weight: float = 0.5
    temperature: float = 1.0
    patience: int = 6
    seed: int = 0
    rows: int = 1024
    ema: float = 0.99

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise InvalidArgumentError(f"distillation epochs must be a whole number >= 1, got {self.epochs!r}")
        if not self.lr > 0:
            raise InvalidArgumentError(f"distillation learning rate must be positive, got {self.lr!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise InvalidArgumentError(f"distillation batch size must be a whole number >= 1, got {self.batch!r}")
        if not self.time_s > 0:
            raise InvalidArgumentError(f"--distill-time is a positive number of seconds, got {self.time_s!r}")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise InvalidArgumentError(f"distillation rows must be a whole number >= 1, got {self.rows!r}")
        if not 0 <= self.ema < 1:
            raise InvalidArgumentError(f"the weight average's decay is in [0, 1), got {self.ema!r}")
        if self.feature_weight < 0 or not self.temperature > 0 or self.patience < 1:
            raise InvalidArgumentError("feature weight >= 0, temperature > 0 and patience >= 1, please")
