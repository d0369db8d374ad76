"""Turn uploaded bytes into the small image the model reads, refusing what could hurt the server.

Two steps, so that no hostile upload costs more than its header before it is admitted:

1. :func:`open_image` reads only the header (:func:`vilt.images.open_untrusted_image`: empty input, an
   allowed raster format — no EPS/PDF, which would run external programs — and the pixel count).
   :func:`decode_cost` then says how much memory decoding will take, which the server checks against
   its memory budget.
2. :func:`fit_image` decodes (catching truncated and corrupt files), turns it upright and converts it to
   RGB exactly as the pipelines load every image (:mod:`vilt.images`: ``exif_transpose`` and
   ``convert("RGB")``), and shrinks the result to the size the model reads. The processor then finds an
   image already at its target size, so the answer is the one the pipeline gives for the original file,
   while a queued request holds kilobytes instead of a full decoded image. The result carries no
   metadata: it is upright RGB pixels, and the pipeline that reads it must find nothing to apply again
   (a JPEG's unreadable EXIF, ignored when the file was loaded, would otherwise be read from the copy).

Both take a ``step`` (the decode pool's :class:`.admission.DecodeStep`), called before every read of the
file and between decoding, turning and shrinking: it stops the work once nobody waits for it, and shares
the decoding cores between requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from vilt.errors import ViltInputError
from vilt.images import ImageTooLargeError, exif_orientation, load_pixels, open_untrusted_image, to_rgb

from .errors import APIError

logger = logging.getLogger(__name__)

_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_BYTES_PER_RGB_PIXEL = 4  # Pillow stores RGB in 4 bytes a pixel
_COEFFICIENT_BYTES = 2  # libjpeg keeps a progressive JPEG's DCT coefficients as 16-bit integers
Step = Callable[[], None]


def open_image(data: bytes, field: str, max_pixels: int, step: Step | None = None) -> Image.Image:
    """Read one uploaded image's header (nothing is decoded), or raise an :class:`APIError`.

    Args:
        data: the encoded file, as uploaded.
        field: the request field it came from, for the error message.
        max_pixels: the largest width * height accepted.
        step: called before every read of the file, now and while it is decoded.

    Raises:
        APIError: 400 for empty or unreadable data; 413 for too many pixels.
    """
    try:
        return open_untrusted_image(data, max_pixels, name=f"'{field}'", step=step)
    except ImageTooLargeError as err:
        raise APIError(413, str(err)) from None
    except ViltInputError as err:
        raise APIError(400, str(err)) from None


def decode_cost(image: Image.Image) -> int:
    """The bytes that decoding, turning and converting ``image`` (from :func:`open_image`) hold at their peak:
    the decoded pixels plus one RGB copy (a conversion or an EXIF rotation makes a new image), plus, for a
    progressive JPEG, the coefficients of every block that the decoder keeps until the last scan."""
    pixels = image.width * image.height
    if image.mode in _ONE_BYTE_MODES:
        decoded = 1
    elif image.mode.startswith("I;16"):
        decoded = 2
    else:
        decoded = 4
    upright_rgb = image.mode == "RGB" and exif_orientation(image, header_only=True) == 1
    copies = 0 if upright_rgb else 1
    coefficients = len(image.getbands()) * _COEFFICIENT_BYTES if image.info.get("progressive") else 0
    return pixels * (decoded + copies * _BYTES_PER_RGB_PIXEL + coefficients)


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


def fit_image(image: Image.Image, field: str, fit: Fit | None, step: Step | None = None) -> Image.Image:
    """Decode an opened image, turn and convert it as the pipelines do, and shrink it with ``fit``.

    The result has no metadata (``info`` is empty): its pixels are upright RGB already.

    Raises:
        APIError: 400 when the data is truncated or corrupt, or the mode cannot be converted.
    """
    step = step or _no_step
    try:
        upright = load_pixels(image, name=f"'{field}'")
        step()
        converted = to_rgb(upright, name=f"'{field}'")
    except ViltInputError as err:
        raise APIError(400, str(err)) from None
    step()
    fitted = converted if fit is None else fit(converted)
    if fitted is not image:
        image.close()  # frees the full decoded pixels now, in this thread, whoever still refers to image
    fitted.info = {}
    return fitted


def _no_step() -> None:
    pass


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
