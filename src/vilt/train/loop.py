"""The training loop: one readable path from a laptop CPU to many GPUs (``torchrun``).

``train(args)`` reads the data, builds the model and optimizer, then for each optimizer step:
accumulates gradients over ``grad_accum`` micro-batches under bfloat16 autocast, clips them, steps
AdamW and the linear warmup/decay schedule, logs, evaluates on the validation split every
``eval_every`` steps (keeping the best model in ``output_dir/best``), and writes an atomic resumable
checkpoint (``output_dir/last.pt``: model, optimizer, scheduler, RNG states and data position).
Killed at any point, ``train(args)`` with the same ``output_dir`` resumes exactly where the last
checkpoint left off. Under ``torchrun`` every process runs this same function (DDP, NCCL on GPU and
gloo on CPU); the data is split by ``DistributedSampler`` and evaluation is sharded and gathered.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .. import heads
from ..configuration import ViltConfig
from ..devices import DTYPE_NAMES, DTYPES, parse_dtype
from ..files import atomic_directory, atomic_write
from ..image_processing import ViltImageProcessor
from ..processing import ViltProcessor
from . import data as D
from .metrics import accuracy, recall_at_k, retrieval_scores, vqa_accuracy
from .objectives import MaskingSpec, ViltForPreTraining, model_inputs, pretraining_inputs

log = logging.getLogger("vilt.train")

# ----------------------------------------------------------------------------- arguments


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help (shown by ``vilt train --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainArgs:
    """Every option of ``vilt train`` / ``vilt evaluate`` (flags or a YAML/TOML config file)."""

    # --- task and data ---
    task: str = _opt("vqa", "vqa | nlvr2 | retrieval | pretrain")
    dataset: str = _opt(
        "easy-vqa", "easy-vqa | vqav2 | nlvr2 | karpathy | jsonl (pretrain on easy-vqa uses captions)"
    )
    train_data: str = _opt("", "training file(s); vqav2: 'questions.json,annotations.json'")
    val_data: str = _opt("", "validation file(s); empty: hold out --val-fraction of the training images")
    test_data: str = _opt("", "test file(s), used only by `vilt evaluate --split test`")
    image_root: str = _opt(
        "", "folder of the images (vqav2, nlvr2, karpathy; jsonl: default the file's folder)"
    )
    answers: str = _opt(
        "", "answer vocabulary file (JSON list/id2label, or one per line); default: from the data"
    )
    val_fraction: float = _opt(
        0.1, "share of training images held out for validation when there is no val data"
    )
    train_fraction: float = _opt(1.0, "train on this random share of the training examples (e.g. 0.05)")
    strict: bool = _opt(
        False, "raise on bad data (missing images, unknown answers, empty texts) instead of skipping"
    )
    # --- model ---
    init: str = _opt("", "start from this model directory or hub id; empty: a new model of the size below")
    output_dir: str = _opt("runs/vilt", "checkpoints, logs and the best model (output_dir/best)")
    image_size: int = _opt(384, "new model: side of the position-embedding grid, in pixels")
    patch_size: int = _opt(32, "new model: patch side, in pixels")
    hidden_size: int = _opt(768, "new model: width")
    num_layers: int = _opt(12, "new model: transformer layers")
    num_heads: int = _opt(12, "new model: attention heads")
    intermediate_size: int = _opt(3072, "new model: MLP width")
    initializer_range: float = _opt(0.02, "new model: std of the normal weight init")
    shortest_edge: int = _opt(384, "new processor: resize images so their shorter side is this")
    max_text_length: int = _opt(40, "truncate texts to this many tokens")
    # --- optimisation ---
    epochs: float = _opt(10.0, "passes over the training data")
    max_steps: int = _opt(0, "stop after this many optimizer steps (0: use --epochs)")
    max_minutes: float = _opt(0.0, "stop early once training has run this many minutes (0: no limit)")
    batch_size: int = _opt(32, "examples per micro-batch per process")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    lr: float = _opt(1e-4, "peak learning rate")
    head_lr_mult: float = _opt(0.0, "learning-rate multiplier of the task head (0: 10 for vqa, 1 otherwise)")
    weight_decay: float = _opt(0.01, "AdamW weight decay (none on biases and norms)")
    beta2: float = _opt(0.98, "AdamW beta2 (beta1 is 0.9)")
    warmup: float = _opt(0.1, "warmup steps: a fraction of the total (< 1) or a count")
    max_grad_norm: float = _opt(1.0, "clip gradients to this norm (0: no clipping)")
    bf16: bool = _opt(True, "bfloat16 autocast")
    grad_checkpointing: bool = _opt(False, "recompute activations in backward to save memory")
    randaugment: bool = _opt(False, "RandAugment (N=2, M=9) on training images, as the paper's fine-tuning")
    randaugment_magnitude: int = _opt(9, "RandAugment magnitude M, 0 to 30")
    randaugment_ops: str = _opt("", "comma-separated RandAugment operations to draw from (default: all 14)")
    negatives: int = _opt(15, "retrieval: random negative captions per image")
    wpa: bool = _opt(True, "pretrain: add the word-patch alignment loss")
    attention: str = _opt(
        "auto", "auto | eager | sdpa (auto: eager on CPU, where its bf16 backward is faster)"
    )
    # --- bookkeeping ---
    eval_every: int = _opt(0, "validate every this many steps (0: once per epoch)")
    save_every: int = _opt(0, "write the resumable checkpoint every this many steps (0: at each validation)")
    log_every: int = _opt(20, "log the training loss every this many steps")
    eval_batch_size: int = _opt(128, "examples per evaluation batch")
    num_workers: int = _opt(0, "data-loading worker processes")
    cache_images: bool = _opt(True, "preprocess each image once and keep it in memory (small datasets)")
    seed: int = _opt(0, "random seed")
    threads: int = _opt(0, "torch CPU threads per process (0: torch's default)")
    device: str = _opt("auto", "auto | cpu | cuda")
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs the tensorboard package)")
    save_dtype: str = _opt("float32", "dtype of the weights in output_dir/best: float32 | float16 | bfloat16")
    split: str = _opt("test", "vilt evaluate: the split to evaluate, val or test")
    metrics_file: str = _opt("", "vilt evaluate: also write the metrics JSON here")

    def validate(self) -> None:
        if self.task not in D.TASKS:
            raise ValueError(f"--task must be one of {', '.join(D.TASKS)}, got {self.task!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset != "easy-vqa" and not self.train_data and not self.init:
            raise ValueError(f"--dataset {self.dataset} needs --train-data")
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if self.attention not in ("auto", "eager", "sdpa"):
            raise ValueError(f"--attention must be auto, eager or sdpa, got {self.attention!r}")
        if self.save_dtype not in DTYPES:
            raise ValueError(f"--save-dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.save_dtype!r}")
        if self.split not in ("val", "test"):
            raise ValueError(f"--split must be val or test, got {self.split!r}")


DATASETS = ("easy-vqa", "vqav2", "nlvr2", "karpathy", "jsonl")
MODEL_CLASSES = {
    "vqa": heads.ViltForQuestionAnswering,
    "nlvr2": heads.ViltForImagesAndTextClassification,
    "retrieval": heads.ViltForImageAndTextRetrieval,
    "pretrain": ViltForPreTraining,
}

# ----------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """This process's place in the job (world 1 when not under torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        where = torch.device("cuda", local)
    else:
        where = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, where)


