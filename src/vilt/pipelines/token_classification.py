"""Token classification: ``tag(image, text) -> [{"token", "label", "score", "index"}]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..feature import BatchFeature
from .base import Pipeline


class TokenClassificationPipeline(Pipeline):
    """``tag(image, text) -> [{"token", "label", "score", "index"}]`` for every word piece of the text.

    ``index`` is the token's position in ``input_ids``; special tokens and padding are left out. A list
    of images (one text for all, or one text each) or of ``{"image", "text"}`` dicts gives one list each.
    """

    task = "token-classification"

    def __call__(  # type: ignore[override]
        self,
        image: Any = None,
        text: str | Sequence[str] | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Label every token of the text.

        Args:
            image: one image, a list of images, or a list of ``{"image", "text"}`` dicts.
            text: the text, or one text per image.
            batch_size: inputs per forward pass (default: the pipeline's).
            timeout: seconds to wait for an image URL (default: the pipeline's).
        """
        return super().__call__(image, text, batch_size, timeout)

    def _predict(self, batch: BatchFeature) -> list[list[dict[str, Any]]]:  # type: ignore[override]
        scores, ids = self._logits(batch).softmax(dim=-1).max(dim=-1)  # each (B, Lt)
        tokenizer = self.processor.tokenizer
        special = set(tokenizer.all_special_ids)
        results = []
        for row_ids, row_mask, row_scores, row_labels in zip(
            batch["input_ids"].tolist(), batch["attention_mask"].tolist(), scores.tolist(), ids.tolist()
        ):
            tokens = tokenizer.convert_ids_to_tokens(row_ids)
            results.append(
                [
                    {
                        "token": tokens[t],
                        "label": self.labels[row_labels[t]],
                        "score": row_scores[t],
                        "index": t,
                    }
                    for t, (token_id, real) in enumerate(zip(row_ids, row_mask))
                    if real and token_id not in special
                ]
            )
        return results
