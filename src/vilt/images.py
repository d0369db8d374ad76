"""Image inputs to RGB PIL images: the one loader, loading images as transformers loads them.

Who loads how (transformers' split, kept):

* **The image processor** (:class:`vilt.ViltImageProcessor`) follows transformers' processor: paths,
  URLs, base64 text and bytes are loaded as :func:`load_image` loads them (EXIF orientation applied);
  PIL objects are taken as they are (no EXIF transpose); numpy arrays and torch tensors as they are.
* **The pipelines and the CLI** follow transformers' v4 pipeline, which applied ``load_image`` to every
  input, PIL objects included: :func:`load_pipeline_image` (arrays and tensors pass through to the
  processor). So a PIL object is turned upright by a pipeline, not by the processor.
* **The server** takes uploaded bytes and base64 text only, never paths or URLs:
  :func:`open_untrusted_image`, which also refuses formats outside :data:`SAFE_FORMATS` and images of
  more than a given number of pixels (read from the header, before decoding), and can be stopped: given
  a ``step`` callable, it calls it before every read of the file, while the header is parsed and while
  the pixels are decoded, and a JPEG is fed to the decoder a scan at a time (a progressive JPEG of
  100,000 tiny scans, each a pass over the whole image, is thus read 100,000 times, not 26). ``step`` may
  raise to stop the decoding, or wait to share the processor.

:func:`load_image` takes, as ``transformers.image_utils.load_image`` does:

* a ``str`` starting with ``http://`` or ``https://``: fetched with ``httpx`` (redirects followed)
  within ``timeout`` seconds (:data:`DEFAULT_TIMEOUT` when None; transformers waits forever);
* a ``str`` naming an existing file, or an ``os.PathLike`` (an extension): the file;
* any other ``str``: base64 image data, optionally a ``data:image/...;base64,`` URL;
* ``bytes`` or ``bytearray`` (an extension): an encoded image file's contents, loaded as the file would be;
* a ``PIL.Image.Image``;

then applies ``PIL.ImageOps.exif_transpose`` and ``convert("RGB")``: alpha is dropped (not composited),
palette, CMYK and 16-bit images are converted by Pillow (16-bit values are clipped, not scaled).

Errors say what was wrong with which input and how to fix it: a missing file raises
``FileNotFoundError``; an input of another type ``TypeError``; everything else a caller can fix (an
unreachable URL, data that is not an image, a truncated file) :class:`vilt.errors.ViltInputError`, and
an image with too many pixels (Pillow's ``Image.MAX_IMAGE_PIXELS``, or the server's limit) its subclass
:class:`ImageTooLargeError`. :func:`image_size` reads the size an input will have from its header
alone, for sorting a batch by size.

This module imports neither torch nor httpx (httpx is imported on the first URL).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import sys
import zlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import ViltInputError

ImageSource = str | os.PathLike[str] | bytes | bytearray | Image.Image  # what load_image takes

DEFAULT_TIMEOUT = 10.0  # seconds to wait for a URL (to connect, and between received bytes)
SAFE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # raster formats Pillow decodes in-process
CHANNEL_COUNTS = (1, 3, 4)  # grayscale, RGB, RGBA; an array axis of this length may hold the channels

# What Pillow raises on data it cannot identify or decode (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))  # EXIF orientations 2-8 flip or rotate the picture
_SIDEWAYS_ORIENTATIONS = frozenset({5, 6, 7, 8})  # ... and these swap height and width
_SHOWN_CHARACTERS = 200  # a longer string is named by its length in error messages


class ImageTooLargeError(ViltInputError):
    """An image with more pixels than allowed; raised from the header, before the pixels are decoded."""


# ---------------------------------------------------------------------------------------------------
# Naming and recognising inputs


def is_url(image: Any) -> bool:
    """Whether ``image`` is an ``http://`` or ``https://`` URL (the strings :func:`load_image` fetches)."""
    return isinstance(image, str) and image.startswith(("http://", "https://"))


def is_array(image: Any) -> bool:
    """Whether ``image`` is a numpy array or a torch tensor (checked without importing torch)."""
    torch = sys.modules.get("torch")
    return isinstance(image, np.ndarray) or (torch is not None and isinstance(image, torch.Tensor))


def describe(image: Any) -> str:
    """How error messages name an input: the file for paths, the address for URLs, else its kind."""
    if isinstance(image, os.PathLike):
        return f"image file {os.fspath(image)!r}"
    if isinstance(image, str):
        if is_url(image):
            return f"image URL {image!r}"
        if image.startswith("data:"):
            return f"data URL image ({len(image)} characters)"
        if len(image) > _SHOWN_CHARACTERS:
            return f"base64 image ({len(image)} characters)"
        return f"image {image!r}"  # a path, or short base64
    if isinstance(image, (bytes, bytearray)):
        return "image bytes"
    return "image"