def gather(obj: Any, env: Dist) -> list[Any]:
    """Every process's ``obj``, in rank order."""
    if env.world == 1:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- data


def _files(spec: str) -> list[str]:
    return [p.strip() for p in spec.split(",") if p.strip()]


def read_split(args: TrainArgs, split: str) -> list[D.Example]:
    """The examples of ``split`` ("train", "val" or "test") for ``args.dataset`` and ``args.task``."""
    if args.dataset == "easy-vqa":
        if split == "test":
            examples = D.read_easy_vqa("test")
        else:
            train, val = D.split_holdout(D.read_easy_vqa("train"), args.val_fraction, args.seed)
            examples = train if split == "train" else val
        return D.easy_vqa_captions(examples) if args.task == "pretrain" else examples
    spec = {"train": args.train_data, "val": args.val_data, "test": args.test_data}[split]
    if split == "val" and not spec:
        train, val = D.split_holdout(read_split(args, "train"), args.val_fraction, args.seed)
        return val
    if not spec:
        raise ValueError(f"no {split} data: pass --{split}-data")
    files = _files(spec)
    if args.dataset == "vqav2":
        return D.read_vqav2(files[0], files[1] if len(files) > 1 else None, args.image_root)
    if args.dataset == "nlvr2":
        return D.read_nlvr2(files[0], args.image_root)
    if args.dataset == "karpathy":
        return D.read_karpathy(files[0], split, args.image_root)
    return D.read_jsonl(files[0], args.image_root or None)


