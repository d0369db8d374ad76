"""Fill-mask: ``fill(image, "a [MASK] circle") -> {"sequence", "tokens", "scores"}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ViltInputError
from ..feature import BatchFeature
from .base import Pipeline


class FillMaskPipeline(Pipeline):
    """``fill(image, "a [MASK] circle") -> {"sequence", "tokens", "scores"}``: the reference demo's filling.

    As in the reference's ViltForMaskedLM example: predict every [MASK], fill the one predicted with the
    highest probability (the leftmost on ties), run the model again on the new text, until no [MASK] is
    left. ``tokens``/``scores`` list the filled word pieces and their probabilities in text order.
    A list of images or of ``{"image", "text"}`` dicts gives one dict each, filled in batches.
    """

    task = "fill-mask"

    def __call__(  # type: ignore[override]
        self,
        image: Any = None,
        text: str | Sequence[str] | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Fill the [MASK] tokens of the text.

        Args:
            image: one image, a list of images, or a list of ``{"image", "text"}`` dicts.
            text: the text with one or more ``[MASK]``, or one text per image.
            batch_size: inputs per forward pass (default: the pipeline's).
            timeout: seconds to wait for an image URL (default: the pipeline's).
        """
        return super().__call__(image, text, batch_size, timeout)

    def _check_text(self, text: Any, label: str) -> str:
        text = super()._check_text(text, label)
        tokenizer, limit = self.processor.tokenizer, self.config.max_position_embeddings
        if tokenizer.mask_token not in text:
            raise ViltInputError(f"{label} has no {tokenizer.mask_token} to fill: {text!r}")
        if tokenizer.mask_token_id not in tokenizer(text, truncation=True, max_length=limit)["input_ids"]:
            raise ViltInputError(
                f"{label} has its {tokenizer.mask_token} beyond the {limit} tokens the model reads; shorten it"
            )
        return text

    def _predict(self, batch: BatchFeature) -> list[dict[str, Any]]:  # type: ignore[override]
        mask_id = self.processor.tokenizer.mask_token_id
        input_ids = batch["input_ids"].clone()  # (B, Lt), filled in place step by step
        to_fill = input_ids == mask_id  # (B, Lt) the positions of the original masks (each text has one)
        probabilities = torch.zeros(input_ids.shape)  # (B, Lt) probability of each filled token
        for _ in range(int(to_fill.sum(dim=1).max())):
            remaining = input_ids == mask_id  # (B, Lt)
            rows = remaining.any(dim=1).nonzero().flatten()  # inputs that still have a mask
            step = BatchFeature({key: value[rows] for key, value in batch.items()})
            step["input_ids"] = input_ids[rows]
            best, predicted = self._logits(step).softmax(dim=-1).max(dim=-1)  # each (b, Lt)
            best = best.masked_fill(~remaining[rows], -1.0)
            position = best.argmax(dim=1)  # (b,) the most confident mask; argmax takes the leftmost tie
            input_ids[rows, position] = predicted[torch.arange(len(rows)), position]
            probabilities[rows, position] = best[torch.arange(len(rows)), position]
        tokenizer = self.processor.tokenizer
        return [
            {
                "sequence": tokenizer.decode(ids, skip_special_tokens=True),
                "tokens": tokenizer.convert_ids_to_tokens(ids[where].tolist()),
                "scores": probs[where].tolist(),
            }
            for ids, where, probs in zip(input_ids, to_fill, probabilities)
        ]
