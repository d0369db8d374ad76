"""Turn uploaded bytes into the small image the model reads, refusing what could hurt the server.

Two steps, so that no hostile upload costs more than its header before it is admitted:

1. :func:`open_image` reads only the header: empty input, an allowed format (raster formats only; no
   EPS/PDF, which would run external programs) and the pixel count. :func:`decode_cost` then says how
   much memory decoding will take, which the server checks against its memory budget.
2. :func:`fit_image` decodes (catching truncated and corrupt files), converts to RGB or grayscale exactly
   as :class:`vilt.ViltImageProcessor` does, and shrinks the result to the size the model reads. The
   processor then finds an image already at its target size, so the answer is the one the pipeline
   gives for the original file, while a queued request holds kilobytes instead of a full decoded image.

Alpha is flattened onto white in strips of rows, which gives the same pixels as one whole-image
composite at a fraction of its memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .errors import APIError

logger = logging.getLogger(__name__)

# raster formats Pillow decodes in-process
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
# as vilt.image_processing converts them: alpha is flattened onto white, numeric modes are scaled
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_NUMERIC_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_STRIP_ROWS = 256  # rows flattened at a time
_BYTES_PER_CONVERTED_PIXEL = 4  # Pillow stores RGB in 4 bytes a pixel


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Read one uploaded image's header (nothing is decoded), or raise an :class:`APIError`.

    Args:
        data: the encoded file, as uploaded.
        field: the request field it came from, for the error message.
        max_pixels: the largest width * height accepted.

    Raises:
        APIError: 400 for empty or unreadable data; 413 for too many pixels.
    """
    if not data:
        raise APIError(400, f"'{field}' is empty (0 bytes); upload an image file")
    too_many_pixels = f"the limit is {max_pixels} pixels, so downscale it first"
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise APIError(413, f"'{field}' has far too many pixels; {too_many_pixels}") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as err:
        raise APIError(
            400,
            f"'{field}' is not an image this server reads ({type(err).__name__}); upload one of "
            f"{', '.join(ALLOWED_FORMATS)}",
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise APIError(413, f"'{field}' is {width}x{height} = {width * height} pixels; {too_many_pixels}")
    return image


def decode_cost(image: Image.Image) -> int:
    """The bytes that decoding and converting ``image`` (opened by :func:`open_image`) hold at their peak."""
    pixels = image.width * image.height
    if image.mode in _ONE_BYTE_MODES:
        decoded = 1
    elif image.mode.startswith("I;16"):
        decoded = 2
    else:
        decoded = 4
    converted = 0 if image.mode in ("RGB", "L") else _BYTES_PER_CONVERTED_PIXEL
    if image.mode in _NUMERIC_MODES:
        converted = 3 * 8  # the processor scales these through float arrays
    return pixels * (decoded + converted)


def held_bytes(image: Image.Image) -> int:
    """The bytes a decoded image holds."""
    return image.width * image.height * (1 if image.mode in _ONE_BYTE_MODES else 4)


# ----------------------------------------------------------------------------- fitting to the model


@dataclass(frozen=True)
class ModelSize:
    """Resize as the model's image processor does: ``size_for(height, width) -> (height, width)``."""

    size_for: Callable[[int, int], tuple[int, int]]
    resample: int

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.size_for(image.height, image.width)
        return image.resize((width, height), resample=self.resample, reducing_gap=None)


@dataclass(frozen=True)
class LongestSide:
    """Shrink (never enlarge) so that neither side passes ``side`` pixels, keeping the aspect ratio."""

    side: int

    def __call__(self, image: Image.Image) -> Image.Image:
        image.thumbnail((self.side, self.side))
        return image


Fit = Callable[[Image.Image], Image.Image]


def model_size(image_processor: object) -> Fit | None:
    """The :class:`ModelSize` of a :class:`vilt.ViltImageProcessor`, or None when it does not resize."""
    from vilt.image_processing import get_resize_output_image_size

    if not getattr(image_processor, "do_resize", False):
        return None
    shortest_edge = image_processor.size["shortest_edge"]  # type: ignore[attr-defined]
    size_divisor = image_processor.size_divisor  # type: ignore[attr-defined]
    return ModelSize(
        functools.partial(
            get_resize_output_image_size, shortest_edge=shortest_edge, size_divisor=size_divisor
        ),
        image_processor.resample,  # type: ignore[attr-defined]
    )


def fit_image(image: Image.Image, field: str, fit: Fit | None) -> Image.Image:
    """Decode an opened image, convert it as the processor does and shrink it with ``fit``.

    Images in numeric modes (16-bit, float) are returned decoded but unconverted: the processor scales
    them itself.

    Raises:
        APIError: 400 when the data is truncated or corrupt, or the mode cannot be converted.
    """
    try:
        image.load()
    except _DECODE_ERRORS as err:
        raise APIError(
            400, f"'{field}' could not be decoded ({err}); the file is truncated or corrupt"
        ) from None
    if image.mode in _NUMERIC_MODES:
        return image
    try:
        converted = _to_rgb_or_gray(image)
    except ValueError as err:
        raise APIError(400, f"'{field}' has an image mode this server cannot convert ({err})") from None
    fitted = converted if fit is None else fit(converted)
    if fitted is not image:
        image.close()  # frees the full decoded pixels now, in this thread, whoever still refers to image
    return fitted


def _to_rgb_or_gray(image: Image.Image) -> Image.Image:
    """RGB, or L when grayscale; alpha (or a transparent colour) flattened onto white."""
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _flatten_on_white(image)
    if image.mode in ("RGB", "L"):
        return image
    return image.convert("L" if image.mode == "1" else "RGB")


def _flatten_on_white(image: Image.Image) -> Image.Image:
    """``alpha_composite(white, image)`` as RGB, a strip of rows at a time."""
    flat = Image.new("RGB", image.size)
    white = Image.new("RGBA", (image.width, _STRIP_ROWS), (255, 255, 255, 255))
    for top in range(0, image.height, _STRIP_ROWS):
        strip = image.crop((0, top, image.width, min(top + _STRIP_ROWS, image.height))).convert("RGBA")
        background = white if strip.height == _STRIP_ROWS else white.crop((0, 0, image.width, strip.height))
        flat.paste(Image.alpha_composite(background, strip).convert("RGB"), (0, top))
    return flat


# ----------------------------------------------------------------------------- returning memory


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand the memory freed by large decodes back to the system (glibc keeps it in its arenas otherwise)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