def training_examples(args: TrainArgs) -> list[D.Example]:
    """The training split, minus the validation hold-out, subsampled by ``train_fraction``."""
    examples = read_split(args, "train")
    if not args.val_data and args.dataset != "easy-vqa":
        examples, _ = D.split_holdout(examples, args.val_fraction, args.seed)
    if args.train_fraction < 1:
        keep = sorted(
            random.Random(args.seed).sample(range(len(examples)), round(args.train_fraction * len(examples)))
        )
        examples = [examples[i] for i in keep]
    return examples


def answer_vocab(args: TrainArgs, train: list[D.Example]) -> list[str]:
    """The VQA answer vocabulary: the user's file, easy-VQA's 13 answers, or built from the data."""
    if args.answers:
        return D.load_answer_vocab(args.answers)
    if args.dataset == "easy-vqa":
        return D.easy_vqa_answers()
    if args.dataset == "vqav2":
        annotations = [_files(s)[1] for s in (args.train_data, args.val_data) if len(_files(s)) > 1]
        return D.vqav2_answer_vocab(annotations)
    return D.build_answer_vocab(
        [max(ex.answer_scores, key=ex.answer_scores.get) for ex in train if ex.answer_scores], 1
    )


def build_dataset(
    args: TrainArgs,
    examples: list[D.Example],
    processor: ViltProcessor,
    answers: list[str] | None,
    issues: D.DataIssues,
    training: bool,
) -> D.ViltDataset:
    """Examples -> :class:`~vilt.train.data.ViltDataset`, images preprocessed once when cached."""
    augment = None
    if training and args.randaugment:
        from .randaugment import RandAugment

        augment = RandAugment(m=args.randaugment_magnitude, operations=_files(args.randaugment_ops) or None)
    loader = D.ImageLoader(processor.image_processor, cache=args.cache_images, augment=augment)
    dataset = D.ViltDataset(
        examples,
        args.task,
        loader,
        issues,
        answers=answers,
        negatives=args.negatives if training and args.task == "retrieval" else 0,
        seed=args.seed,
    )
    dataset.drop_unreadable(loader.preload(dataset.image_paths()))
    return dataset


# ----------------------------------------------------------------------------- model and optimizer


def new_processor(args: TrainArgs) -> ViltProcessor:
    """A processor whose images fit a new model: shorter side ``shortest_edge``, sides multiple of the patch."""
    image_processor = ViltImageProcessor(
        size={"shortest_edge": args.shortest_edge}, size_divisor=args.patch_size
    )
    return ViltProcessor(image_processor=image_processor)


def build_model(args: TrainArgs, answers: list[str] | None) -> torch.nn.Module:
    """The task model: loaded from ``args.init``, or new with the size in ``args``."""
    cls = MODEL_CLASSES[args.task]
    labels: dict[str, Any] = {}
    if args.task == "vqa":
        labels = {"id2label": dict(enumerate(answers or []))}
    elif args.task == "nlvr2":
        labels = {"num_labels": 2, "num_images": 2, "modality_type_vocab_size": 3}
    if args.init:
        return cls.from_pretrained(args.init, ignore_mismatched_sizes=True, **labels)
    config = ViltConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        initializer_range=args.initializer_range,
        max_position_embeddings=args.max_text_length,
        **labels,
    )
    return cls(config)


