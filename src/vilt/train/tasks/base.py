"""What a trainable task adds to the training code that every task shares: :class:`TrainingTask`.

The loop, the datasets, the collator and the evaluator are written once; where tasks differ they ask
the run's task object:

| concern | members |
|---|---|
| the model | :attr:`~TrainingTask.model_class`, :meth:`~TrainingTask.head_config`, :attr:`~TrainingTask.head_lr_mult` |
| the examples | :attr:`~TrainingTask.reads_captions`, :attr:`~TrainingTask.needs_answers`, :meth:`~TrainingTask.unusable`, :meth:`~TrainingTask.target`, :meth:`~TrainingTask.item` |
| the batches | :meth:`~TrainingTask.batch_images`, :meth:`~TrainingTask.batch_labels` (what :meth:`~TrainingTask.collate` adds), :meth:`~TrainingTask.masking`, :meth:`~TrainingTask.model_inputs` |
| the metrics | :meth:`~TrainingTask.evaluate`, :meth:`~TrainingTask.selection_metric` |

Each task is one module of this package and one row of :data:`vilt.tasks.TASKS` (marked trainable).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

import torch

from ... import heads
from ...modeling import ViltPreTrainedModel
from ...tasks import TaskSpec, find_task
from ..distributed import Dist, gather, to_device
from ..examples import Example, Item
from ..objectives import MaskingSpec

# the keyword arguments of a fine-tuning head's forward that a collated batch holds
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask", "labels")


class ScoredData(Protocol):
    """What an evaluation reads of the dataset it scores (:class:`vilt.train.data.ViltDataset`)."""

    @property
    def examples(self) -> list[Example]: ...

    @property
    def answer_ids(self) -> dict[str, int]: ...

    @property
    def images(self) -> Any: ...  # the ImageLoader: .load(path) -> (C, H, W)

    def target(self, ex: Example) -> torch.Tensor | int | None: ...


class Evaluation(Protocol):
    """What a task's :meth:`TrainingTask.evaluate` reads of the evaluator (:class:`vilt.train.evaluation.Evaluator`)."""

    @property
    def dataset(self) -> ScoredData: ...

    @property
    def collator(self) -> Any: ...  # its tokenizer and max_text_length

    @property
    def batch_size(self) -> int: ...

    @property
    def seed(self) -> int: ...

    @property
    def env(self) -> Dist: ...

    @property
    def spec(self) -> MaskingSpec | None: ...

    def batches(self) -> Iterator[dict[str, Any]]:
        """This process's share of the dataset, collated (batches left empty by unreadable items dropped)."""
        ...

    def autocast(self) -> AbstractContextManager[Any]:
        """bfloat16 autocast on the evaluation device when the run asks for it."""
        ...


