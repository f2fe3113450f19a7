"""Turning images into model inputs: geometry, colour and normalization.

Pruning scores are only as good as the activations the calibration images
produce, so preprocessing must reproduce the model's own evaluation pipeline.
The steps and their order follow torchvision's classic evaluation transform:
convert colour, resize (the shorter side, then center-crop; or plainly to the
target size; or letterbox, as detectors are fed), scale, subtract the mean,
divide by the std, lay out as NCHW or NHWC. Images from a folder and uint8
arrays go through the same functions, so the two sources give identical
inputs for identical pixels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import CalibrationError, InvalidArgumentError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""File name endings read as images (compared case-insensitively)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_RESAMPLING = getattr(Image, "Resampling", Image)  # Pillow < 9.1 keeps the names on Image
_INTERPOLATIONS = {
    "nearest": _RESAMPLING.NEAREST,
    "bilinear": _RESAMPLING.BILINEAR,
    "bicubic": _RESAMPLING.BICUBIC,
    "lanczos": _RESAMPLING.LANCZOS,
}
_MODES = ("resize_crop", "resize")
LETTERBOX_PLACES = ("bottom-right", "center")
LETTERBOX_PAD = 114
"""Grey of the letterbox border: Ultralytics' pad colour (its detectors were trained with it)."""
_ORDERS = ("RGB", "BGR")
_LAYOUTS = ("NCHW", "NHWC")

FloatSeq = Union[float, tuple[float, ...], list[float]]


