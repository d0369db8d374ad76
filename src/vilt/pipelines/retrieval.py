"""Image-text retrieval: ``rank(images=[...], texts=[...]) -> (N, M)`` scores; ``rank.rank(...)`` sorts them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..configuration import ViltConfig
from ..errors import ViltInputError
from ..feature import BatchFeature
from ..modeling import ImageTokens
from .base import (
    Pipeline,
    PipelineInput,
    as_list,
    check_batch_size,
    check_text,
    check_top_k,
    prefetched,
    size_sorted_batches,
)


class ImageTextRetrievalPipeline(Pipeline):
    """``rank(images=[...], texts=[...]) -> (N, M) numpy scores``; ``rank.rank(...)`` sorts them.

    Every (image, text) pair is scored jointly (ViLT has no separate encoders), ``batch_size`` pairs per
    forward pass, with a progress bar. Each image is embedded once (patch projection, positions) and its
    image tokens reused for all M texts. ViltForImageAndTextRetrieval scores with its ``rank_output``;
    ViltForImageTextMatching with its "match" logit, the pretrained model's zero-shot score.
    """

    task = "image-text-retrieval"

    def __init__(self, model: Any, config: ViltConfig, *args: Any, **kwargs: Any) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ViltInputError(
                "image-text-retrieval embeds each image once and pairs it with every text, which the torch "
                "model does; use backend='torch'"
            )
        super().__init__(model, config, *args, **kwargs)

    def __call__(  # type: ignore[override]
        self,
        images: Sequence[Any] | None = None,
        texts: Sequence[str] | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Score every image against every text.

        Args:
            images: N images.
            texts: M texts.
            batch_size: (image, text) pairs per forward pass (default: the pipeline's).
            timeout: seconds to wait for an image URL (default: the pipeline's).

        Returns:
            (N, M) float32 scores; higher means a better match.
        """
        batch_size = check_batch_size(self.batch_size if batch_size is None else batch_size)
        timeout = self.timeout if timeout is None else timeout
        images = as_list(images) if images is not None else []
        texts = as_list(texts) if texts is not None else []
        if not images or not texts:
            raise ViltInputError("pass a non-empty list of images= and a non-empty list of texts=")
        labels = [f"text {j}" for j in range(len(texts))]
        texts = [check_text(text, label) for text, label in zip(texts, labels)]  # before fetching
        items = [self._image_input([image], None, f" (item {i})", timeout) for i, image in enumerate(images)]
        self._warn_if_truncated(texts, labels)
        tokens = self.processor.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_position_embeddings,
            return_tensors="pt",
        )
        return self._score_all(items, BatchFeature(tokens).to(self.device), batch_size)

    def _score_all(self, items: list[PipelineInput], tokens: BatchFeature, batch_size: int) -> np.ndarray:
        """(N, M) scores: images embedded a size-sorted chunk at a time, each chunk paired with every text."""
        from tqdm.auto import tqdm

        num_texts = tokens["input_ids"].shape[0]
        chunks = size_sorted_batches([item.size for item in items], max(1, batch_size // num_texts))
        scores = np.zeros((len(items), num_texts), dtype=np.float32)
        encode = self.processor.image_processor
        prepared = prefetched(
            chunks, lambda chunk: encode([self._load_images(items[i])[0] for i in chunk], return_tensors="pt")
        )
        with tqdm(total=scores.size, desc=self.task, unit="pair", disable=scores.size <= batch_size) as bar:
            for chunk, pixels in prepared:
                images = self._embed(pixels)
                for rows, cols in _pair_batches(len(chunk), num_texts, batch_size):
                    scores[np.asarray(chunk)[rows], cols] = self._score(tokens, cols, images, rows)
                    bar.update(len(rows))
        return scores

    # The only two places that call the model.
    def _embed(self, pixels: BatchFeature) -> ImageTokens:
        """The image tokens of a processed image batch, computed once for every text."""
        with torch.inference_mode():
            return self.model.embed_images(**self._to_device(pixels))

    def _score(
        self, tokens: BatchFeature, cols: np.ndarray, images: ImageTokens, rows: np.ndarray
    ) -> np.ndarray:
        """(P,) float32 match scores of the pairs (text ``cols[p]``, embedded image ``rows[p]``)."""
        with torch.inference_mode():
            scores = self.model.match_scores(
                tokens["input_ids"][cols],
                tokens["attention_mask"][cols],
                tokens["token_type_ids"][cols],
                images.select(rows),
            )
        return scores.float().cpu().numpy()

    def rank(
        self,
        images: Sequence[Any],
        texts: Sequence[str],
        top_k: int = 5,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Score all pairs, then sort: the best images for each text and the best texts for each image.

        Returns:
            ``{"scores": (N, M) array, "text_to_images": [[{"index", "score"}] per text],
            "image_to_texts": [[{"index", "text", "score"}] per image]}``, each list best first.
        """
        check_top_k(top_k)  # before the work
        texts = as_list(texts)
        scores = self(images=images, texts=texts, batch_size=batch_size, timeout=timeout)
        return {
            "scores": scores,
            "text_to_images": top_k_per_row(scores.T, top_k),
            "image_to_texts": [
                [{**hit, "text": texts[hit["index"]]} for hit in hits]
                for hits in top_k_per_row(scores, top_k)
            ],
        }


def _pair_batches(
    num_images: int, num_texts: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All (image row, text column) pairs of a chunk, ``batch_size`` at a time, as (rows, cols)."""
    pairs = np.arange(num_images * num_texts)
    for start in range(0, len(pairs), batch_size):
        yield np.divmod(pairs[start : start + batch_size], num_texts)


def top_k_per_row(scores: np.ndarray, top_k: int) -> list[list[dict[str, Any]]]:
    """For each row of a score matrix, its ``top_k`` columns best first as ``{"index", "score"}``."""
    top_k = check_top_k(top_k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]  # (rows, top_k)
    return [[{"index": int(j), "score": float(row[j])} for j in cols] for row, cols in zip(scores, order)]
