"""Image preprocessing for ViLT: resize, rescale, normalise and pad, exactly as the reference does.

``ViltImageProcessor`` reproduces the PIL path of ``transformers`` (``ViltImageProcessorPil`` in v5,
``ViltImageProcessor`` in v4.37), loading images as it does, and runs a batch in parallel threads:

1. **Load** (rules below). Every input becomes RGB uint8 pixels; grayscale stays one channel, which
   gives the same values at a third of the resizing cost, and is written to all three channels.
2. **Resize** (``do_resize``). The shorter side goes to ``size["shortest_edge"]`` (384), the longer side
   is capped at ``int(1333 / 800 * 384) = 639``, each side is rounded with ``int(x + 0.5)`` and floored
   to a multiple of ``size_divisor`` (32), and PIL resizes with ``resample`` (bicubic).
3. **Rescale and normalise** (``do_rescale``, ``do_normalize``) in one step: a 256-entry float32 table
   holds, for every uint8 level, the value the reference computes for it (``level * rescale_factor`` in
   float64, cast to float32, then ``(x - mean) / std`` in float32), so the lookup is exact.
4. **Pad** (``do_pad``). Images are written into a zero-filled ``(B, 3, max_h, max_w)`` array, bottom and
   right padding, and ``pixel_mask`` marks the real pixels with 1.

Decoding and resizing (Pillow releases the GIL) and the table lookups run in a pool of
``torch.get_num_threads()`` threads.

**Accepted inputs.** PIL images; numpy arrays and torch tensors, ``(H, W)``, ``(H, W, C)`` or
``(C, H, W)`` with C in 1, 3, 4 (a 4-d array is a batch); file paths (``str`` or ``os.PathLike``),
``http(s)://`` URLs, base64 text and ``data:`` URLs; encoded image bytes. A list of images is a batch;
a list of equal-length lists of images (NLVR2: one pair per text) gives ``pixel_values`` of shape
``(B, n, 3, H, W)`` and ``pixel_mask`` ``(B, n, H, W)``.

**Loading, as the reference loads** (see :mod:`vilt.images`):

* Paths, URLs, base64 text and bytes are loaded as ``transformers.image_utils.load_image`` loads them:
  EXIF orientation applied, then PIL's ``convert("RGB")`` (alpha dropped, palette and CMYK converted
  by Pillow, 16-bit values clipped to 255). Bytes are an extension, loaded as the file would be.
* PIL images are taken as they are: no EXIF orientation, as in the reference (a pipeline applies it
  before the processor). RGB images go in unchanged; other modes, on which the reference fails, are
  converted with ``convert("RGB")``, so an image and the same file given as a path agree.
* Arrays and tensors are taken as they are: uint8, integer values within [0, 255], booleans and
  whole-number floats in [0, 255] are levels; float images in [0, 1] are quantised by the reference's
  rule (``x * 255`` in float64, cast to float32, truncated to uint8) and are already rescaled: they
  come out as ``normalize(level / 255)`` whatever ``do_rescale`` says, which with ``do_rescale=False``
  is the reference's output.

**Channels.** ``do_convert_rgb`` (transformers' switch) None or True gives RGB, as above. False keeps an
array's channels (1, 3 or 4) or a PIL image's (modes L, LA, RGB, RGBA; other modes are converted to RGB
all the same), resized as PIL resizes those modes, normalised with one
``image_mean``/``image_std`` value per channel; every image of a batch must have the same count.

**Deviations from the reference**, each where it fails or gives garbage:

* Float images in [0, 1] with ``do_rescale=True``: the reference rescales them a second time, which
  gives values near -1 (and a warning); here they are not rescaled twice. A float image made only of
  0.0 and 1.0 counts as [0, 1] (the reference reads it as levels 0 and 1: the same output with
  ``do_rescale=False``). Without resizing, float images are quantised all the same (the reference
  normalises the float values themselves).
* Non-RGB PIL images (L, LA, P, RGBA, CMYK, I;16, F...) are converted with ``convert("RGB")``;
  grayscale and 4-channel arrays become RGB the same way (gray repeated, alpha dropped), unless
  ``do_convert_rgb=False`` (the reference converts nothing unless ``do_convert_rgb=True``, and fails at
  normalisation on anything but 3 channels).
* Integer arrays with values above 255 are read as 16-bit and scaled with ``round(v / 257)``.
* Extreme aspect ratios: the reference rounds a side to 0 and PIL raises; here every side is at least
  one ``size_divisor`` (one patch), so a 37x1200 image becomes 32x608 instead of crashing.
* With both ``do_rescale`` and ``do_normalize`` off, ``pixel_values`` is float32, not uint8.
* NLVR2 pairs keep their ``(B, n, ...)`` layout; the reference flattens them to ``(B * n, ...)``.

Bad input (an unreadable, empty, truncated or oversized file, an unreachable URL, non-finite values, a
zero-sized image, a wrong channel count or number of dimensions) raises
:class:`vilt.errors.ViltInputError` (a ``ValueError``) saying what is wrong, naming the file, and how
to fix it; a missing file raises ``FileNotFoundError`` and an input of an unsupported type ``TypeError``.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
from PIL import Image

from .errors import ViltInputError
from .feature import BatchFeature
from .files import atomic_directory, read_json
from .hub import resolve_file, split_hub_options
from .images import array_layout, describe, is_array, load_pixels, open_image, to_rgb

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"  # transformers v5 nests the image settings here

# The reference caps the longer side at int(1333 / 800 * shortest_edge), the COCO aspect ratio.
_MAX_LONGER_EDGE, _MAX_SHORTER_EDGE = 1333, 800
# The reference's resize turns float images in [0, 1] to uint8 and back with this factor.
_UNIT_FLOAT_RESCALE = 1 / 255
_RETURN_TENSORS = (None, "np", "pt")
_DATA_FORMATS = ("channels_first", "channels_last")


def get_resize_output_image_size(
    height: int, width: int, shortest_edge: int = 384, size_divisor: int = 32
) -> tuple[int, int]:
    """The (height, width) an image is resized to: the reference's rule, with each side at least one patch.

    Args:
        height: Input height in pixels.
        width: Input width in pixels.
        shortest_edge: Target length of the shorter side.
        size_divisor: Both output sides are multiples of this.

    Returns:
        The output (height, width).
    """
    longest_edge = int(_MAX_LONGER_EDGE / _MAX_SHORTER_EDGE * shortest_edge)
    scale = shortest_edge / min(height, width)
    if height < width:
        new_height, new_width = float(shortest_edge), scale * width
    else:
        new_height, new_width = scale * height, float(shortest_edge)
    if max(new_height, new_width) > longest_edge:
        scale = longest_edge / max(new_height, new_width)
        new_height, new_width = scale * new_height, scale * new_width
    new_height, new_width = int(new_height + 0.5), int(new_width + 0.5)
    # The reference floors a side of an extreme aspect ratio to 0 and crashes; keep one patch instead.
    return (
        max(new_height // size_divisor * size_divisor, size_divisor),
        max(new_width // size_divisor * size_divisor, size_divisor),
    )


# ---------------------------------------------------------------------------------------------------
# Loading arrays: every array or tensor becomes uint8 pixels (the rest is loaded by vilt.images).


def _float_to_uint8(array: np.ndarray, label: str) -> tuple[np.ndarray, bool]:
    """Float pixels to uint8, and whether they were in [0, 1] (so already rescaled).

    [0, 1] by the reference's x*255 rule; whole numbers in [0, 255] are levels.
    """
    if not np.isfinite(array).all():
        raise ViltInputError(
            f"{label} contains NaN or infinite values; replace them (e.g. np.nan_to_num) first."
        )
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 1:
        return (array.astype(np.float64) * 255).astype(np.float32).astype(np.uint8), True
    if low >= 0 and high <= 255 and np.allclose(array, array.astype(np.int64)):
        return array.astype(np.uint8), False
    raise ViltInputError(
        f"{label} has float values in [{low}, {high}]; float images must lie in [0, 1] (or be whole "
        "numbers in [0, 255]). Rescale them, or pass uint8 pixels."
    )


def _integer_to_uint8(array: np.ndarray, label: str) -> np.ndarray:
    """Integer pixels to uint8: 8-bit when all values are <= 255, otherwise 16-bit scaled by 1/257."""
    if array.dtype in (np.uint8, np.bool_):  # booleans are levels 0 and 1, as in the reference
        return array.astype(np.uint8, copy=False)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise ViltInputError(
            f"{label} has integer values in [{low}, {high}]; integer images must be 8-bit (0-255) or "
            "16-bit (0-65535)."
        )
    if high <= 255:
        return array.astype(np.uint8)
    return ((array.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)  # round(v / 257)


def _array_pixels(
    image: Any, input_data_format: str | None, label: str, keep_channels: bool = False
) -> tuple[np.ndarray, bool]:
    """An array or tensor as uint8 pixels, and whether it held floats in [0, 1].

    Gray stays one channel, (h, w); alpha is dropped, as PIL's ``convert("RGB")`` drops it: (h, w, 3).
    ``keep_channels``: every channel is kept, (h, w, C) for C > 1.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
    if array_layout(image.shape, input_data_format, name=label) == "channels_first":
        image = image.transpose(1, 2, 0)
    if image.ndim == 3 and (image.shape[2] == 1 or not keep_channels):
        image = image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]
    if np.issubdtype(image.dtype, np.floating):
        return _float_to_uint8(image, label)
    if np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_:
        return _integer_to_uint8(image, label), False
    raise ViltInputError(f"{label} has dtype {image.dtype}; pass integer or float pixels.")


