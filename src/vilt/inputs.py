"""Checks of a model's inputs by their shapes, shared by the PyTorch model and the exported runtimes.

They take shapes (tuples), not tensors, so that :class:`vilt.ViltModel` (torch tensors) and
:class:`vilt.export.runtime.ExportedModel` (numpy arrays) say the same thing about the same mistake.
Each raises :class:`vilt.errors.ViltInputError` naming the input and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .configuration import ViltConfig
from .errors import ViltInputError

Shape = Sequence[int]


def check_text(
    config: ViltConfig, input_ids: Shape, attention_mask: Shape | None, token_type_ids: Shape | None
) -> tuple[int, int]:
    """``input_ids`` is (batch >= 1, 1 <= length <= max_position_embeddings) and the masks match it.

    Returns:
        (batch, length).
    """
    if len(input_ids) != 2:
        raise ViltInputError(f"input_ids must be 2-D (batch, text length), got shape {tuple(input_ids)}")
    batch, length = input_ids
    if batch == 0:
        raise ViltInputError("the batch is empty (0 examples): pass at least one text and one image")
    if length == 0:
        raise ViltInputError(
            "the text is empty: tokenize with add_special_tokens=True to get [CLS] and [SEP]"
        )
    if length > config.max_position_embeddings:
        raise ViltInputError(
            f"the text is {length} tokens long but this model reads at most {config.max_position_embeddings}; "
            f"tokenize with truncation=True, max_length={config.max_position_embeddings}"
        )
    for name, shape in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if shape is not None and tuple(shape) != (batch, length):
            raise ViltInputError(
                f"{name} must have shape {(batch, length)} like the text, got {tuple(shape)}"
            )
    return batch, length


def check_pixels(
    config: ViltConfig, pixel_values: Shape, pixel_mask: Shape | None, images: tuple[int, ...] = ()
) -> int:
    """``pixel_values`` is (batch >= 1, [images,] channels, height, width) with at least one patch a side,
    and ``pixel_mask`` is (batch, [images,] height, width).

    Args:
        images: ``(num_images,)`` for inputs with an images axis (the NLVR2 graph), else ``()``.

    Returns:
        The batch size.
    """
    if len(pixel_values) != 4 + len(images) or tuple(pixel_values[1:-3]) != images:
        axes = ", ".join(map(str, (*images, "channels")))
        raise ViltInputError(
            f"pixel_values must have shape (batch, {axes}, height, width), got {tuple(pixel_values)}"
        )
    if pixel_values[-3] != config.num_channels:
        raise ViltInputError(
            f"pixel_values has {pixel_values[-3]} channels but the model expects {config.num_channels}; "
            "convert images to RGB (the processor does this)"
        )
    batch, (height, width) = pixel_values[0], pixel_values[-2:]
    if batch == 0:
        raise ViltInputError("the image batch is empty (0 images): pass at least one image")
    if height < config.patch_size or width < config.patch_size:
        raise ViltInputError(
            f"the image batch is {height}x{width} pixels, smaller than one {config.patch_size}x"
            f"{config.patch_size} patch; resize it (the processor does this)"
        )
    mask_shape = (batch, *images, height, width)
    if pixel_mask is not None and tuple(pixel_mask) != mask_shape:
        raise ViltInputError(f"pixel_mask must have shape {mask_shape}, got {tuple(pixel_mask)}")
    return batch


def check_same_batch(texts: int, images: int) -> None:
    """The text batch and the image batch hold the same number of examples."""
    if texts != images:
        raise ViltInputError(
            f"the text batch has {texts} examples but the image batch has {images}; they must match"
        )
