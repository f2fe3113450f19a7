"""Augmented copies of image calibration samples: random-resized crops and horizontal flips.

Least squares fits thousands of weights per layer from a few hundred images
and over-fits them (calibration top-1 back at dense while held-out images
lag). OBC and SPDY calibrate on every image in several augmented rounds;
here each sample gets ``rounds`` copies, each a random crop of ``scale`` of
its area (aspect ratio in ``ratio``) resized back to the sample's size, and
mirrored left-right with probability ``flip``. It works on the model
inputs themselves (after normalisation): bilinear resampling and flips are
linear with weights summing to one, so they commute with any per-channel
scale/mean/std. Seeded, so a run is reproducible.

Copies are placed image by image (an image, then its copies), so the
held-back fifth of least squares (the last samples) holds whole images with
their copies, never a copy of an image it was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import CalibrationError, InvalidArgumentError


@dataclass(frozen=True)
class Augment:
    """How many copies of each image, and how they are drawn (defaults keep the object in view)."""

    rounds: int = 0
    seed: int = 0
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, (int, np.integer)) or self.rounds < 0:
            raise InvalidArgumentError(f"augment rounds must be a whole number >= 0, got {self.rounds!r}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise InvalidArgumentError(f"augment scale is an area share range within (0, 1], got {self.scale!r}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise InvalidArgumentError(f"augment ratio is a positive range, got {self.ratio!r}")
        if not 0 <= self.flip <= 1:
            raise InvalidArgumentError(f"augment flip is a probability, got {self.flip!r}")


def image_axes(shape: tuple[int, ...]) -> Optional[tuple[int, int, int]]:
    """(channel, height, width) axes of a batch of images [N,C,H,W] or [N,H,W,C] with 1 or 3 channels."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3) and shape[3] not in (1, 3):
        return 1, 2, 3
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        return 3, 1, 2
    if shape[1] in (1, 3):  # both could be channels (tiny images): NCHW, the ONNX default
        return 1, 2, 3
    return None


def _resample(size: int, start: float, length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (i0, i1, w1) that stretch [start, start + length) of an axis of ``size`` pixels onto all of it.

    Pixel centres are sampled (half-pixel convention); taps beyond the edge
    repeat the edge pixel.
    """
    centres = np.clip(start + (np.arange(size) + 0.5) * (length / size) - 0.5, 0, size - 1)
    i0 = np.floor(centres).astype(np.int64)
    w1 = (centres - i0).astype(np.float32)
    return i0, np.minimum(i0 + 1, size - 1), w1


def _crop_box(rng: np.random.Generator, height: int, width: int, spec: Augment) -> tuple[float, float, float, float]:
    """(top, left, h, w) of a random crop: area share in ``scale``, aspect ratio log-uniform in ``ratio``."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*spec.scale)
        aspect = float(np.exp(rng.uniform(np.log(spec.ratio[0]), np.log(spec.ratio[1]))))
        w, h = np.sqrt(target * aspect), np.sqrt(target / aspect)
        if 1 <= w <= width and 1 <= h <= height:
            return float(rng.uniform(0, height - h)), float(rng.uniform(0, width - w)), float(h), float(w)
    return 0.0, 0.0, float(height), float(width)  # the whole image when no crop fits


def augment_image(image: np.ndarray, axes: tuple[int, int, int], rng: np.random.Generator,
                  spec: Augment) -> np.ndarray:
    """One random-resized, maybe flipped copy of ``image`` (one sample, the batch axis removed)."""
    c, y, x = (a - 1 for a in axes)
    height, width = image.shape[y], image.shape[x]
    top, left, h, w = _crop_box(rng, height, width, spec)
    out = image.astype(np.float32, copy=False)
    for axis, size, start, length in ((y, height, top, h), (x, width, left, w)):
        i0, i1, w1 = _resample(size, start, length)
        shape = [1] * out.ndim
        shape[axis] = size
        w1 = w1.reshape(shape)
        out = np.take(out, i0, axis=axis) * (1 - w1) + np.take(out, i1, axis=axis) * w1
    if rng.random() < spec.flip:
        out = np.flip(out, axis=x)
    return np.ascontiguousarray(out, dtype=np.float32)


def augment_arrays(arrays: dict[str, np.ndarray], labels: Optional[np.ndarray],
                   spec: Augment) -> tuple[dict[str, np.ndarray], Optional[np.ndarray]]:
    """Every sample followed by its ``spec.rounds`` copies; labels repeated alongside.

    Only float image inputs (rank 4 with 1 or 3 channels) can be augmented;
    a model with other inputs raises CalibrationError.
    """
    if spec.rounds == 0:
        return arrays, labels
    if len(arrays) != 1:
        raise CalibrationError(f"augmentation needs a model with one image input, this one has {len(arrays)} "
                               f"({', '.join(arrays)})")
    name, x = next(iter(arrays.items()))
    axes = image_axes(x.shape)
    if axes is None or not np.issubdtype(x.dtype, np.floating):
        raise CalibrationError(f"augmentation needs images [N,C,H,W] or [N,H,W,C] with 1 or 3 channels; "
                               f"input '{name}' is {x.dtype} {tuple(x.shape)}")
    rng = np.random.default_rng(spec.seed)
    copies = spec.rounds + 1
    out = np.empty((len(x) * copies,) + x.shape[1:], np.float32)
    for i, image in enumerate(x):
        out[i * copies] = image
        for r in range(1, copies):
            out[i * copies + r] = augment_image(image, axes, rng, spec)
    return {name: out}, (None if labels is None else np.repeat(labels, copies))