class TrainingTask:
    """One trainable task: the head it trains, how its examples become batches, and how it is scored.

    The defaults are those of a task that trains a classifier over one image and one text per example,
    with a class id as its target; subclasses change what differs.

    Attributes:
        name: the task's short name (:data:`vilt.tasks.TASKS`, ``vilt train --task``).
        head_lr_mult: the head's learning-rate multiplier when ``--head-lr-mult`` is 0.
        needs_answers: the head classifies over an answer vocabulary (its labels).
        reads_captions: trains on image captions, so datasets of questions (easy-VQA) give their captions.
    """

    name: ClassVar[str]
    head_lr_mult: ClassVar[float] = 1.0
    needs_answers: ClassVar[bool] = False
    reads_captions: ClassVar[bool] = False

    @property
    def spec(self) -> TaskSpec:
        """The task's row of the task table."""
        return find_task(self.name)

    @property
    def model_class(self) -> type[ViltPreTrainedModel]:
        """The head class the task trains: the task table's preferred architecture."""
        return getattr(heads, self.spec.architectures[0])  # type: ignore[no-any-return]

    def head_config(self, answers: Sequence[str] | None) -> dict[str, Any]:
        """The :class:`~vilt.configuration.ViltConfig` fields the head needs (labels, images per example)."""
        return {}

    # --- examples ---

    def unusable(self, ex: Example, answer_ids: dict[str, int]) -> tuple[str, str] | None:
        """Why ``ex`` cannot be trained on, as (reason counted, detail), or None when it can."""
        return None

    def target(self, ex: Example, answer_ids: dict[str, int]) -> torch.Tensor | int | None:
        """The training target of ``ex``."""
        return ex.label

    def item(
        self, ex: Example, rng: random.Random, other: Callable[[random.Random], Example], negatives: int
    ) -> tuple[list[str], list[str]]:
        """The texts and image paths one item reads: the example's own, and what the task draws besides.

        Args:
            ex: the example.
            rng: the item's random numbers (drawn in a fixed order, so that resuming repeats them).
            other: draws a random example of another image.
            negatives: random negative captions per image asked for (tasks that rank captions).
        """
        return [ex.text], list(ex.images)

    # --- batches ---

    def collate(
        self,
        batch: dict[str, Any],
        items: Sequence[Item],
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor,
    ) -> None:
        """Add the images and labels of ``items`` to ``batch`` (which holds the tokenized texts).

        Args:
            batch: the batch being built.
            items: the readable items.
            pixel_values: (B, n, C, H, W) every item's images, padded alike.
            pixel_mask: (B, n, H, W), 1 on real pixels.
        """
        batch.update(self.batch_images(items, pixel_values, pixel_mask))
        batch.update(self.batch_labels(items))

    def batch_images(self, items: Sequence[Item], pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """The images of a batch (see :meth:`collate`): each item's first, (B, C, H, W) and (B, H, W)."""
        return {"pixel_values": pixels[:, 0], "pixel_mask": mask[:, 0]}

    def batch_labels(self, items: Sequence[Item]) -> dict[str, Any]:
        """The labels of a batch: each item's target, (B,)."""
        return {"labels": torch.tensor([it.target for it in items])}

    def masking(self, tokenizer: Any) -> MaskingSpec | None:
        """What the task masks words with (pretraining), or None."""
        return None

    def model_inputs(self, batch: dict[str, Any], spec: MaskingSpec | None = None) -> dict[str, torch.Tensor]:
        """The keyword arguments of the head's forward for one collated batch (loss included).

        Args:
            batch: from :class:`vilt.train.data.Collator`.
            spec: what :meth:`masking` returned.
        """
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    # --- metrics ---

    def evaluate(self, evaluation: Evaluation, model: torch.nn.Module) -> dict[str, float]:
        """The metrics of ``model`` (in eval mode, gradients off) on the evaluation's dataset, the same
        on every process."""
        raise NotImplementedError

    def selection_metric(self, metrics: dict[str, float]) -> float:
        """The validation number the best checkpoint is chosen by (higher is better)."""
        return metrics["accuracy"]


class ClassificationTask(TrainingTask):
    """A task scored by the class each example is predicted: the argmax of the head's logits."""

    def evaluate(self, evaluation: Evaluation, model: torch.nn.Module) -> dict[str, float]:
        rows: list[tuple[int, int]] = []
        for batch in evaluation.batches():
            inputs = {k: v for k, v in self.model_inputs(batch).items() if k != "labels"}
            with evaluation.autocast():
                logits = model(**to_device(inputs, evaluation.env.device)).logits  # (B, num_labels)
            rows += zip(batch["index"].tolist(), logits.argmax(-1).cpu().tolist())
        predictions = dict(row for part in gather(rows, evaluation.env) for row in part)
        return self.metrics(evaluation.dataset, predictions)

    def metrics(self, dataset: ScoredData, predictions: dict[int, int]) -> dict[str, float]:
        """The metrics of {dataset index: predicted class}."""
        raise NotImplementedError
