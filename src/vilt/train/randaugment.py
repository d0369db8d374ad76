"""RandAugment as the original ViLT fine-tuning uses it (original-vilt.md §2.7).

N = 2 operations drawn with replacement from 14, at the fixed magnitude M = 9 of 30; each operation's
value is M / 30 x (max - min) + min. Invert and Cutout are left out (colours and small objects matter
to the texts), and there is no flip or crop. One deviation: geometric operations fill the uncovered area
with the image's top-left pixel instead of black. Applied to the PIL image before the processor's resize.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps


def _signed(value: float, rng: random.Random) -> float:
    return value if rng.random() < 0.5 else -value


def _border(image: Image.Image) -> tuple[int, ...]:
    """The top-left pixel: what geometric operations fill uncovered areas with (the original fills black,
    which would add a black region to the picture)."""
    return image.getpixel((0, 0))  # type: ignore[return-value]


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, fillcolor=_border(image))


def _solarize_add(image: Image.Image, value: float, rng: random.Random) -> Image.Image:
    pixels = np.asarray(image).astype(np.int32)
    added = np.clip(pixels + int(value), 0, 255).astype(np.uint8)
    return Image.fromarray(np.where(pixels < 128, added, pixels.astype(np.uint8)))


Operation = Callable[[Image.Image, float, random.Random], Image.Image]

# name -> (operation, min value, max value), as the original augment_list
OPERATIONS: dict[str, tuple[Operation, float, float]] = {
    "AutoContrast": (lambda im, v, r: ImageOps.autocontrast(im), 0, 1),
    "Equalize": (lambda im, v, r: ImageOps.equalize(im), 0, 1),
    "Rotate": (lambda im, v, r: im.rotate(_signed(v, r), fillcolor=_border(im)), 0, 30),
    "Posterize": (lambda im, v, r: ImageOps.posterize(im, int(v)), 0, 4),
    "Solarize": (lambda im, v, r: ImageOps.solarize(im, math.ceil(v)), 0, 256),  # i < v iff i < ceil(v)
    "SolarizeAdd": (_solarize_add, 0, 110),
    "Color": (lambda im, v, r: ImageEnhance.Color(im).enhance(v), 0.1, 1.9),
    "Contrast": (lambda im, v, r: ImageEnhance.Contrast(im).enhance(v), 0.1, 1.9),
    "Brightness": (lambda im, v, r: ImageEnhance.Brightness(im).enhance(v), 0.1, 1.9),
    "Sharpness": (lambda im, v, r: ImageEnhance.Sharpness(im).enhance(v), 0.1, 1.9),
    "ShearX": (lambda im, v, r: _affine(im, (1, _signed(v, r), 0, 0, 1, 0)), 0.0, 0.3),
    "ShearY": (lambda im, v, r: _affine(im, (1, 0, 0, _signed(v, r), 1, 0)), 0.0, 0.3),
    "TranslateXabs": (lambda im, v, r: _affine(im, (1, 0, _signed(v, r), 0, 1, 0)), 0.0, 100),
    "TranslateYabs": (lambda im, v, r: _affine(im, (1, 0, 0, 0, 1, _signed(v, r))), 0.0, 100),
}


class RandAugment:
    """Apply ``n`` random operations at magnitude ``m`` (of 30) to an RGB PIL image.

    Args:
        n: operations per image, drawn with replacement.
        m: magnitude, 0 to 30.
        operations: names of the operations to draw from (default: all 14 of :data:`OPERATIONS`), e.g.
            only the geometric ones when colours must be kept.
    """

    def __init__(self, n: int = 2, m: int = 9, operations: Sequence[str] | None = None) -> None:
        if n < 0 or not 0 <= m <= 30:
            raise ValueError(f"RandAugment needs n >= 0 and 0 <= m <= 30, got n={n}, m={m}")
        self.operations = list(operations or OPERATIONS)
        unknown = sorted(set(self.operations) - set(OPERATIONS))
        if unknown or not self.operations:
            raise ValueError(f"unknown RandAugment operations {unknown}; choose from {', '.join(OPERATIONS)}")
        self.n, self.m = n, m

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        for name in rng.choices(self.operations, k=self.n):
            operation, low, high = OPERATIONS[name]
            image = operation(image, self.m / 30 * (high - low) + low, rng)
        return image