def build_optimizer(model: torch.nn.Module, args: TrainArgs, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the original's four groups: (encoder | head) x (decayed | no decay on biases and norms)."""
    head_mult = args.head_lr_mult or (10.0 if args.task == "vqa" else 1.0)
    no_decay = model.no_weight_decay()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((not name.startswith("vilt."), name in no_decay), []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": args.lr * (head_mult if head else 1),
            "weight_decay": 0.0 if nd else args.weight_decay,
        }
        for (head, nd), params in sorted(groups.items())
    ]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, args.beta2), eps=1e-8, fused=fused)


def linear_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_dir(
    model: torch.nn.Module, processor: ViltProcessor, directory: Path, metrics: dict[str, float], dtype: str
) -> None:
    """Write a loadable model directory (weights in ``dtype``, config, processor, metrics), all or nothing."""
    target = parse_dtype(dtype)
    with atomic_directory(directory, keep_old=lambda name: False) as staging:
        (copy.deepcopy(model).to(target) if target != torch.float32 else model).save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


# ----------------------------------------------------------------------------- logging


class RunLog:
    """The CSV log (``log.csv``: elapsed_s, step, epoch, split, metric, value), optionally TensorBoard."""

    columns = ["elapsed_s", "step", "epoch", "split", "metric", "value"]

    def __init__(self, output_dir: Path, enabled: bool, resume_step: int, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = output_dir / "log.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if resume_step and self.path.exists():  # drop what the killed run logged after its checkpoint
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as fh:
            out = csv.DictWriter(fh, self.columns)
            out.writeheader()
            out.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from err

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, elapsed: float, step: int, epoch: float, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as fh:
            out = csv.writer(fh)
            for name, value in metrics.items():
                out.writerow([f"{elapsed:.1f}", step, f"{epoch:.3f}", split, name, f"{value:.6g}"])
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"{split}/{name}", value, step)


