"""NLVR2: is a statement true of a pair of images? A two-way classifier over both images' pooled outputs.

Each example has two images and a class id (1 = true); batches keep the pair together, and the metric
is accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..examples import Example, Item
from ..metrics import accuracy
from .base import ClassificationTask, ScoredData


class NLVR2Task(ClassificationTask):
    name = "nlvr2"

    def head_config(self, answers: Sequence[str] | None) -> dict[str, Any]:
        return {"num_labels": 2, "num_images": 2, "modality_type_vocab_size": 3}

    def unusable(self, ex: Example, answer_ids: dict[str, int]) -> tuple[str, str] | None:
        return ("missing label", f"{ex.text!r}") if ex.label is None else None

    def batch_images(self, items: Sequence[Item], pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        return {"pixel_values": pixels, "pixel_mask": mask}  # both images: (B, 2, C, H, W), (B, 2, H, W)

    def metrics(self, dataset: ScoredData, predictions: dict[int, int]) -> dict[str, float]:
        index = sorted(predictions)
        labels = torch.tensor([dataset.examples[i].label for i in index])
        return {"accuracy": accuracy(torch.tensor([predictions[i] for i in index]), labels)}