def _as_floats(name: str, value: FloatSeq) -> tuple[float, ...]:
    """Accept a number or a sequence so users can write mean=0.5 or mean=(0.5, 0.5, 0.5)."""
    values = (value,) if isinstance(value, (int, float)) else tuple(value)
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"Preprocess.{name} must be numbers, got {value!r}") from None
    if not floats or not all(math.isfinite(v) for v in floats):
        raise InvalidArgumentError(f"Preprocess.{name} must be one or more finite numbers, got {value!r}")
    return floats


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input; frozen so one object can be shared safely.

    - ``size``: output (height, width). ``None`` takes it from the model's
      input shape; required when the model's height/width are dynamic.
    - ``mode``: ``'resize_crop'`` resizes the shorter side to ``resize`` (or
      just enough to cover ``size`` when ``resize`` is None) and center-crops;
      ``'resize'`` stretches the image to ``size``, ignoring aspect ratio.
    - ``scale``, ``mean``, ``std``: ``x = (pixel * scale - mean) / std``.
      ``mean`` and ``std`` hold one value or one per channel, in the order
      the model receives them (after the BGR swap when ``channel_order='BGR'``).
    - ``channel_order``: ``'RGB'`` or ``'BGR'``; ``layout``: ``'NCHW'`` or ``'NHWC'``.
    - ``grayscale``: one luma channel (Pillow's ITU-R 601-2 conversion).
    - ``letterbox``: keep the aspect ratio instead of ``mode``: resize so the
      image fits ``size`` (the longer side, relative to the target, fills it),
      then pad with grey 114. ``True`` or ``'bottom-right'`` puts the image at
      the top-left and pads bottom/right (how the shared YOLOv8n export's
      preprocessing pads); ``'center'`` splits the padding as Ultralytics'
      ``LetterBox`` does by default (``center=True``: top = round(dh/2 - 0.1),
      bottom the rest). Ultralytics resizes with OpenCV's INTER_LINEAR and
      ``int(round(side * r))``; here the sizes round the same way and
      ``interpolation`` is Pillow's, which filters over the whole footprint
      when shrinking (OpenCV samples 2x2), so pixels can differ by a few levels.
    """

    size: Optional[tuple[int, int]] = None
    resize: Optional[int] = None
    mode: str = "resize_crop"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    grayscale: bool = False
    interpolation: str = "bilinear"
    letterbox: Union[bool, str, None] = None

    def __post_init__(self) -> None:
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
                raise InvalidArgumentError(
                    f"Preprocess.size must be (height, width) in positive integers, got {self.size!r}")
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        mode = str(self.mode).lower()
        if mode not in _MODES:
            raise InvalidArgumentError(f"Preprocess.mode must be one of {_MODES}, got {self.mode!r}")
        object.__setattr__(self, "mode", mode)
        if self.resize is not None:
            if not isinstance(self.resize, (int, np.integer)) or self.resize <= 0:
                raise InvalidArgumentError(f"Preprocess.resize must be a positive integer, got {self.resize!r}")
            if mode != "resize_crop":
                raise InvalidArgumentError(
                    "Preprocess.resize (the shorter side before cropping) only applies with mode='resize_crop'")
            if self.size is not None:
                _check_resize_covers(self.resize, self.size)
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale) or self.scale <= 0:
            raise InvalidArgumentError(f"Preprocess.scale must be a positive number, got {self.scale!r}")
        mean = _as_floats("mean", self.mean)
        std = _as_floats("std", self.std)
        if any(v <= 0 for v in std):
            raise InvalidArgumentError(f"Preprocess.std must be positive, got {self.std!r}")
        channels = 1 if self.grayscale else 3
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise InvalidArgumentError(
                    f"Preprocess.{name} has {len(values)} values; a {'grayscale' if self.grayscale else 'colour'} "
                    f"image has {channels} channel(s): give 1 or {channels}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        order = str(self.channel_order).upper()
        if order not in _ORDERS:
            raise InvalidArgumentError(f"Preprocess.channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        object.__setattr__(self, "channel_order", order)
        layout = str(self.layout).upper()
        if layout not in _LAYOUTS:
            raise InvalidArgumentError(f"Preprocess.layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        object.__setattr__(self, "layout", layout)
        interp = str(self.interpolation).lower()
        if interp not in _INTERPOLATIONS:
            raise InvalidArgumentError(
                f"Preprocess.interpolation must be one of {tuple(_INTERPOLATIONS)}, got {self.interpolation!r}")
        object.__setattr__(self, "interpolation", interp)
        object.__setattr__(self, "letterbox", _letterbox_place(self.letterbox))
        if self.letterbox is not None and self.resize is not None:
            raise InvalidArgumentError("Preprocess.resize (the shorter side before cropping) does not apply "
                                       "with letterbox: the image is fitted into size and padded")
        object.__setattr__(self, "grayscale", bool(self.grayscale))

    @property
    def channels(self) -> int:
        """Channels of the produced input: 1 for grayscale, else 3."""
        return 1 if self.grayscale else 3


def _letterbox_place(value: Union[bool, str, None]) -> Optional[str]:
    """None (no letterbox), 'bottom-right' (True) or 'center'."""
    if value is None or value is False:
        return None
    if value is True:
        return "bottom-right"
    place = str(value).lower().replace("_", "-")
    if place not in LETTERBOX_PLACES:
        raise InvalidArgumentError(
            f"Preprocess.letterbox must be True, {' or '.join(repr(p) for p in LETTERBOX_PLACES)}, got {value!r}")
    return place


def letterbox_image(image: Image.Image, size: tuple[int, int], place: str, resample: int) -> Image.Image:
    """``image`` resized to fit ``size`` = (height, width) with its aspect ratio kept, padded with grey 114."""
    height, width = size
    w, h = image.size
    r = min(height / h, width / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample)
    if (new_w, new_h) == (width, height):
        return image
    dw, dh = width - new_w, height - new_h
    left, top = (int(round(dw / 2 - 0.1)), int(round(dh / 2 - 0.1))) if place == "center" else (0, 0)
    fill = LETTERBOX_PAD if image.mode == "L" else (LETTERBOX_PAD,) * len(image.getbands())
    canvas = Image.new(image.mode, (width, height), fill)
    canvas.paste(image, (left, top))
    return canvas


def _check_resize_covers(resize: int, size: tuple[int, int]) -> None:
    """A shorter side below the crop would leave the crop partly outside the image."""
    if resize < max(size):
        raise InvalidArgumentError(
            f"Preprocess.resize={resize} is smaller than the {size[0]}x{size[1]} crop: "
            f"use resize >= {max(size)} (e.g. 256 for a 224 crop), or mode='resize'")


def resize_image(image: Image.Image, size: tuple[int, int], preprocess: Preprocess) -> Image.Image:
    """Apply the geometry of ``preprocess`` to reach ``size`` = (height, width).

    Matches torchvision: Resize(shorter side) truncates the longer side to an
    integer, CenterCrop rounds the offsets.
    """
    height, width = size
    resample = _INTERPOLATIONS[preprocess.interpolation]
    w, h = image.size
    if preprocess.letterbox is not None:
        return letterbox_image(image, size, preprocess.letterbox, resample)
    if preprocess.mode == "resize":
        return image if (w, h) == (width, height) else image.resize((width, height), resample)
    if preprocess.resize is not None:
        _check_resize_covers(preprocess.resize, size)
        if w <= h:
            new_w, new_h = preprocess.resize, int(preprocess.resize * h / w)
        else:
            new_w, new_h = int(preprocess.resize * w / h), preprocess.resize
    else:
        factor = max(height / h, width / w)
        new_w, new_h = max(width, round(w * factor)), max(height, round(h * factor))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample)
    left = int(round((new_w - width) / 2.0))
    top = int(round((new_h - height) / 2.0))
    if (left, top, new_w, new_h) == (0, 0, width, height):
        return image
    return image.crop((left, top, left + width, top + height))


def image_to_pixels(image: Image.Image, size: tuple[int, int], preprocess: Preprocess) -> np.ndarray:
    """Colour-convert and resize a Pillow image: uint8 [H, W, C], RGB or gray."""
    image = image.convert("L" if preprocess.grayscale else "RGB")
    pixels = np.asarray(resize_image(image, size, preprocess), dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def load_image(path: Union[str, Path], size: tuple[int, int], preprocess: Preprocess) -> np.ndarray:
    """Read one image file into uint8 [H, W, C]; a bad file names itself in the error."""
    try:
        with Image.open(path) as image:
            image.load()
            return image_to_pixels(image, size, preprocess)
    except UnidentifiedImageError:
        raise CalibrationError(f"{path}: not a readable image (corrupt, or not an image format Pillow knows)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CalibrationError(f"{path}: cannot read the image ({exc})") from None


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 [..., 3] to luma [..., 1], bit-exact with Pillow's convert('L')."""
    rgb = pixels.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def resize_pixels(pixels: np.ndarray, size: tuple[int, int], preprocess: Preprocess) -> np.ndarray:
    """Resize a batch of uint8 [N, H, W, C] images with the same geometry as image files."""
    if pixels.shape[1:3] == tuple(size):
        return pixels
    out = []
    for one in pixels:
        image = Image.fromarray(one[..., 0] if one.shape[-1] == 1 else one)
        resized = np.asarray(resize_image(image, size, preprocess), dtype=np.uint8)
        out.append(resized[..., None] if resized.ndim == 2 else resized)
    return np.stack(out)


def normalize(pixels: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """uint8 [N, H, W, C] (RGB or gray) to float32 model inputs in the requested layout."""
    x = pixels.astype(np.float32)
    if preprocess.channel_order == "BGR" and x.shape[-1] == 3:
        x = x[..., ::-1]
    x *= np.float32(preprocess.scale)
    x -= np.asarray(preprocess.mean, dtype=np.float32)
    x /= np.asarray(preprocess.std, dtype=np.float32)
    if preprocess.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_image(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """One Pillow image to one float32 sample ([C, H, W] or [H, W, C]); needs ``preprocess.size``."""
    if preprocess.size is None:
        raise InvalidArgumentError("preprocess_image needs Preprocess(size=(height, width))")
    return normalize(image_to_pixels(image, preprocess.size, preprocess)[None], preprocess)[0]