# ---------------------------------------------------------------------------------------------------
# Opening: the header only


def open_image(image: ImageSource, timeout: float | None = None, *, name: str | None = None) -> Image.Image:
    """Open an input lazily: read its header (format, size, metadata), not its pixels.

    Paths, URLs (fetched), base64 text and bytes are opened with Pillow and checked: the file exists
    and is not empty, Pillow recognises the data, and the pixel count is within Pillow's
    ``Image.MAX_IMAGE_PIXELS``. A PIL image is returned as it is. The caller closes what was opened.

    Args:
        image: A URL, a file path, base64 text (or a data URL), encoded bytes, or a PIL image.
        timeout: Seconds to wait for a URL; None for :data:`DEFAULT_TIMEOUT`.
        name: How error messages call the input; :func:`describe` by default.

    Returns:
        The opened image (its pixels are decoded by :func:`load_pixels`).

    Raises:
        FileNotFoundError: A path (or a string that is neither a URL nor base64) names no file.
        ImageTooLargeError: More pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
        ViltInputError: An unreachable URL, empty data, data that is not an image.
        TypeError: An input of another type.
    """
    name = name or describe(image)
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray)):
        return _open_bytes(bytes(image), name)
    if isinstance(image, os.PathLike):
        return _open_file(os.fspath(image), name)
    if isinstance(image, str):
        if is_url(image):
            return _open_bytes(_fetch(image, timeout, name), name)
        if os.path.exists(image):
            return _open_file(image, name)
        return _open_base64_or_missing(image, name)
    raise TypeError(
        f"{name} is a {type(image).__name__}; pass a file path, an http(s) URL, base64 text, encoded bytes "
        "or a PIL image (the image processor also takes numpy arrays and torch tensors)."
    )


def _open_file(path: str, name: str) -> Image.Image:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no such file; check the path.")
    if not os.path.isfile(path):
        raise ViltInputError(f"{name} is not a file (a directory?); pass the path of an image file.")
    if os.path.getsize(path) == 0:
        raise ViltInputError(f"{name} is empty (0 bytes); re-download or re-create the file.")
    return _open(path, name)


def _open_bytes(
    data: bytes,
    name: str,
    formats: tuple[str, ...] | None = None,
    step: Callable[[], None] | None = None,
) -> Image.Image:
    if not data:
        raise ViltInputError(f"{name} is empty (0 bytes); pass the contents of an image file.")
    if step is None:
        return _open(io.BytesIO(data), name, formats)
    stepped = _SteppedFile(data, step)
    image = _open(stepped, name, formats)
    stepped.cut_at_scans = image.format == "JPEG"
    return image


class _SteppedFile(io.BytesIO):
    """An image file in memory that calls ``step`` before every read; once opened as a JPEG, no read
    crosses the start of a scan, so that every read is followed by the decoding of at most about one scan.

    Pillow's decoders decode all they are given before the next read. Most formats cost about the same
    per byte, so Pillow's reads (64 KiB) take milliseconds to decode; a progressive JPEG does not: each
    scan, a dozen bytes at the least, costs a pass over the blocks of its component (16 ms on a 4096 x
    4096 image), so one read could hold thousands of passes. ``FF DA`` (start of scan) never occurs in
    a JPEG's coded data (an ``FF`` byte there is followed by ``00``); where it occurs inside a header's
    payload it only makes a read shorter.
    """

    def __init__(self, data: bytes, step: Callable[[], None]) -> None:
        super().__init__(data)
        self.data = data
        self.step = step
        self.cut_at_scans = False
        self._next_scan = 0  # the next start of scan at or after the position; -1: none left

    def read(self, size: int | None = -1, /) -> bytes:
        self.step()
        if self.cut_at_scans and self._next_scan >= 0:
            position = self.tell()
            if self._next_scan <= position:
                self._next_scan = self.data.find(_START_OF_SCAN, position + 1)
            if self._next_scan >= 0:
                until = self._next_scan - position
                size = until if size is None or size < 0 else min(size, until)
        return super().read(size)


_START_OF_SCAN = b"\xff\xda"


