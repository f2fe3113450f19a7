"""Synthetic text images for calibrating and checking the PaddleOCR models.

The OCR models in shared/ come without data; pruning scores need inputs that
look like what the models see: dark text on light, slightly noisy
backgrounds. Lines (48 px high) feed the recognizer and the direction
classifier, pages with several lines feed the detector. Rendering is
deterministic for a given seed and font set; fonts come from
/usr/share/fonts (DejaVu on Debian), else Pillow's built-in font.

Pixels are uint8 RGB [N, H, W, 3]; turn them into model inputs with
``ArrayReader(images, "x", preprocess=PPOCR_DET)`` (or ``PPOCR_REC``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from onnxprune.calibration import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from onnxprune.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

# PaddleOCR / RapidOCR read images with OpenCV (BGR) and normalize them as
# they are, so the ImageNet mean of the detector applies to B, G, R in turn.
# mode='resize' stretches to the model size, as their resize ops do.
PPOCR_REC = Preprocess(mode="resize", scale=1.0 / 255.0, mean=(0.5,), std=(0.5,), channel_order="BGR")
"""Recognizer (x [N,3,48,W]) and direction classifier (x [N,3,48,192]): (x/255 - 0.5) / 0.5."""
PPOCR_CLS = PPOCR_REC
PPOCR_DET = Preprocess(mode="resize", scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order="BGR")
"""Detector (x [N,3,H,W], H and W multiples of 32): ImageNet mean/std on BGR."""

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))

_WORDS = (
    "the of and to in is for on with as by at from this that are be or an it not can will all new more "
    "invoice total date amount price order number customer address street city phone email account "
    "payment receipt item quantity tax due balance report page section chapter figure table summary "
    "model network layer pruning channel kernel weight image text line document scan print office "
    "north south east west river mountain garden station market school library museum hospital "
    "Monday Tuesday Friday January March October December Hello World OCR Paddle Python Linux"
).split()
_PUNCT = (".", ",", ":", ";", "-", "/", "!", "?", "%", "#")


@dataclass(frozen=True)
class TextImages:
    """Rendered images with the text drawn on each and whether it was turned upside down."""

    images: np.ndarray
    texts: tuple[str, ...]
    rotated: np.ndarray


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[Path, ...]:
    """Installed TrueType/OpenType text fonts, sorted for reproducible choices."""
    found: list[Path] = []
    for root in FONT_DIRS:
        if root.is_dir():
            found.extend(p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    usable = [p for p in found if not any(bad in p.name.lower() for bad in ("math", "symbol", "emoji", "extralight"))]
    if not usable:
        logger.warning("no fonts in %s: using Pillow's built-in font (install fonts-dejavu-core for variety)",
                       ", ".join(str(d) for d in FONT_DIRS))
    return tuple(sorted(usable))


@functools.lru_cache(maxsize=256)
def _font(path: Optional[str], size: int) -> Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]:
    if path is not None:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()


def _pick_font(rng: np.random.Generator, size: int) -> Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]:
    fonts = font_files()
    path = str(fonts[int(rng.integers(len(fonts)))]) if fonts else None
    return _font(path, size)


def _word(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.7:
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        return word.capitalize() if rng.random() < 0.2 else (word.upper() if rng.random() < 0.05 else word)
    if kind < 0.85:
        return str(int(rng.integers(0, 10 ** int(rng.integers(1, 7)))))
    if kind < 0.95:
        return f"{rng.integers(0, 1000)}.{rng.integers(0, 100):02d}"
    return _PUNCT[int(rng.integers(len(_PUNCT)))]


def _text_fitting(rng: np.random.Generator, font: Union[ImageFont.FreeTypeFont, ImageFont.ImageFont],
                  max_width: float) -> str:
    """Random words up to a random share of ``max_width``; at least one (possibly cut) word."""
    target = max_width * float(rng.uniform(0.35, 1.0))
    text = _word(rng)
    while True:
        candidate = text + " " + _word(rng)
        if font.getlength(candidate) > target:
            break
        text = candidate
    while len(text) > 1 and font.getlength(text) > max_width:
        text = text[:-1]
    return text


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Light paper: a near-white tint, sometimes a soft gradient."""
    base = rng.integers(200, 256, size=3).astype(np.float32)
    image = np.broadcast_to(base, (height, width, 3)).copy()
    if rng.random() < 0.4:
        ramp = np.linspace(0.0, float(rng.uniform(-30, 30)), width, dtype=np.float32)
        image += ramp[None, :, None]
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.7:
        level = int(rng.integers(0, 70))
        return (level, level, level)
    colour = rng.integers(0, 110, size=3)
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def _finish(rng: np.random.Generator, image: Image.Image) -> np.ndarray:
    """Scanner look: sometimes a slight blur, always a little sensor noise."""
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.9))))
    pixels = np.asarray(image, dtype=np.float32)
    sigma = float(rng.uniform(0.0, 6.0))
    if sigma > 0:
        pixels = pixels + rng.normal(0.0, sigma, size=pixels.shape).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _render_line(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    image = _background(rng, height, width)
    draw = ImageDraw.Draw(image)
    size = max(8, int(height * rng.uniform(0.5, 0.8)))
    font = _pick_font(rng, size)
    margin = int(rng.integers(0, max(1, width // 12)))
    text = _text_fitting(rng, font, width - margin - 2)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    spare = max(0, height - (bottom - top))
    y = -top + int(rng.integers(0, spare + 1)) if spare else -top
    draw.text((margin - left, y), text, fill=_ink(rng), font=font)
    return _finish(rng, image), text


def _render_page(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    image = _background(rng, height, width)
    draw = ImageDraw.Draw(image)
    lines: list[str] = []
    y = int(rng.integers(2, max(3, height // 10)))
    while y < height:
        size = max(8, int(rng.uniform(0.045, 0.1) * height))
        font = _pick_font(rng, size)
        x = int(rng.integers(2, max(3, width // 4)))
        text = _text_fitting(rng, font, width - x - 2)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if y + (bottom - top) > height - 2:
            break
        if rng.random() < 0.1:  # a ruled line or box edge, as on forms
            draw.line([(0, y - 2), (width, y - 2)], fill=_ink(rng), width=1)
        draw.text((x - left, y - top), text, fill=_ink(rng), font=font)
        lines.append(text)
        y += (bottom - top) + int(rng.uniform(0.3, 1.5) * size)
    return _finish(rng, image), "\n".join(lines)


def render_text_samples(n: int, height: int, width: int, seed: int = 0, *, lines: Optional[int] = None,
                        rotate180: float = 0.0) -> TextImages:
    """Render ``n`` images with their texts; one line when ``height`` < 96 (unless ``lines`` says), else pages.

    ``lines``: 1 forces single lines, any other value pages of several lines.
    ``rotate180``: the share of images turned upside down (direction classifier data).
    """
    for name, value in (("n", n), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= rotate180 <= 1.0:
        raise InvalidArgumentError(f"rotate180 is a share between 0 and 1, got {rotate180!r}")
    single = (height < 96) if lines is None else lines == 1
    rng = np.random.default_rng(seed)
    images = np.empty((n, height, width, 3), dtype=np.uint8)
    texts: list[str] = []
    rotated = np.zeros(n, dtype=bool)
    for i in range(n):
        pixels, text = (_render_line if single else _render_page)(rng, height, width)
        if rotate180 and rng.random() < rotate180:
            pixels = pixels[::-1, ::-1]
            rotated[i] = True
        images[i] = pixels
        texts.append(text)
    return TextImages(images=images, texts=tuple(texts), rotated=rotated)


def render_text_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB [n, height, width, 3]: single text lines when height < 96, else pages."""
    return render_text_samples(n, height, width, seed).images


def render_text_lines(n: int, height: int = 48, width: int = 320, seed: int = 0, *,
                      rotate180: float = 0.0) -> np.ndarray:
    """Single text lines for the recognizer (48 x W) or, with ``rotate180``, the classifier (48 x 192)."""
    return render_text_samples(n, height, width, seed, lines=1, rotate180=rotate180).images


def render_text_pages(n: int, height: int = 320, width: int = 320, seed: int = 0) -> np.ndarray:
    """Pages of several text lines for the detector (height and width multiples of 32)."""
    if height % 32 or width % 32:
        logger.warning("PP-OCR detectors need height and width in multiples of 32, got %dx%d", height, width)
    return render_text_samples(n, height, width, seed, lines=0).images
