"""Visual question answering: ``vqa(image, question, top_k=5) -> [{"answer", "score"}]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..feature import BatchFeature
from .base import Pipeline, check_top_k


class VisualQuestionAnsweringPipeline(Pipeline):
    """``vqa(image, question, top_k=5) -> [{"answer", "score"}]``, best first (sigmoid scores).

    Also ``vqa(image=..., question=...)``; ``vqa([{"image": ..., "question": ...}, ...])`` and
    ``vqa([image, ...], question)`` (one question for every image) return one list per item.
    """

    task = "visual-question-answering"
    text_key = "question"
    text_name = "question"

    def __call__(  # type: ignore[override]
        self,
        image: Any = None,
        question: str | Sequence[str] | None = None,
        top_k: int = 5,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Answer questions about images.

        Args:
            image: one image, a list of images, or a list of ``{"image", "question"}`` dicts.
            question: the question (one for all images), or one question per image.
            top_k: answers to return per question (at most the number of answers the model knows).
            batch_size: questions per forward pass (default: the pipeline's).
            timeout: seconds to wait for an image URL (default: the pipeline's).
        """
        top_k = check_top_k(top_k, self.config.num_labels)
        return super().__call__(image, question, batch_size, timeout, top_k=top_k)

    def _predict(self, batch: BatchFeature, top_k: int) -> list[list[dict[str, Any]]]:  # type: ignore[override]
        scores, ids = self._logits(batch).sigmoid().topk(top_k, dim=-1)  # each (B, top_k)
        return [
            [{"answer": self.labels[i], "score": s} for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]