def _open_base64_or_missing(text: str, name: str) -> Image.Image:
    """A string that is neither a URL nor an existing file: base64 image data, or a missing file."""
    if text.startswith("data:"):
        return _open_bytes(decode_base64(text, name=name), name)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error:
        data = b""
    if not data:
        raise FileNotFoundError(
            f"{name}: no such file (and the text is neither an http(s) URL nor base64 image data); "
            "check the path."
        )
    try:
        return _open_bytes(data, name)
    except ImageTooLargeError:
        raise
    except ViltInputError as exc:
        raise ViltInputError(
            f"{name} is no file, no http(s) URL, and, read as base64, no image Pillow can read; pass an "
            "existing file path, an http(s) URL or base64 image data."
        ) from exc


def _open(fp: str | IO[bytes], name: str, formats: tuple[str, ...] | None = None) -> Image.Image:
    """``Image.open`` with clear errors, refusing more pixels than ``Image.MAX_IMAGE_PIXELS``.

    Pillow itself refuses twice that limit and only warns above it; both are refused here, and the
    check is made from the header so that it holds in any thread (a warnings filter would not).
    """
    not_an_image = f"{name} is not an image {'this reader accepts' if formats else 'Pillow can read'}"
    accepted = f"one of {', '.join(formats)}" if formats else "a JPEG, PNG or other image file"
    try:
        image = Image.open(fp, formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name} {_over_pillow_limit(str(exc))}") from exc
    except Image.UnidentifiedImageError as exc:  # its message names a file object, not the input
        raise ViltInputError(f"{not_an_image} (no format recognised); pass {accepted}.") from exc
    except _DECODE_ERRORS as exc:
        raise ViltInputError(f"{not_an_image} ({type(exc).__name__}: {exc}); pass {accepted}.") from exc
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        width, height = image.size
        image.close()
        raise ImageTooLargeError(
            f"{name} {_over_pillow_limit(f'{width}x{height} = {width * height} pixels')}"
        )
    return image


def _over_pillow_limit(detail: str) -> str:
    return (
        f"is larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels ({detail}). "
        "If you trust the image, raise the limit: `PIL.Image.MAX_IMAGE_PIXELS = <number of pixels>` "
        "(None disables it)."
    )


