"""Image-text retrieval: a score per image-text pair, trained to rank each image's caption above random
captions of other images.

An item is an image with its caption then ``negatives`` random captions; its target is 0 (the true
caption's place). Evaluation scores every image against every text and reports recall@1/5/10 both
ways (``tr_``: image to text, ``ir_``: text to image); r@1 both ways selects the best checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..distributed import gather
from ..examples import Example, Item
from ..metrics import recall_at_k, retrieval_scores
from .base import Evaluation, TrainingTask


class RetrievalTask(TrainingTask):
    name = "retrieval"

    def target(self, ex: Example, answer_ids: dict[str, int]) -> int:
        return 0  # the true caption comes first

    def item(
        self, ex: Example, rng: random.Random, other: Callable[[random.Random], Example], negatives: int
    ) -> tuple[list[str], list[str]]:
        return [ex.text, *(other(rng).text for _ in range(negatives))], list(ex.images)

    def batch_images(self, items: Sequence[Item], pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        # each image once per candidate text, in the texts' order: B groups of k = 1 + negatives rows
        k = len(items[0].texts)
        return {
            "pixel_values": pixels[:, 0].repeat_interleave(k, dim=0),  # (B * k, C, H, W)
            "pixel_mask": mask[:, 0].repeat_interleave(k, dim=0),  # (B * k, H, W)
        }

    def evaluate(self, evaluation: Evaluation, model: torch.nn.Module) -> dict[str, float]:
        """Recall@K: every image scored against every text; images are split over the processes."""
        dataset, collator, env = evaluation.dataset, evaluation.collator, evaluation.env
        image_of_group: dict[str, str] = {}  # each image once, in order of appearance
        for ex in dataset.examples:
            image_of_group.setdefault(ex.group, ex.images[0])
        group_index = {g: i for i, g in enumerate(image_of_group)}
        text_image = torch.tensor([group_index[ex.group] for ex in dataset.examples])  # (N_txt,)
        texts = collator.tokenizer(
            [ex.text for ex in dataset.examples], padding="longest", truncation=True,
            max_length=collator.max_text_length, return_tensors="pt",
        )  # fmt: skip
        mine = list(range(env.rank, len(group_index), env.world))
        paths = list(image_of_group.values())
        pixels = [dataset.images.load(paths[i]) for i in mine]
        with evaluation.autocast():
            scores = retrieval_scores(model, pixels, dict(texts), evaluation.batch_size, progress=env.main)
        rows = {i: row for part in gather(list(zip(mine, scores)), env) for i, row in part}
        return recall_at_k(torch.stack([rows[i] for i in range(len(paths))]), text_image)  # (N_img, N_txt)

    def selection_metric(self, metrics: dict[str, float]) -> float:
        return metrics["ir_r1"] + metrics["tr_r1"]
