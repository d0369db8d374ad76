"""Metrics of a model over a split, sharded over the processes and gathered; and ``vilt evaluate``.

vqa: accuracy (argmax = the best-scored answer), vqa_score (the soft score of the prediction) and, with
annotators' answers, the official vqa_accuracy; nlvr2: accuracy; retrieval: recall@1/5/10 both ways;
pretrain: the losses and the MLM and ITM accuracies.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..processing import ViltProcessor
from . import data as D
from .datasets import build_dataset, read_split
from .distributed import Dist, gather, setup_distributed
from .logs import setup_logging, through_progress_bars
from .metrics import accuracy, recall_at_k, retrieval_scores, vqa_accuracy
from .models import MODEL_CLASSES, set_attention
from .objectives import MaskingSpec, model_inputs, pretraining_inputs
from .settings import DataSource, TrainArgs, read_training_data

log = logging.getLogger(__name__)


def autocast(device: torch.device, enabled: bool) -> Any:
    """bfloat16 autocast on ``device`` when ``enabled``."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class Evaluator:
    """Evaluates a model on one dataset; call it with the model.

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
    task: str
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
        if self.task == "retrieval":
            return self._retrieval(model)
        shard = list(range(self.env.rank, len(self.dataset), self.env.world))
        loader = DataLoader(
            self.dataset,
            self.batch_size,
            sampler=shard,
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )
        progress = tqdm(loader, desc="evaluating", disable=not self.env.main, leave=False)
        batches = (b for b in progress if "input_ids" in b)
        if self.task == "pretrain":
            return self._pretraining(model, batches)
        rows: list[tuple[int, int]] = []
        for batch in batches:
            inputs = {k: v for k, v in model_inputs(self.task, batch).items() if k != "labels"}
            with autocast(self.env.device, self.bf16):
                logits = model(**to_device(inputs, self.env.device)).logits  # (B, num_labels)
            rows += zip(batch["index"].tolist(), logits.argmax(-1).cpu().tolist())
        predictions = dict(row for part in gather(rows, self.env) for row in part)
        return classification_metrics(self.task, self.dataset, predictions)

    def _pretraining(self, model: torch.nn.Module, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        """Pretraining losses and MLM / ITM accuracies, with masks and negatives drawn from a fixed seed."""
        generator = torch.Generator().manual_seed(self.seed)  # the same masks and negatives every evaluation
        sums: Counter[str] = Counter()
        for batch in batches:
            inputs = pretraining_inputs(batch, self.spec, generator)  # type: ignore[arg-type]
            with autocast(self.env.device, self.bf16):
                out = model(**to_device(inputs, self.env.device))
            n = len(batch["index"])
            masked = inputs["mlm_labels"] != -100  # (B, Lt)
            sums.update(
                examples=n,
                loss=out.loss.item() * n,
                mlm_loss=out.mlm_loss.item() * n,
                itm_loss=out.itm_loss.item() * n,
                mlm_hits=(out.mlm_logits.argmax(-1).cpu() == inputs["mlm_labels"])[masked].sum().item(),
                masked=masked.sum().item(),
                itm_hits=(out.itm_logits.argmax(-1).cpu() == inputs["itm_labels"]).sum().item(),
            )
        total: Counter[str] = Counter()
        for part in gather(sums, self.env):
            total.update(part)
        n = max(1, total["examples"])
        return {
            "loss": total["loss"] / n,
            "mlm_loss": total["mlm_loss"] / n,
            "itm_loss": total["itm_loss"] / n,
            "mlm_accuracy": total["mlm_hits"] / max(1, total["masked"]),
            "itm_accuracy": total["itm_hits"] / n,
        }

    def _retrieval(self, model: torch.nn.Module) -> dict[str, float]:
        """Recall@K: every image scored against every text; images are split over the processes."""
        image_of_group: dict[str, str] = {}  # each image once, in order of appearance
        for ex in self.dataset.examples:
            image_of_group.setdefault(ex.group, ex.images[0])
        group_index = {g: i for i, g in enumerate(image_of_group)}
        text_image = torch.tensor([group_index[ex.group] for ex in self.dataset.examples])  # (N_txt,)
        texts = self.collator.tokenizer(
            [ex.text for ex in self.dataset.examples], padding="longest", truncation=True,
            max_length=self.collator.max_text_length, return_tensors="pt",
        )  # fmt: skip
        mine = list(range(self.env.rank, len(group_index), self.env.world))
        paths = list(image_of_group.values())
        pixels = [self.dataset.images.load(paths[i]) for i in mine]
        with autocast(self.env.device, self.bf16):
            scores = retrieval_scores(model, pixels, dict(texts), self.batch_size, progress=self.env.main)
        rows = {i: row for part in gather(list(zip(mine, scores)), self.env) for i, row in part}
        return recall_at_k(torch.stack([rows[i] for i in range(len(paths))]), text_image)  # (N_img, N_txt)


def classification_metrics(
    task: str, dataset: D.ViltDataset, predictions: dict[int, int]
) -> dict[str, float]:
    """vqa / nlvr2 metrics from {dataset index: predicted class}."""
    index = torch.tensor(sorted(predictions))
    predicted = torch.tensor([predictions[i] for i in index.tolist()])
    if task == "nlvr2":
        return {
            "accuracy": accuracy(predicted, torch.tensor([dataset.examples[i].label for i in index.tolist()]))
        }
    targets = torch.stack([dataset.target(dataset.examples[i]) for i in index.tolist()])  # (N, num_labels)
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


def selection_metric(task: str, metrics: dict[str, float]) -> float:
    """The validation number the best checkpoint is chosen by (higher is better)."""
    if task == "vqa":
        return metrics.get("vqa_accuracy", metrics["vqa_score"])
    if task == "retrieval":
        return metrics["ir_r1"] + metrics["tr_r1"]
    if task == "pretrain":
        return metrics["mlm_accuracy"] + metrics["itm_accuracy"]
    return metrics["accuracy"]


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
    model = MODEL_CLASSES[args.task].from_pretrained(model_name, torch_dtype=torch.float32).to(env.device)
    set_attention(model, args.attention)
    processor = ViltProcessor.from_pretrained(model_name)
    answers = (
        [model.config.id2label[i] for i in range(model.config.num_labels)] if args.task == "vqa" else None
    )
    issues = D.DataIssues(args.strict)
    source = args.data_source()
    with through_progress_bars():
        dataset = build_dataset(
            read_split(source, args.split),
            args.task,
            processor,
            answers,
            issues,
            cache_images=args.cache_images,
        )
        if args.split == "val":
            _check_validation_split(model_name, source.absolute(), len(dataset))
        collator = D.Collator(processor.tokenizer, args.task, args.max_text_length)
        spec = MaskingSpec.from_tokenizer(processor.tokenizer) if args.task == "pretrain" else None
        evaluator = Evaluator(
            dataset,
            collator,
            args.task,
            args.eval_batch_size,
            args.num_workers,
            args.bf16,
            args.seed,
            env,
            spec,
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