def _fetch(url: str, timeout: float | None, name: str) -> bytes:
    """The body of an http(s) URL, fetched as transformers does (redirects followed), within ``timeout``."""
    import httpx

    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ViltInputError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except httpx.TimeoutException as exc:
        raise ViltInputError(
            f"{name} did not answer within the timeout of {timeout} s; check the address, or pass a "
            "larger timeout."
        ) from exc
    except httpx.HTTPStatusError as exc:
        status = exc.response
        raise ViltInputError(
            f"{name} answered HTTP {status.status_code} {status.reason_phrase}; check the address."
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ViltInputError(
            f"{name} could not be fetched ({type(exc).__name__}: {exc}; timeout {timeout} s); check the "
            "address and the network, or download the image and pass the file."
        ) from exc
    return response.content


def decode_base64(text: str, *, name: str | None = None) -> bytes:
    """The bytes of base64 text, or of a ``data:...;base64,`` URL; whitespace is ignored.

    Args:
        text: The base64 text.
        name: How error messages call the input.

    Raises:
        ViltInputError: Not base64 (or a data URL that is not base64).
    """
    name = name or describe(text)
    payload = text
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ViltInputError(
                f"{name} is a data URL without ';base64,'; send data:image/...;base64,<base64 data>."
            )
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error as exc:
        raise ViltInputError(f"{name} is not base64 ({exc}); send the image file base64-encoded.") from exc


# ---------------------------------------------------------------------------------------------------
# Decoding: the pixels


def load_pixels(image: Image.Image, *, apply_exif: bool = True, name: str | None = None) -> Image.Image:
    """Decode an (opened) image's pixels; with ``apply_exif``, turn it upright by its EXIF orientation.

    The input is loaded in place, never otherwise changed: a transposed image is a new one.

    Args:
        image: An image from :func:`open_image`, or any PIL image.
        apply_exif: Apply ``ImageOps.exif_transpose`` (as transformers' ``load_image`` does).
        name: How error messages call the input.

    Returns:
        The decoded image, in its own mode.

    Raises:
        ViltInputError: The data is truncated or corrupt, or the image is empty.
    """
    name = name or describe(image)
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise ViltInputError(
            f"{name} could not be decoded ({exc}); the file is truncated or corrupt. Re-download or "
            "re-encode it (or set `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True` to accept partial images)."
        ) from exc
    if image.width == 0 or image.height == 0:
        raise ViltInputError(f"{name} is empty (width x height = {image.width} x {image.height}).")
    if apply_exif and exif_orientation(image, name) in _TRANSPOSING_ORIENTATIONS:
        return ImageOps.exif_transpose(image)
    return image


def exif_orientation(image: Image.Image, name: str = "image", header_only: bool = False) -> int:
    """The image's EXIF orientation (1 = upright), as ``ImageOps.exif_transpose`` reads it.

    With ``header_only``, only what the header holds is read (a PNG's eXIf chunk after its pixels is not).
    """
    try:
        exif = Image.Image.getexif(image) if header_only else image.getexif()
    except _DECODE_ERRORS as exc:
        raise ViltInputError(
            f"{name} has unreadable EXIF metadata ({exc}); re-save the image without it."
        ) from exc
    orientation = exif.get(ExifTags.Base.Orientation, 1)
    return orientation if isinstance(orientation, int) else 1  # exif_transpose ignores other values


# Grayscale modes, whose convert("L") holds the value that convert("RGB") writes to all three channels.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def to_rgb(image: Image.Image, *, keep_gray: bool = False, name: str | None = None) -> Image.Image:
    """PIL's ``image.convert("RGB")``: alpha dropped, palette, CMYK and 16-bit converted by Pillow.

    Args:
        image: A decoded image of any mode.
        keep_gray: Give grayscale modes (1, L, LA, I, I;16, F) as L instead: the values of RGB's three
            equal channels, in one (the processor resizes a third as much).
        name: How error messages call the input.

    Returns:
        The converted image, or the image itself when it is RGB (or L, with ``keep_gray``) already.

    Raises:
        ViltInputError: A mode Pillow cannot convert.
    """
    target = "L" if keep_gray and image.mode in _GRAY_MODES else "RGB"
    if image.mode == target:
        return image
    try:
        return image.convert(target)
    except ValueError as exc:
        name = name or describe(image)
        raise ViltInputError(
            f"{name} has PIL mode {image.mode!r}, which Pillow cannot convert to RGB ({exc})."
        ) from exc


# ---------------------------------------------------------------------------------------------------
# The loaders


def load_image(image: ImageSource, timeout: float | None = None, *, name: str | None = None) -> Image.Image:
    """Any accepted input as a decoded, upright RGB PIL image, as transformers' ``load_image`` gives it.

    Args:
        image: An http(s) URL, a file path (``str`` or ``os.PathLike``), base64 text or a data URL,
            encoded bytes, or a PIL image (see the module docstring).
        timeout: Seconds to wait for a URL; None for :data:`DEFAULT_TIMEOUT`.
        name: How error messages call the input; :func:`describe` by default.

    Returns:
        An RGB image: EXIF orientation applied, then ``convert("RGB")``. A PIL image that is RGB and
        upright already is returned itself; a given image is never modified.

    Raises:
        FileNotFoundError: A missing file.
        ImageTooLargeError: More pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
        ViltInputError: An unreachable URL, data that is not an image, a truncated file.
        TypeError: Another type (arrays and tensors included, as in transformers; see
            :func:`load_pipeline_image`).
    """
    name = name or describe(image)
    opened = open_image(image, timeout, name=name)
    loaded = None
    try:
        loaded = to_rgb(load_pixels(opened, name=name), name=name)
        return loaded
    finally:
        if opened is not image and opened is not loaded:  # opened here, and not handed out
            opened.close()


def load_pipeline_image(image: Any, timeout: float | None = None, *, name: str | None = None) -> Any:
    """What a pipeline (and the CLI) does to each input image before the processor.

    As transformers' v4 pipelines: everything goes through :func:`load_image`, PIL objects included
    (so their EXIF orientation is applied); numpy arrays and torch tensors, which transformers' pipelines
    did not take, go to the processor as they are.

    Args:
        image: An input image of a pipeline call.
        timeout: Seconds to wait for a URL; None for :data:`DEFAULT_TIMEOUT`.
        name: How error messages call the input.

    Returns:
        An RGB PIL image, or the array or tensor itself.
    """
    return image if is_array(image) else load_image(image, timeout, name=name)


def open_untrusted_image(
    data: bytes | bytearray | str,
    max_pixels: int,
    *,
    name: str = "image",
    formats: tuple[str, ...] = SAFE_FORMATS,
    step: Callable[[], None] | None = None,
) -> Image.Image:
    """Open an image that came from outside (an upload) lazily, refusing harm from its header alone.

    The checks cost no more than the header: empty data; a format outside ``formats`` (raster formats
    only: no EPS or PDF, whose decoders run external programs); the pixel count. Paths and URLs are never
    followed: a string is base64 (or a ``data:`` URL). ``to_rgb(load_pixels(image))`` then decodes it as
    :func:`load_image` does, catching truncated and corrupt data.

    Args:
        data: The encoded image, or base64 text of it.
        max_pixels: The most pixels (width x height) accepted.
        name: How error messages call the input (e.g. the request field).
        formats: The Pillow formats accepted.
        step: Called before every read of the file, now and when the pixels are decoded (see the
            module docstring); what it raises stops the opening or decoding and propagates.

    Raises:
        ImageTooLargeError: More than ``max_pixels`` pixels (or Pillow's own limit).
        ViltInputError: Empty, not base64, or not an image of ``formats``.
        TypeError: Neither bytes nor text.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}.")
    if isinstance(data, str):
        data = decode_base64(data, name=name)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{name} is a {type(data).__name__}; pass the image file's bytes or base64 text.")
    image = _open_bytes(bytes(data), name, formats, step)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels, so "
            "downscale it first."
        )
    return image


# ---------------------------------------------------------------------------------------------------
# Sizes from headers


def array_layout(
    shape: tuple[int, ...], input_data_format: str | None = None, *, name: str = "image"
) -> str | None:
    """The channel layout of an image array: ``"channels_first"``, ``"channels_last"``, or None when 2-d.

    Inferred as transformers infers it when ``input_data_format`` is None: channels first when the first
    axis has 1, 3 or 4 entries, else channels last when the last one has.

    Args:
        shape: The array's shape: (H, W), (C, H, W) or (H, W, C).
        input_data_format: The layout, when known.
        name: How error messages call the input.

    Raises:
        ViltInputError: Not 2-d or 3-d, no axis of 1, 3 or 4 channels, or no pixels.
    """
    shape = tuple(int(side) for side in shape)
    if len(shape) not in (2, 3):
        raise ViltInputError(
            f"{name} has shape {shape}; an image array must be (H, W), (H, W, C) or (C, H, W)."
        )
    layout = None
    if len(shape) == 3:
        layout = input_data_format
        if layout is None:
            if shape[0] in CHANNEL_COUNTS:  # ambiguous shapes count as channels-first, as in transformers
                layout = "channels_first"
            elif shape[2] in CHANNEL_COUNTS:
                layout = "channels_last"
            else:
                raise ViltInputError(
                    f"{name} has shape {shape}: no axis of 1, 3 or 4 channels. Pass grayscale, RGB or "
                    "RGBA pixels."
                )
        channels = shape[0] if layout == "channels_first" else shape[2]
        if channels not in CHANNEL_COUNTS:
            raise ViltInputError(
                f"{name} has {channels} channels ({layout}, shape {shape}); pass grayscale (1), RGB (3) or "
                "RGBA (4) pixels."
            )
    height, width = shape[1:] if layout == "channels_first" else shape[:2]
    if height == 0 or width == 0:
        raise ViltInputError(f"{name} is empty (height x width = {height} x {width}).")
    return layout


def image_size(
    image: Any, *, input_data_format: str | None = None, name: str | None = None
) -> tuple[int, int]:
    """The (height, width) an input has once loaded, read without decoding pixels (to sort by size).

    Paths, bytes, base64 text and PIL images: the size :func:`load_image` gives, EXIF orientation
    included (of a file or bytes, the header's: a PNG's eXIf chunk after its pixels is not read).
    Arrays and tensors: from their shape, with the processor's channel rule.

    Args:
        image: A file path, base64 text, encoded bytes, a PIL image, a numpy array or a torch tensor.
        input_data_format: The channel layout of arrays, when known.
        name: How error messages call the input.

    Raises:
        ViltInputError: A URL (load it with :func:`load_image` first: reading its size would fetch
            it), data that is not an image, an array that is not an image's shape.
        FileNotFoundError, TypeError: As :func:`open_image`.
    """
    name = name or describe(image)
    if is_array(image):
        layout = array_layout(tuple(image.shape), input_data_format, name=name)
        height, width = image.shape[1:] if layout == "channels_first" else image.shape[:2]
        return int(height), int(width)
    if is_url(image):
        raise ViltInputError(f"{name}: fetch it with load_image before asking its size.")
    opened = open_image(image, name=name)
    try:
        width, height = opened.size
        if opened.format == "TIFF":  # Pillow's TIFF reader turns the image upright itself, size included
            return height, width
        orientation = exif_orientation(opened, name, header_only=opened is not image)
    finally:
        if opened is not image:
            opened.close()
    return (width, height) if orientation in _SIDEWAYS_ORIENTATIONS else (height, width)