class _Pixels(NamedTuple):
    """One loaded and resized image."""

    pixels: np.ndarray  # (h, w, 3) RGB or (h, w) grayscale, uint8; (h, w, C) when channels are kept
    unit_float: bool  # from a float image in [0, 1], so rescaled already

    @property
    def channels(self) -> int:
        return 1 if self.pixels.ndim == 2 else self.pixels.shape[2]


# PIL modes whose channels do_convert_rgb=False keeps (other modes are converted to RGB)
_KEPT_MODES = ("L", "LA", "RGB", "RGBA")


class ViltImageProcessorKwargs(TypedDict, total=False):
    """The keyword arguments ``ViltImageProcessor.preprocess`` takes besides ``images`` (transformers names
    its processors' equivalent ``valid_kwargs``)."""

    do_resize: bool
    size: int | dict[str, int]
    size_divisor: int
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: float | Sequence[float]
    image_std: float | Sequence[float]
    do_pad: bool
    do_convert_rgb: bool | None
    return_tensors: str | None
    data_format: str
    input_data_format: str | None


def _is_single_image(item: Any) -> bool:
    return isinstance(item, (Image.Image, str, os.PathLike, bytes, bytearray)) or is_array(item)


def _flatten_images(images: Any) -> tuple[list[Any], int | None]:
    """The images of a call as a flat list, and the group size for NLVR2-style nested lists (else None)."""
    if is_array(images) and images.ndim == 4:
        return list(images), None
    if _is_single_image(images):
        return [images], None
    if not isinstance(images, (list, tuple)):
        raise TypeError(
            f"images is a {type(images).__name__}; pass an image, a list of images or a list of image lists."
        )
    if not images:
        raise ViltInputError("images is an empty list; pass at least one image.")
    if not all(isinstance(group, (list, tuple)) for group in images):
        return list(images), None  # an item of a wrong type is reported, with its index, when loaded
    sizes = {len(group) for group in images}
    if len(sizes) != 1 or 0 in sizes:
        raise ViltInputError(
            f"every image group must hold the same number of images (at least one); got {sorted(sizes)}."
        )
    return [image for group in images for image in group], sizes.pop()


