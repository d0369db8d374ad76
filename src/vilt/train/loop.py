"""The training loop: one readable path from a laptop CPU to many GPUs (``torchrun``).

``train(args)`` reads the data, builds the model and optimizer, then for each optimizer step:
accumulates gradients over ``grad_accum`` micro-batches under bfloat16 autocast, clips them, steps
AdamW and the linear warmup/decay schedule, logs, evaluates on the validation split every
``eval_every`` steps (keeping the best model in ``output_dir/best``), and writes a resumable checkpoint
(``output_dir/last.pt``, see :mod:`vilt.train.checkpoints`). Killed at any point, ``train(args)`` with the
same ``output_dir`` resumes exactly where the last checkpoint left off; stopped by Ctrl-C or SIGTERM, it
first saves a checkpoint of the step it finished (:mod:`vilt.train.interrupts`). Under ``torchrun``
every process runs this same function (DDP, NCCL on GPU and gloo on CPU); the data is split by
``DistributedSampler`` and evaluation is sharded and gathered.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..errors import ViltInputError
from ..modeling import ViltPreTrainedModel
from ..processing import ViltProcessor
from . import data as D
from .checkpoints import (
    Checkpoints,
    Progress,
    load_training_state,
    restore,
    rng_state,
    save_model_dir,
    training_state,
)
from .datasets import answer_vocab, build_dataset, randaugment, read_split, training_examples
from .distributed import Dist, any_process, autocast, barrier, gather, setup_distributed, to_device
from .evaluation import Evaluator
from .interrupts import StopSignals, TrainingInterrupted, ignore_interrupts
from .logs import RunLog, format_metrics, setup_logging, through_progress_bars
from .models import build_model, load_processor, set_attention
from .objectives import MaskingSpec
from .optimization import build_optimizer, linear_schedule, warmup_steps
from .settings import TrainArgs, training_data_record
from .tasks import TrainingTask, training_task

log = logging.getLogger(__name__)


def train(args: TrainArgs) -> dict[str, float]:
    """Train per ``args``; returns the best validation metrics. See the module docstring.

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM arrived; the checkpoint holds the last step done.
        ViltInputError: an option, the data or the output directory's checkpoint cannot be used.
    """
    args.validate()
    env = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output_dir)
    if env.main:
        output.mkdir(parents=True, exist_ok=True)
    barrier(env)
    setup_logging(output, env.main)
    started = time.time()
    checkpoints = Checkpoints(output)
    resumed = load_training_state(checkpoints, env)  # first: a bad checkpoint stops before data is read
    random.seed(args.seed + env.rank)
    np.random.seed(args.seed + env.rank)
    torch.manual_seed(args.seed)  # the same initial weights in every process

    with through_progress_bars():
        # --- data ---
        task = training_task(args.task)
        source = args.data_source()
        issues = D.DataIssues(args.strict)
        train_examples = training_examples(source, args.train_fraction)
        answers = answer_vocab(source, args.answers, train_examples) if task.needs_answers else None
        processor = load_processor(args.init, args.shortest_edge, args.patch_size)
        collator = D.Collator(processor.tokenizer, task, args.max_text_length)
        train_set = build_dataset(
            train_examples, task, processor, answers, issues, cache_images=args.cache_images,
            augment=randaugment(args.randaugment_magnitude, args.randaugment_ops) if args.randaugment else None,
            negatives=args.negatives, seed=args.seed,
        )  # fmt: skip
        val_set = build_dataset(
            read_split(source, "val"), task, processor, answers, issues,
            cache_images=args.cache_images, seed=args.seed,
        )  # fmt: skip
        spec = task.masking(processor.tokenizer)
        evaluator = Evaluator(
            val_set, collator, task, args.eval_batch_size, args.num_workers, args.bf16, args.seed, env, spec
        )  # fmt: skip
        log.info(
            "data: %d train, %d val examples; skipped: %s", len(train_set), len(val_set), issues.summary()
        )

        # --- model, optimizer, schedule ---
        model = build_model(task, answers, args.init, args.new_model_config()).to(env.device)
        set_attention(model, args.attention)
        model.set_grad_checkpointing(args.grad_checkpointing)
        optimizer = build_optimizer(
            model, args.lr, args.weight_decay, args.beta2, args.head_lr_multiplier(), env.device
        )
        per_epoch = steps_per_epoch(len(train_set), args.batch_size, env.world, args.grad_accum)
        total = args.max_steps or math.ceil(args.epochs * per_epoch)
        warmup = warmup_steps(args.warmup, total)
        scheduler = linear_schedule(optimizer, warmup, total)
        log.info(
            "model: %s, %.1fM parameters; %d steps (%d per epoch), warmup %d, %d process(es)",
            type(model).__name__, model.num_parameters() / 1e6, total, per_epoch, warmup, env.world,
        )  # fmt: skip

        # --- resume ---
        progress = Progress()
        if resumed is not None:
            path, state = resumed
            progress = restore(state, path, model, optimizer, scheduler, env)
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                path, progress.step, progress.epoch, progress.batch_in_epoch,
            )  # fmt: skip
            del resumed, state
        step_model: torch.nn.Module = model
        if env.world > 1:
            step_model = DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
        run = Run(
            model=model,
            step_model=step_model,
            optimizer=optimizer,
            scheduler=scheduler,
            progress=progress,
            checkpoints=checkpoints,
            run_log=RunLog(output, env.main, progress.step, args.tensorboard),
            clock=Clock(progress.elapsed),
            env=env,
            args=args,
            task=task,
            spec=spec,
            evaluator=evaluator,
            processor=processor,
            training_data=training_data_record(source, len(val_set)),
        )

        # --- the loop ---
        eval_every = args.eval_every or per_epoch
        save_every = args.save_every or eval_every
        losses: list[float] = []
        step_model.train()
        with (
            StopSignals(announce=env.main) as signals,
            tqdm(
                total=total, initial=progress.step, desc="training", disable=not env.main, dynamic_ncols=True
            ) as bar,
        ):
            while progress.step < total:
                batches = epoch_batches(
                    train_set, collator, env, args.batch_size, args.num_workers, args.seed,
                    progress.epoch, progress.batch_in_epoch,
                )  # fmt: skip
                while progress.step < total and progress.batch_in_epoch < per_epoch * args.grad_accum:
                    losses.append(run.optimizer_step(batches))
                    if args.max_minutes and any_process(run.clock.elapsed() > 60 * args.max_minutes, env):
                        log.info(
                            "stopping at step %d: the --max-minutes budget (%g) is spent",
                            progress.step,
                            args.max_minutes,
                        )
                        total = progress.step  # this step is the last: log, validate and save it
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                    epoch = progress.epoch + progress.batch_in_epoch / (per_epoch * args.grad_accum)
                    if progress.step % args.log_every == 0 or progress.step == total:
                        run.log_training(losses, epoch)
                        losses = []
                    if progress.step % eval_every == 0 or progress.step == total:
                        run.validate(epoch)
                    saved = progress.step % save_every == 0 or progress.step == total
                    if saved:
                        run.save_checkpoint()
                    if progress.step < total and any_process(signals.received is not None, env):
                        raise run.stop_on_signal(signals.received, saved)
                if progress.step < total:
                    progress.epoch += 1
                    progress.batch_in_epoch = 0

        skipped: Counter[str] = Counter()
        for part in gather(progress.skipped, env):
            skipped.update(part)
        issues.update(skipped)
        log.info("skipped examples: %s", issues.summary())
        wall = time.time() - started + run.clock.before
        log.info(
            "training finished: %d steps in %.1f s (%.1f min) wall, including data preparation",
            total, wall, wall / 60,
        )  # fmt: skip
    best = json.loads((output / "best" / "metrics.json").read_text()) if (output / "best").exists() else {}
    barrier(env)
    return best


def steps_per_epoch(examples: int, batch_size: int, world: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over ``examples``; at least one, else a clear error."""
    per_epoch = examples // (batch_size * world) // grad_accum
    if per_epoch < 1:
        raise ViltInputError(
            f"{examples} training examples are fewer than one optimizer step "
            f"(batch {batch_size} x {world} processes x {grad_accum} accumulation)"
        )
    return per_epoch


