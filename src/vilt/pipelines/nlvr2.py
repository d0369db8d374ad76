"""NLVR2: ``nlvr2((image_a, image_b), statement) -> {"label": bool, "score": float}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..feature import BatchFeature
from .base import Pipeline


class NLVR2Pipeline(Pipeline):
    """``nlvr2((image_a, image_b), statement) -> {"label": bool, "score": float}``.

    ``nlvr2([{"images": (a, b), "text": ...}, ...])`` or ``nlvr2([(a, b), ...], [statement, ...])``
    return one dict per item. The score is the softmax probability of the label; class 1 is True.
    """

    task = "nlvr2"
    images_per_input = 2
    image_key = "images"
    text_name = "statement"

    def __call__(  # type: ignore[override]
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Check statements against pairs of images.

        Args:
            images: a pair ``(image_a, image_b)``, a list of pairs, or a list of ``{"images", "text"}`` dicts.
            text: the statement, or one statement per pair.
            batch_size: pairs per forward pass (default: the pipeline's).
            timeout: seconds to wait for an image URL (default: the pipeline's).
        """
        return super().__call__(images, text, batch_size, timeout)

    def _predict(self, batch: BatchFeature) -> list[dict[str, Any]]:  # type: ignore[override]
        scores, ids = self._logits(batch).softmax(dim=-1).max(dim=-1)  # each (B,)
        return [{"label": bool(i), "score": s} for s, i in zip(scores.tolist(), ids.tolist())]