def _label(item: Any, index: int, batch_size: int) -> str:
    """How error messages name an input (:func:`vilt.images.describe`), and its place in a batch."""
    return describe(item) if batch_size == 1 else f"{describe(item)} (batch item {index})"


def _parallel_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(item) for item in items]`` on ``torch.get_num_threads()`` threads.

    Pillow and numpy release the GIL, so the threads run in parallel. Following torch's thread count
    keeps DataLoader workers (which torch sets to one thread) from oversubscribing the CPU.
    """
    workers = min(len(items), torch.get_num_threads())
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


# ---------------------------------------------------------------------------------------------------


class ViltImageProcessor:
    """Prepares images for ViLT: ``pixel_values`` and ``pixel_mask``, equal to the reference's PIL path.

    Args:
        do_resize: Resize so that the shorter side is ``size["shortest_edge"]`` (longer side capped).
        size: ``{"shortest_edge": int}`` or an int.
        size_divisor: Output sides are floored to multiples of this (and are at least this).
        resample: PIL resampling filter (``PIL.Image.Resampling``), bicubic by default.
        do_rescale: Multiply pixel levels by ``rescale_factor``.
        rescale_factor: The rescale factor, 1/255 by default.
        do_normalize: Subtract ``image_mean`` and divide by ``image_std``, per channel.
        image_mean: Three channel means (or one for all), 0.5 by default.
        image_std: Three channel standard deviations (or one for all), 0.5 by default.
        do_pad: Pad a batch to its largest height and width and return ``pixel_mask``.
        do_convert_rgb: None or True: RGB output; False: each image keeps its channels (module docstring),
            with ``image_mean`` and ``image_std`` giving one value per channel.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = ViltImageProcessorKwargs
    _type_name = "ViltImageProcessor"
    # the defaults, readable on the class as on transformers' processors
    do_resize: bool | None = True
    size_divisor = 32
    resample = Image.Resampling.BICUBIC
    do_rescale: bool | None = True
    rescale_factor = 1 / 255
    do_normalize: bool | None = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    do_pad: bool | None = True
    do_convert_rgb: bool | None = None

    def __init__(
        self,
        do_resize: bool | None = True,
        size: int | dict[str, int] | None = None,
        size_divisor: int = 32,
        resample: int = Image.Resampling.BICUBIC,
        do_rescale: bool | None = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool | None = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_pad: bool | None = True,
        do_convert_rgb: bool | None = None,
    ) -> None:
        # a switch set to None stays None (off), and is saved so, as transformers keeps an explicit None
        self.do_resize = _switch(do_resize)
        self.size = _size_dict(384 if size is None else size)
        self.size_divisor = int(size_divisor)
        if self.size_divisor < 1:
            raise ViltInputError(f"size_divisor must be a positive integer, got {size_divisor}.")
        try:
            self.resample = Image.Resampling(int(resample))
        except ValueError:
            raise ViltInputError(
                f"resample must be a PIL.Image.Resampling filter, got {resample!r}."
            ) from None
        self.do_convert_rgb = _switch(do_convert_rgb)
        self.do_rescale = _switch(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = _switch(do_normalize)
        self.image_mean = _channel_values(0.5 if image_mean is None else image_mean, "image_mean")
        self.image_std = _channel_values(0.5 if image_std is None else image_std, "image_std")
        if 0 in self.image_std:
            raise ViltInputError(f"image_std must not contain 0, got {self.image_std}.")
        self.do_pad = _switch(do_pad)

    # -- preprocessing --------------------------------------------------------------------------------

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Same as ``preprocess``."""
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images: Any,
        do_resize: bool | None = None,
        size: int | dict[str, int] | None = None,
        size_divisor: int | None = None,
        resample: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_pad: bool | None = None,
        do_convert_rgb: bool | None = None,
        return_tensors: str | None = None,
        data_format: str = "channels_first",
        input_data_format: str | None = None,
    ) -> BatchFeature:
        """Turn one image, a batch of images, or a batch of image groups into model inputs.

        Args:
            images: A PIL image, numpy array, torch tensor, file path or encoded bytes; a list of them; or
                a list of equal-length lists of them (one group per text, for NLVR2).
            do_resize, size, size_divisor, resample, do_rescale, rescale_factor, do_normalize, image_mean,
                image_std, do_pad, do_convert_rgb: Override the processor's settings for this call.
            return_tensors: None for lists of numpy arrays (one per image or group), "np" for arrays,
                "pt" for torch tensors.
            data_format: "channels_first" (B, 3, H, W) or "channels_last" (B, H, W, 3) pixel_values.
            input_data_format: Channel layout of array inputs, "channels_first" or "channels_last";
                inferred when None.

        Returns:
            A BatchFeature with ``pixel_values`` (float32) and, when padding, ``pixel_mask`` (int64).
        """
        overrides = {
            name: value
            for name, value in dict(
                do_resize=do_resize,
                size=size,
                size_divisor=size_divisor,
                resample=resample,
                do_rescale=do_rescale,
                rescale_factor=rescale_factor,
                do_normalize=do_normalize,
                image_mean=image_mean,
                image_std=image_std,
                do_pad=do_pad,
                do_convert_rgb=do_convert_rgb,
            ).items()
            if value is not None
        }
        settings = ViltImageProcessor(**{**self._init_kwargs(), **overrides}) if overrides else self
        if return_tensors not in _RETURN_TENSORS:
            raise ViltInputError(f"return_tensors must be one of {_RETURN_TENSORS}, got {return_tensors!r}.")
        if data_format not in _DATA_FORMATS:
            raise ViltInputError(f"data_format must be one of {_DATA_FORMATS}, got {data_format!r}.")
        if input_data_format not in (*_DATA_FORMATS, None):
            raise ViltInputError(
                f"input_data_format must be None or one of {_DATA_FORMATS}, got {input_data_format!r}."
            )
        flat, group_size = _flatten_images(images)
        loaded = settings._load_and_resize(flat, input_data_format)
        pixel_values, pixel_mask = settings._normalize_and_pad(loaded)
        return _package(pixel_values, pixel_mask, group_size, settings.do_pad, data_format, return_tensors)

    def _load_and_resize(self, images: list[Any], input_data_format: str | None) -> list[_Pixels]:
        """Load, convert and resize every image in parallel; returns their uint8 pixels."""
        # The same object twice (e.g. an NLVR2 pair of one image) is prepared once: PIL's lazy load()
        # must not run in two threads.
        first_index: dict[int, int] = {}
        for index, image in enumerate(images):
            first_index.setdefault(id(image), index)
        unique = list(first_index.values())
        prepared = _parallel_map(
            lambda i: self._prepare_one(images[i], input_data_format, _label(images[i], i, len(images))),
            unique,
        )
        by_id = {id(images[i]): pixels for i, pixels in zip(unique, prepared)}
        return [by_id[id(image)] for image in images]

    def _prepare_one(self, image: Any, input_data_format: str | None, label: str) -> _Pixels:
        """Load and resize one image (module docstring's loading rules)."""
        keep = self.do_convert_rgb is False
        if is_array(image):
            pixels, unit_float = _array_pixels(image, input_data_format, label, keep_channels=keep)
            return _Pixels(self._resized(Image.fromarray(np.ascontiguousarray(pixels))), unit_float)
        opened = open_image(image, name=label)  # a PIL image as it is; the other inputs opened lazily
        try:
            # EXIF orientation for what was loaded from a file, URL or bytes; not for a given PIL image.
            decoded = load_pixels(opened, apply_exif=opened is not image, name=label)
            if keep and decoded.mode in _KEPT_MODES:
                return _Pixels(self._resized(decoded), False)
            return _Pixels(self._resized(to_rgb(decoded, keep_gray=True, name=label)), False)
        finally:
            if opened is not image:
                opened.close()

    def _resized(self, image: Image.Image) -> np.ndarray:
        """The image resized (when ``do_resize``) as (h, w, 3) RGB or (h, w) grayscale uint8 pixels."""
        if self.do_resize:
            height, width = get_resize_output_image_size(
                image.height, image.width, self.size["shortest_edge"], self.size_divisor
            )
            image = image.resize((width, height), resample=self.resample, reducing_gap=None)
        return np.asarray(image)

    def _value_table(self, rescale_factor: float | None, channels: int) -> np.ndarray:
        """(channels, 256) float32: the output value of every uint8 level per channel, computed the
        reference's way.

        Args:
            rescale_factor: The factor levels are rescaled by, or None for no rescaling.
            channels: The output channels (3 for RGB).
        """
        levels = np.tile(np.arange(256, dtype=np.uint8), (channels, 1))
        if rescale_factor is not None:
            values = (levels.astype(np.float64) * rescale_factor).astype(np.float32)
        else:
            values = levels.astype(np.float32)
        if self.do_normalize:
            mean = np.array(self.image_mean, dtype=np.float32)[:, None]
            std = np.array(self.image_std, dtype=np.float32)[:, None]
            values = (values - mean) / std
        return values

    def _output_channels(self, images: list[_Pixels]) -> int:
        """3 (RGB), or with ``do_convert_rgb=False`` the images' own channel count, which
        ``image_mean`` and ``image_std`` must match."""
        channels = 3
        if self.do_convert_rgb is False:
            counts = sorted({image.channels for image in images})
            if len(counts) > 1:
                raise ViltInputError(
                    f"with do_convert_rgb=False every image must have the same number of channels, got {counts}; "
                    "convert them (do_convert_rgb=True) or pass them in separate calls."
                )
            channels = counts[0]
        if self.do_normalize and (len(self.image_mean), len(self.image_std)) != (channels, channels):
            raise ViltInputError(
                f"the images have {channels} channel(s) but image_mean has {len(self.image_mean)} value(s) and "
                f"image_std {len(self.image_std)}; give one value per channel."
            )
        return channels

    def _normalize_and_pad(self, images: list[_Pixels]) -> tuple[np.ndarray, np.ndarray]:
        """Write every image's table values into a zero-padded (B, C, H, W) float32 array; build the mask."""
        height = max(image.pixels.shape[0] for image in images)
        width = max(image.pixels.shape[1] for image in images)
        channels = self._output_channels(images)
        tables = {  # float images in [0, 1] are rescaled already (module docstring)
            False: self._value_table(self.rescale_factor if self.do_rescale else None, channels),
            True: self._value_table(_UNIT_FLOAT_RESCALE, channels),
        }
        pixel_values = np.zeros((len(images), channels, height, width), dtype=np.float32)
        pixel_mask = np.zeros((len(images), height, width), dtype=np.int64)

        def write(index: int) -> None:
            array, table = images[index].pixels, tables[images[index].unit_float]
            h, w = array.shape[:2]
            for channel in range(channels):
                np.take(
                    table[channel],
                    array if array.ndim == 2 else array[:, :, channel],
                    out=pixel_values[index, channel, :h, :w],
                    mode="clip",
                )
            pixel_mask[index, :h, :w] = 1

        _parallel_map(write, range(len(images)))
        return pixel_values, pixel_mask

    # -- configuration ----------------------------------------------------------------------------------

    def _init_kwargs(self) -> dict[str, Any]:
        return {
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "size_divisor": self.size_divisor,
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "do_pad": self.do_pad,
            "do_convert_rgb": self.do_convert_rgb,
        }

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in ``preprocessor_config.json`` (the reference's keys), with the reference's
        types: ``image_mean`` and ``image_std`` tuples, ``resample`` a ``PIL.Image.Resampling`` member, and
        ``do_convert_rgb`` only when set."""
        settings = self._init_kwargs()
        if settings["do_convert_rgb"] is None:
            del settings["do_convert_rgb"]
        return {**settings, "image_processor_type": self._type_name}

    def to_json_string(self) -> str:
        """The settings as the JSON text of ``preprocessor_config.json``."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write ``to_json_string()`` to a file.

        Args:
            json_file_path: Where to write.
        """
        Path(json_file_path).write_text(self.to_json_string(), encoding="utf-8")

    @classmethod
    def from_dict(cls, config: dict[str, Any], **kwargs: Any) -> ViltImageProcessor:
        """Build from a config dict, as read from ``preprocessor_config.json``.

        Unknown keys (``image_processor_type``, ``feature_extractor_type``, ``processor_class``...) are
        ignored; the legacy v4 key ``pad_and_return_pixel_mask`` sets ``do_pad``.

        Args:
            config: The settings.
            **kwargs: Settings that override those of ``config``.
        """
        config = dict(config)
        if "pad_and_return_pixel_mask" in config:
            config.setdefault("do_pad", config.pop("pad_and_return_pixel_mask"))
        known = cls._init_parameter_names()
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown image processor settings: {sorted(unknown)}")
        return cls(**{**{key: value for key, value in config.items() if key in known}, **kwargs})

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> ViltImageProcessor:
        """Build from a JSON file of settings (as :meth:`to_json_file` writes).

        Args:
            json_file: The file.
        """
        return cls.from_dict(read_json(json_file))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> ViltImageProcessor:
        """Load the settings from ``preprocessor_config.json`` (or v5's ``processor_config.json``).

        Args:
            pretrained_model_name_or_path: A directory, ``bundled`` or a hub id (see :mod:`vilt.hub`).
            **kwargs: Settings that override the saved ones, and the hub options (``revision``,
                ``cache_dir``, ``local_files_only``...).
        """
        hub, overrides = split_hub_options(kwargs)
        source = pretrained_model_name_or_path
        config_file = resolve_file(source, PREPROCESSOR_CONFIG_FILE, required=False, **hub)
        config: dict[str, Any] | None
        if config_file is not None:
            config = read_json(config_file)
        else:
            config_file = resolve_file(source, PROCESSOR_CONFIG_FILE, required=False, **hub)
            config = None if config_file is None else read_json(config_file).get("image_processor")
        if config_file is None or not isinstance(config, dict):
            raise FileNotFoundError(
                f"{str(pretrained_model_name_or_path)!r} has no {PREPROCESSOR_CONFIG_FILE} (nor an image_processor "
                f"entry in {PROCESSOR_CONFIG_FILE})."
            )
        try:
            cls.from_dict(config)  # the file's own settings, so that an error names the file
        except ValueError as err:
            raise ViltInputError(f"{config_file}: {err}") from None
        return cls.from_dict(config, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write ``preprocessor_config.json`` into a directory (created if missing), all or nothing.

        Args:
            save_directory: The directory.

        Returns:
            The paths written.
        """
        with atomic_directory(save_directory) as staging:
            self.to_json_file(staging / PREPROCESSOR_CONFIG_FILE)
        return [str(Path(save_directory) / PREPROCESSOR_CONFIG_FILE)]

    @staticmethod
    def _init_parameter_names() -> set[str]:
        return set(inspect.signature(ViltImageProcessor.__init__).parameters) - {"self"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ViltImageProcessor) and self._init_kwargs() == other._init_kwargs()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


class ViltFeatureExtractor(ViltImageProcessor):
    """Deprecated alias of ``ViltImageProcessor`` (its name in transformers v4); warns when built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "ViltFeatureExtractor is deprecated; use ViltImageProcessor, which takes the same arguments.",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)


def _switch(value: Any) -> bool | None:
    """A setting's on/off value: a bool, or None (off, kept as None)."""
    return None if value is None else bool(value)


def _size_dict(size: int | dict[str, int]) -> dict[str, int]:
    if isinstance(size, dict):
        if set(size) != {"shortest_edge"}:
            raise ViltInputError(f'size must be an int or {{"shortest_edge": int}}, got {size}.')
        size = size["shortest_edge"]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ViltInputError(f'size must be a positive int or {{"shortest_edge": int}}, got {size!r}.')
    return {"shortest_edge": int(size)}


def _channel_values(values: float | Sequence[float], name: str) -> tuple[float, ...]:
    """One value per channel: three for a single number (RGB), or as many as given."""
    values = (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if not values:
        raise ViltInputError(f"{name} must have one value per channel (3 for RGB), got none.")
    return values


def _package(
    pixel_values: np.ndarray,
    pixel_mask: np.ndarray,
    group_size: int | None,
    do_pad: bool | None,
    data_format: str,
    return_tensors: str | None,
) -> BatchFeature:
    """Shape the padded arrays into the output: groups, channel order, unpadded lists, tensor type."""
    if data_format == "channels_last":
        pixel_values = np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))
    if group_size is not None:
        pixel_values = pixel_values.reshape(-1, group_size, *pixel_values.shape[1:])
        pixel_mask = pixel_mask.reshape(-1, group_size, *pixel_mask.shape[1:])
    if not do_pad:
        # Without padding, the images keep their own sizes: per-image arrays, or one array if all agree.
        unpadded = _unpad(pixel_values, pixel_mask, data_format)
        if return_tensors is None:
            return BatchFeature(pixel_values=unpadded)
        if not pixel_mask.all():
            raise ViltInputError(
                "the images have different sizes after resizing; pass do_pad=True to batch them."
            )
        outputs = {"pixel_values": pixel_values}
    elif return_tensors is None:
        return BatchFeature(pixel_values=list(pixel_values), pixel_mask=list(pixel_mask))
    else:
        outputs = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
    if return_tensors == "pt":
        return BatchFeature({key: torch.from_numpy(value) for key, value in outputs.items()})
    return BatchFeature(outputs)


def _unpad(pixel_values: np.ndarray, pixel_mask: np.ndarray, data_format: str) -> list[np.ndarray]:
    """Crop every image (or group) of a padded batch back to its own height and width."""
    crops = []
    for values, mask in zip(pixel_values, pixel_mask):
        height, width = int(mask.any(-1).sum(-1).max()), int(mask.any(-2).sum(-1).max())
        crops.append(
            values[..., :height, :width, :]
            if data_format == "channels_last"
            else values[..., :height, :width]
        )
    return crops
