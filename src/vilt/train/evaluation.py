"""Metrics of a model over a split, sharded over the processes and gathered; and ``vilt evaluate``.

Each task measures its own (:meth:`vilt.train.tasks.TrainingTask.evaluate`): vqa: accuracy (argmax =
the best-scored answer), vqa_score (the soft score of the prediction) and, with annotators' answers, the
official vqa_accuracy; nlvr2: accuracy; retrieval: recall@1/5/10 both ways; pretrain: the losses and the
MLM and ITM accuracies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..processing import ViltProcessor
from . import data as D
from .datasets import build_dataset, read_split
from .distributed import Dist, autocast, setup_distributed
from .logs import setup_logging, through_progress_bars
from .models import set_attention
from .objectives import MaskingSpec
from .settings import DataSource, TrainArgs, read_training_data
from .tasks import TrainingTask, training_task

log = logging.getLogger(__name__)


@dataclass
class Evaluator:
    """Evaluates a model on one dataset; call it with the model. The task decides what is measured
    (:meth:`vilt.train.tasks.TrainingTask.evaluate`); this holds what it measures with.

    Attributes:
        dataset: the examples to score.
        collator: batches them.
        task: the task (which metrics).
        batch_size: examples per forward pass.
        num_workers: data-loading worker processes.
        bf16: bfloat16 autocast.
        seed: the seed of pretraining's masks and ITM negatives (the same at every evaluation).
        env: this process's place in the job: each process scores its share.
        spec: the masking spec (pretrain).
    """

    dataset: D.ViltDataset
    collator: D.Collator
    task: TrainingTask
    batch_size: int
    num_workers: int
    bf16: bool
    seed: int
    env: Dist
    spec: MaskingSpec | None = None

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """The metrics of ``model`` (left in eval mode) on the dataset, the same on every process."""
        model.eval()
        return self.task.evaluate(self, model)

    def batches(self) -> Iterator[dict[str, Any]]:
        """This process's share of the dataset, collated, with a progress bar on the main process."""
        shard = list(range(self.env.rank, len(self.dataset), self.env.world))
        loader = DataLoader(
            self.dataset,
            self.batch_size,
            sampler=shard,
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )
        progress = tqdm(loader, desc="evaluating", disable=not self.env.main, leave=False)
        return (b for b in progress if "input_ids" in b)

    def autocast(self) -> Any:
        """bfloat16 autocast on the evaluation device when ``bf16``."""
        return autocast(self.env.device, self.bf16)


# ----------------------------------------------------------------------------- vilt evaluate


def evaluate(args: TrainArgs) -> dict[str, float]:
    """Evaluate the model in ``args.init`` (default: the bundled model) on ``args.split``; what
    ``vilt evaluate`` runs."""
    args.validate()
    model_name = args.init or "bundled"
    env = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging(None, env.main)
    started = time.time()
    task = training_task(args.task)
    model = task.model_class.from_pretrained(model_name, torch_dtype=torch.float32).to(env.device)
    set_attention(model, args.attention)
    processor = ViltProcessor.from_pretrained(model_name)
    answers = (
        [model.config.id2label[i] for i in range(model.config.num_labels)] if task.needs_answers else None
    )
    issues = D.DataIssues(args.strict)
    source = args.data_source()
    with through_progress_bars():
        dataset = build_dataset(
            read_split(source, args.split),
            task,
            processor,
            answers,
            issues,
            cache_images=args.cache_images,
        )
        if args.split == "val":
            _check_validation_split(model_name, source.absolute(), len(dataset))
        collator = D.Collator(processor.tokenizer, task, args.max_text_length)
        evaluator = Evaluator(
            dataset,
            collator,
            task,
            args.eval_batch_size,
            args.num_workers,
            args.bf16,
            args.seed,
            env,
            task.masking(processor.tokenizer),
        )
        metrics = evaluator(model)
        log.info(
            "evaluated %s on %s %s (%d examples) in %.1f s; skipped: %s",
            model_name, args.dataset, args.split, len(dataset), time.time() - started, issues.summary(),
        )  # fmt: skip
    if args.metrics_file and env.main:
        Path(args.metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _check_validation_split(model: str, source: DataSource, examples: int) -> None:
    """Warn when the validation split is not the one saved with ``model`` (other data or options)."""
    saved = read_training_data(model)
    if saved is None:
        log.warning(
            "%s has no record of its validation split: evaluating the hold-out of these options", model
        )
    elif {k: v for k, v in saved.items() if k != "val_examples"} != asdict(source):
        log.warning(
            "these data options differ from those %s was trained with: not its validation split", model
        )
    elif saved.get("val_examples", examples) != examples:
        log.warning(
            "the validation split has %d examples, %s was selected on %d: the data changed since training",
            examples, model, saved["val_examples"],
        )  # fmt: skip
