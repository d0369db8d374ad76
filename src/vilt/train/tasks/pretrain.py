"""Pretraining: masked language modelling, image-text matching and word-patch alignment at once
(:class:`vilt.heads.ViltForPreTraining`, losses in :mod:`vilt.train.objectives`).

An item is an image, its caption and a random other image (the ITM negative); each batch draws its word
masks and ITM labels (:func:`vilt.train.objectives.pretraining_inputs`). Evaluation draws them from a
fixed seed, so every evaluation scores the same masks, and reports the losses and the MLM and ITM
accuracies, whose sum selects the best checkpoint. On easy-VQA the captions are read off the questions.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..distributed import gather, to_device
from ..examples import Example, Item
from ..objectives import MaskingSpec, pretraining_inputs
from .base import Evaluation, TrainingTask


class PretrainingTask(TrainingTask):
    name = "pretrain"
    reads_captions = True

    def target(self, ex: Example, answer_ids: dict[str, int]) -> None:
        return None  # the targets are drawn per batch: masked words and ITM labels

    def item(
        self, ex: Example, rng: random.Random, other: Callable[[random.Random], Example], negatives: int
    ) -> tuple[list[str], list[str]]:
        return [ex.text], [*ex.images, other(rng).images[0]]  # the false image of ITM last

    def batch_images(self, items: Sequence[Item], pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        # the true image, then the false image of ITM: (B, C, H, W) and (B, H, W) each
        true = super().batch_images(items, pixels, mask)
        return {**true, "false_pixel_values": pixels[:, 1], "false_pixel_mask": mask[:, 1]}

    def batch_labels(self, items: Sequence[Item]) -> dict[str, Any]:
        return {}  # drawn per batch (pretraining_inputs)

    def masking(self, tokenizer: Any) -> MaskingSpec:
        return MaskingSpec.from_tokenizer(tokenizer)

    def model_inputs(self, batch: dict[str, Any], spec: MaskingSpec | None = None) -> dict[str, torch.Tensor]:
        if spec is None:
            raise ValueError("pretraining needs a MaskingSpec for whole-word masking")
        return pretraining_inputs(batch, spec)

    def evaluate(self, evaluation: Evaluation, model: torch.nn.Module) -> dict[str, float]:
        """Pretraining losses and MLM / ITM accuracies, with masks and negatives drawn from a fixed seed."""
        generator = torch.Generator().manual_seed(evaluation.seed)  # the same masks and negatives every time
        sums: Counter[str] = Counter()
        for batch in evaluation.batches():
            inputs = pretraining_inputs(batch, evaluation.spec, generator)  # type: ignore[arg-type]
            with evaluation.autocast():
                out = model(**to_device(inputs, evaluation.env.device))
            n = len(batch["index"])
            masked = inputs["mlm_labels"] != -100  # (B, Lt)
            sums.update(
                examples=n,
                loss=out.loss.item() * n,
                mlm_loss=out.mlm_loss.item() * n,
                itm_loss=out.itm_loss.item() * n,
                mlm_hits=(out.mlm_logits.argmax(-1).cpu() == inputs["mlm_labels"])[masked].sum().item(),
                masked=int(masked.sum()),
                itm_hits=(out.itm_logits.argmax(-1).cpu() == inputs["itm_labels"]).sum().item(),
            )
        total: Counter[str] = Counter()
        for part in gather(sums, evaluation.env):
            total.update(part)
        n = max(1, total["examples"])
        return {
            "loss": total["loss"] / n,
            "mlm_loss": total["mlm_loss"] / n,
            "itm_loss": total["itm_loss"] / n,
            "mlm_accuracy": total["mlm_hits"] / max(1, total["masked"]),
            "itm_accuracy": total["itm_hits"] / n,
        }

    def selection_metric(self, metrics: dict[str, float]) -> float:
        return metrics["mlm_accuracy"] + metrics["itm_accuracy"]
