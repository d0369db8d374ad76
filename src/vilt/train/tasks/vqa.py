"""Visual question answering: a classifier over the answer vocabulary, trained on soft VQA scores.

Targets are (num_labels,) soft scores (:func:`vilt.train.data.soft_score`); metrics are accuracy
(the best-scored answer predicted), vqa_score (the soft score of the prediction) and, when the data
has the annotators' answers, the official vqa_accuracy, which then selects the best checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..examples import Example, Item
from ..metrics import accuracy, vqa_accuracy
from .base import ClassificationTask, ScoredData


class VQATask(ClassificationTask):
    name = "vqa"
    head_lr_mult = 10.0  # the original recipe's classifier learning rate
    needs_answers = True

    def head_config(self, answers: Sequence[str] | None) -> dict[str, Any]:
        return {"id2label": dict(enumerate(answers or []))}

    def unusable(self, ex: Example, answer_ids: dict[str, int]) -> tuple[str, str] | None:
        if not any(a in answer_ids for a in ex.answer_scores):
            return "answer not in vocabulary", f"{ex.text!r} -> {sorted(ex.answer_scores)}"
        return None

    def target(self, ex: Example, answer_ids: dict[str, int]) -> torch.Tensor:
        """(num_labels,) soft scores over the answer vocabulary."""
        scores = torch.zeros(len(answer_ids))
        for answer, score in ex.answer_scores.items():
            if answer in answer_ids:
                scores[answer_ids[answer]] = score
        return scores

    def batch_labels(self, items: Sequence[Item]) -> dict[str, Any]:
        return {"labels": torch.stack([it.target for it in items])}  # type: ignore[misc]  # (B, num_labels)

    def metrics(self, dataset: ScoredData, predictions: dict[int, int]) -> dict[str, float]:
        index = torch.tensor(sorted(predictions))
        predicted = torch.tensor([predictions[i] for i in index.tolist()])
        targets = torch.stack([dataset.target(dataset.examples[i]) for i in index.tolist()])  # type: ignore[misc]  # (N, num_labels)
        metrics = {
            "accuracy": accuracy(predicted, targets.argmax(1)),
            "vqa_score": targets.gather(1, predicted[:, None]).mean().item(),
            "examples": float(len(index)),
        }
        answers = list(dataset.answer_ids)
        official = [
            vqa_accuracy(answers[p], dataset.examples[i].answers)
            for i, p in zip(index.tolist(), predicted.tolist())
            if dataset.examples[i].answers
        ]
        if official:
            metrics["vqa_accuracy"] = sum(official) / len(official)
        return metrics

    def selection_metric(self, metrics: dict[str, float]) -> float:
        return metrics.get("vqa_accuracy", metrics["vqa_score"])
