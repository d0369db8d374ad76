"""Turn uploaded bytes into a decoded image, refusing what could hurt the server.

The checks run in this order so that no hostile upload costs more than its header: empty input, an
allowed format (raster formats only; no EPS/PDF, which would run external programs), the pixel count
read from the header, and only then the full decode, which catches truncated and corrupt files.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from .errors import APIError

# raster formats Pillow decodes in-process
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode one uploaded image, or raise an :class:`APIError` that says what was wrong.

    Args:
        data: the encoded file, as uploaded.
        field: the request field it came from, for the error message.
        max_pixels: the largest width * height accepted, checked before decoding.

    Returns:
        The decoded image (any mode; the pipeline converts it to RGB).

    Raises:
        APIError: 400 for empty, unreadable, truncated or corrupt data; 413 for too many pixels.
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
    try:
        image.load()
    except _DECODE_ERRORS as err:
        raise APIError(
            400, f"'{field}' could not be decoded ({err}); the file is truncated or corrupt"
        ) from None
    return image