def setup_logging(output_dir: Path | None, main: bool) -> None:
    """Log INFO lines to stderr (main process only) and to ``output_dir/train.log``."""
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.handlers.clear()
    log.propagate = False
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if output_dir is not None and main:
        handlers.append(logging.FileHandler(output_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)


# ----------------------------------------------------------------------------- evaluation


def _autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: D.ViltDataset,
    collator: D.Collator,
    args: TrainArgs,
    env: Dist,
    spec: MaskingSpec | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset``; the work is sharded over the processes and gathered.

    vqa: accuracy (argmax = the best-scored answer), vqa_score (the soft score of the prediction) and,
    with annotators' answers, the official vqa_accuracy; nlvr2: accuracy; retrieval: recall@1/5/10 both
    ways; pretrain: the losses and the MLM and ITM accuracies.
    """
    model.eval()
    if args.task == "retrieval":
        return _evaluate_retrieval(model, dataset, collator, args, env)
    shard = list(range(env.rank, len(dataset), env.world))
    loader = DataLoader(
        dataset, args.eval_batch_size, sampler=shard, collate_fn=collator, num_workers=args.num_workers
    )
    batches = (
        b for b in tqdm(loader, desc="evaluating", disable=not env.main, leave=False) if "input_ids" in b
    )
    if args.task == "pretrain":
        return _evaluate_pretraining(model, batches, spec, args, env)  # type: ignore[arg-type]
    rows: list[tuple[int, int]] = []
    for batch in batches:
        inputs = {k: v for k, v in model_inputs(args.task, batch).items() if k != "labels"}
        with _autocast(env.device, args.bf16):
            logits = model(**_to(inputs, env.device)).logits  # (B, num_labels)
        rows += zip(batch["index"].tolist(), logits.argmax(-1).cpu().tolist())
    predictions = dict(row for part in gather(rows, env) for row in part)
    return _classification_metrics(args.task, dataset, predictions)


def _evaluate_pretraining(
    model: torch.nn.Module, batches: Iterator[dict[str, Any]], spec: MaskingSpec, args: TrainArgs, env: Dist
) -> dict[str, float]:
    """Pretraining losses and MLM / ITM accuracies, with masks and negatives drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(args.seed)  # the same masks and negatives every evaluation
    sums: Counter[str] = Counter()
    for batch in batches:
        inputs = pretraining_inputs(batch, spec, generator)
        with _autocast(env.device, args.bf16):
            out = model(**_to(inputs, env.device))
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
    for part in gather(sums, env):
        total.update(part)
    n = max(1, total["examples"])
    return {
        "loss": total["loss"] / n,
        "mlm_loss": total["mlm_loss"] / n,
        "itm_loss": total["itm_loss"] / n,
        "mlm_accuracy": total["mlm_hits"] / max(1, total["masked"]),
        "itm_accuracy": total["itm_hits"] / n,
    }


def _classification_metrics(
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


def _evaluate_retrieval(
    model: torch.nn.Module, dataset: D.ViltDataset, collator: D.Collator, args: TrainArgs, env: Dist
) -> dict[str, float]:
    """Recall@K: every image scored against every text; images are split over the processes."""
    image_of_group: dict[str, str] = {}  # each image once, in order of appearance
    for ex in dataset.examples:
        image_of_group.setdefault(ex.group, ex.images[0])
    group_index = {g: i for i, g in enumerate(image_of_group)}
    text_image = torch.tensor([group_index[ex.group] for ex in dataset.examples])  # (N_txt,)
    texts = collator.tokenizer(
        [ex.text for ex in dataset.examples], padding="longest", truncation=True,
        max_length=args.max_text_length, return_tensors="pt",
    )  # fmt: skip
    mine = list(range(env.rank, len(group_index), env.world))
    paths = list(image_of_group.values())
    pixels = [dataset.images.load(paths[i]) for i in mine]
    with _autocast(env.device, args.bf16):
        scores = retrieval_scores(model, pixels, dict(texts), args.eval_batch_size, progress=env.main)
    rows = {i: row for part in gather(list(zip(mine, scores)), env) for i, row in part}
    return recall_at_k(torch.stack([rows[i] for i in range(len(paths))]), text_image)  # (N_img, N_txt) scores


def selection_metric(task: str, metrics: dict[str, float]) -> float:
    """The validation number the best checkpoint is chosen by (higher is better)."""
    if task == "vqa":
        return metrics.get("vqa_accuracy", metrics["vqa_score"])
    if task == "retrieval":
        return metrics["ir_r1"] + metrics["tr_r1"]
    if task == "pretrain":
        return metrics["mlm_accuracy"] + metrics["itm_accuracy"]
    return metrics["accuracy"]


# ----------------------------------------------------------------------------- training


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    best: float = -math.inf
    elapsed: float = 0.0  # seconds of training so far, over all resumed runs
    skipped: Counter[str] = field(default_factory=Counter)


def epoch_batches(
    dataset: D.ViltDataset, collator: D.Collator, args: TrainArgs, env: Dist, epoch: int, start: int
) -> Iterator[dict[str, Any]]:
    """This process's micro-batches of ``epoch`` from micro-batch ``start`` on (exact resume)."""
    sampler = DistributedSampler(dataset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=args.seed)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    order = list(sampler)[start * args.batch_size :]
    loader = DataLoader(
        dataset,
        args.batch_size,
        sampler=order,
        collate_fn=collator,
        num_workers=args.num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed + epoch),  # keeps the global RNG untouched
    )
    return iter(loader)


def train(args: TrainArgs) -> dict[str, float]:
    """Train per ``args``; returns the best validation metrics. See the module docstring."""
    args.validate()
    env = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output_dir)
    if env.main:
        output.mkdir(parents=True, exist_ok=True)
    if env.world > 1:
        dist.barrier()
    setup_logging(output, env.main)
    started = time.time()
    random.seed(args.seed + env.rank)
    np.random.seed(args.seed + env.rank)
    torch.manual_seed(args.seed)  # the same initial weights in every process

    # --- data ---
    issues = D.DataIssues(args.strict)
    train_examples = training_examples(args)
    answers = answer_vocab(args, train_examples) if args.task == "vqa" else None
    processor = (
        ViltProcessor.from_pretrained(args.init)
        if args.init and _has_processor(args.init)
        else new_processor(args)
    )
    collator = D.Collator(processor.tokenizer, args.task, args.max_text_length)
    train_set = build_dataset(args, train_examples, processor, answers, issues, training=True)
    val_set = build_dataset(args, read_split(args, "val"), processor, answers, issues, training=False)
    spec = MaskingSpec.from_tokenizer(processor.tokenizer) if args.task == "pretrain" else None
    log.info("data: %d train, %d val examples; skipped: %s", len(train_set), len(val_set), issues.summary())

    # --- model, optimizer, schedule ---
    model = build_model(args, answers).to(env.device)
    model_core = model
    _set_attention(model, args, env.device)
    model.set_grad_checkpointing(args.grad_checkpointing)
    optimizer = build_optimizer(model, args, env.device)
    per_epoch = len(train_set) // (args.batch_size * env.world) // args.grad_accum  # optimizer steps
    if per_epoch < 1:
        raise ValueError(
            f"{len(train_set)} training examples are fewer than one optimizer step "
            f"(batch {args.batch_size} x {env.world} processes x {args.grad_accum} accumulation)"
        )
    total = args.max_steps or math.ceil(args.epochs * per_epoch)
    warmup = int(args.warmup * total) if args.warmup < 1 else int(args.warmup)
    scheduler = linear_schedule(optimizer, warmup, total)
    if env.world > 1:
        model = DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    log.info(
        "model: %s, %.1fM parameters; %d steps (%d per epoch), warmup %d, %d process(es)",
        type(model_core).__name__, model_core.num_parameters() / 1e6, total, per_epoch, warmup, env.world,
    )  # fmt: skip

    # --- resume ---
    progress = Progress()
    checkpoint = output / "last.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=env.device, weights_only=False)
        model_core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = state["progress"]
        set_rng_state(state["rng"][env.rank])
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            checkpoint,
            progress.step,
            progress.epoch,
            progress.batch_in_epoch,
        )
    run_log = RunLog(output, env.main, progress.step, args.tensorboard)
    eval_every = args.eval_every or per_epoch
    save_every = args.save_every or eval_every

    def save_checkpoint() -> None:
        states = gather(rng_state(), env)
        if env.main:
            progress.elapsed = elapsed()
            state = {
                "model": model_core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "progress": progress,
                "rng": states,
                "args": asdict(args),
            }
            atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))

    session_start = time.time()
    resumed_elapsed = progress.elapsed

    def elapsed() -> float:
        return resumed_elapsed + time.time() - session_start

    # --- the loop ---
    bar = tqdm(total=total, initial=progress.step, desc="training", disable=not env.main, dynamic_ncols=True)
    losses: list[float] = []
    model.train()
    while progress.step < total:
        batches = epoch_batches(train_set, collator, args, env, progress.epoch, progress.batch_in_epoch)
        while (
            progress.step < total and progress.batch_in_epoch + args.grad_accum <= per_epoch * args.grad_accum
        ):
            loss = _optimizer_step(model, batches, optimizer, args, env, spec, progress)
            scheduler.step()
            progress.step += 1
            if args.max_minutes and any(gather(elapsed() > 60 * args.max_minutes, env)):
                log.info(
                    "stopping at step %d: the --max-minutes budget (%g) is spent",
                    progress.step,
                    args.max_minutes,
                )
                total = progress.step  # this step is the last: log, validate and save it
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            epoch_float = progress.epoch + progress.batch_in_epoch / (per_epoch * args.grad_accum)
            if progress.step % args.log_every == 0 or progress.step == total:
                mean_loss = sum(gather(sum(losses) / len(losses), env)) / env.world
                run_log.write(
                    elapsed(),
                    progress.step,
                    epoch_float,
                    "train",
                    {"loss": mean_loss, "lr": scheduler.get_last_lr()[0]},
                )
                losses = []
            if progress.step % eval_every == 0 or progress.step == total:
                metrics = evaluate_model(model_core, val_set, collator, args, env, spec)
                model.train()
                run_log.write(elapsed(), progress.step, epoch_float, "val", metrics)
                log.info("step %d epoch %.2f val %s", progress.step, epoch_float, _fmt(metrics))
                score = selection_metric(args.task, metrics)
                if score > progress.best:
                    progress.best = score
                    if env.main:
                        best_metrics = {**metrics, "step": progress.step}
                        save_model_dir(model_core, processor, output / "best", best_metrics, args.save_dtype)
                        log.info("new best (%.4f) saved to %s", score, output / "best")
            if progress.step % save_every == 0 or progress.step == total:
                save_checkpoint()
        if progress.step < total:
            progress.epoch += 1
            progress.batch_in_epoch = 0
    bar.close()
    skipped = Counter()
    for part in gather(progress.skipped, env):
        skipped.update(part)
    issues.update(skipped)
    log.info("skipped examples: %s", issues.summary())
    log.info(
        "training finished: %d steps in %.1f s (%.1f min) wall, including data preparation",
        total,
        time.time() - started + resumed_elapsed,
        (time.time() - started + resumed_elapsed) / 60,
    )
    best = json.loads((output / "best" / "metrics.json").read_text()) if (output / "best").exists() else {}
    if env.world > 1:
        dist.barrier()
    return best