def epoch_batches(
    dataset: D.ViltDataset,
    collator: D.Collator,
    env: Dist,
    batch_size: int,
    num_workers: int,
    seed: int,
    epoch: int,
    start: int,
) -> Iterator[dict[str, Any]]:
    """This process's micro-batches of ``epoch`` from micro-batch ``start`` on (exact resume)."""
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    order = list(sampler)[start * batch_size :]
    loader = DataLoader(
        dataset,
        batch_size,
        sampler=order,
        collate_fn=collator,
        num_workers=num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed + epoch),  # keeps the global RNG untouched
        worker_init_fn=ignore_interrupts if num_workers else None,
    )
    return iter(loader)


class Clock:
    """Seconds of training over all resumed runs: those before this session, plus this session's."""

    def __init__(self, before: float) -> None:
        self.before = before
        self.start = time.time()

    def elapsed(self) -> float:
        return self.before + time.time() - self.start


@dataclass
class Run:
    """What the loop advances: the model, its optimizer and schedule, the progress, and where they go."""

    model: ViltPreTrainedModel  # the bare model: evaluated, saved and checkpointed
    step_model: torch.nn.Module  # what runs forward and backward: the DDP wrapper, or the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    progress: Progress
    checkpoints: Checkpoints
    run_log: RunLog
    clock: Clock
    env: Dist
    args: TrainArgs
    task: TrainingTask  # what the batches feed and the validation selects by
    spec: MaskingSpec | None  # pretraining's masking
    evaluator: Evaluator  # on the validation split
    processor: ViltProcessor  # saved with the best model
    training_data: dict[str, Any]  # the data and validation split, saved with the best model

    def optimizer_step(self, batches: Iterator[dict[str, Any]]) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        accum, device = self.args.grad_accum, self.env.device
        total = 0.0
        for micro in range(accum):
            batch = next(batches)
            self.progress.batch_in_epoch += 1
            self.progress.skipped.update(batch["skipped"])
            last = micro == accum - 1
            ddp = self.step_model if isinstance(self.step_model, DistributedDataParallel) else None
            with ddp.no_sync() if ddp is not None and not last else nullcontext():
                if "input_ids" not in batch:  # every example of this micro-batch was unreadable
                    continue
                with autocast(device, self.args.bf16):
                    loss = self.step_model(**to_device(self.task.model_inputs(batch, self.spec), device)).loss
                (loss / accum).backward()
            total += loss.item() / accum
        if self.args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.step_model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.progress.step += 1
        return total

    def log_training(self, losses: list[float], epoch: float) -> None:
        """Log the mean loss of the steps since the last log (over every process) and the learning rate."""
        mean_loss = sum(gather(sum(losses) / len(losses), self.env)) / self.env.world
        lr = float(self.scheduler.get_last_lr()[0])  # a float, or a tensor where the optimizer's lr is one
        self.run_log.write(
            self.clock.elapsed(), self.progress.step, epoch, "train", {"loss": mean_loss, "lr": lr}
        )

    def validate(self, epoch: float) -> None:
        """Evaluate on the validation split; a new best is saved to ``output_dir/best``."""
        metrics = self.evaluator(self.model)
        self.step_model.train()
        step = self.progress.step
        self.run_log.write(self.clock.elapsed(), step, epoch, "val", metrics)
        log.info("step %d epoch %.2f val %s", step, epoch, format_metrics(metrics))
        score = self.task.selection_metric(metrics)
        if score <= self.progress.best:
            return
        self.progress.best = score
        if self.env.main:
            best = Path(self.args.output_dir) / "best"
            save_model_dir(
                self.model, self.processor, best, {**metrics, "step": step}, self.args.save_dtype,
                self.training_data,
            )  # fmt: skip
            log.info("new best (%.4f) saved to %s", score, best)

    def save_checkpoint(self) -> None:
        """Write the resumable state (the main process writes; every process gives its RNG states)."""
        states = gather(rng_state(), self.env)
        if self.env.main:
            self.progress.elapsed = self.clock.elapsed()
            state = training_state(
                self.model, self.optimizer, self.scheduler, self.progress, states, asdict(self.args)
            )
            self.checkpoints.save(state, self.progress.step)
        barrier(self.env)  # no process leaves before the checkpoint is written

    def stop_on_signal(self, received: int | None, saved: bool) -> TrainingInterrupted:
        """Save (unless just saved) after a stop signal; the exception that ends the run."""
        signals = [s for s in gather(received, self.env) if s is not None]
        if not saved:
            self.save_checkpoint()
        path = self.checkpoints.path("last.pt")
        name = signal.Signals(signals[0]).name
        log.info("stopped by %s after step %d: %s resumes it", name, self.progress.step, path)
        return TrainingInterrupted(signals[0], self.progress.step, str(path))