def _optimizer_step(
    model: torch.nn.Module,
    batches: Iterator[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    args: TrainArgs,
    env: Dist,
    spec: MaskingSpec | None,
    progress: Progress,
) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
    total = 0.0
    for micro in range(args.grad_accum):
        batch = next(batches)
        progress.batch_in_epoch += 1
        progress.skipped.update(batch["skipped"])
        last = micro == args.grad_accum - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext()
        with sync:
            if "input_ids" not in batch:  # every example of this micro-batch was unreadable
                continue
            with _autocast(env.device, args.bf16):
                loss = model(**_to(model_inputs(args.task, batch, spec), env.device)).loss
            (loss / args.grad_accum).backward()
        total += loss.item() / args.grad_accum
    if args.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _set_attention(model: torch.nn.Module, args: TrainArgs, device: torch.device) -> None:
    name = args.attention if args.attention != "auto" else ("eager" if device.type == "cpu" else "sdpa")
    model.vilt.set_attn_implementation(name)


def _has_processor(path: str) -> bool:
    return (Path(path) / "preprocessor_config.json").exists() or not Path(path).exists()


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


# ----------------------------------------------------------------------------- evaluate


def evaluate(args: TrainArgs) -> dict[str, float]:
    """Evaluate the model in ``args.init`` on ``args.split``; what ``vilt evaluate`` runs."""
    args.validate()
    if not args.init:
        raise ValueError("vilt evaluate needs --model (a model directory or hub id)")
    env = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging(None, env.main)
    started = time.time()
    model = MODEL_CLASSES[args.task].from_pretrained(args.init, torch_dtype=torch.float32).to(env.device)
    _set_attention(model, args, env.device)
    processor = ViltProcessor.from_pretrained(args.init)
    answers = (
        [model.config.id2label[i] for i in range(model.config.num_labels)] if args.task == "vqa" else None
    )
    issues = D.DataIssues(args.strict)
    dataset = build_dataset(args, read_split(args, args.split), processor, answers, issues, training=False)
    collator = D.Collator(processor.tokenizer, args.task, args.max_text_length)
    spec = MaskingSpec.from_tokenizer(processor.tokenizer) if args.task == "pretrain" else None
    metrics = evaluate_model(model, dataset, collator, args, env, spec)
    log.info(
        "evaluated %s on %s %s (%d examples) in %.1f s; skipped: %s",
        args.init,
        args.dataset,
        args.split,
        len(dataset),
        time.time() - started,
        issues.summary(),
    )
    if args.metrics_file and env.main:
        Path(args.metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def args_from_dict(values: dict[str, Any]) -> TrainArgs:
    """TrainArgs from a dict (a config file), rejecting unknown keys with the list of known ones."""
    known = {f.name for f in fields(TrainArgs)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; known options: {', '.join(sorted(known))}")
    return TrainArgs(**values)
