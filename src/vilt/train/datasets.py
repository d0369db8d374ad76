"""Which examples a run uses: the splits of a :class:`~vilt.train.settings.DataSource` (with the
validation hold-out), the answer vocabulary, and the datasets built from them.

:mod:`vilt.train.data` reads the on-disk formats; this module decides what is read for each split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..errors import ViltInputError
from ..processing import ViltProcessor
from . import data as D
from .settings import DataSource
from .tasks import TrainingTask, training_task


def _files(spec: str) -> list[str]:
    return [p.strip() for p in spec.split(",") if p.strip()]


def read_split(source: DataSource, split: str) -> list[D.Example]:
    """The examples of ``split`` ("train", "val" or "test") of ``source``.

    Without val data, "val" is the hold-out of ``source.val_fraction`` of the training images (by
    ``source.seed``), and "train" is everything else (for easy-VQA; :func:`training_examples` removes it
    for the other readers).
    """
    if source.dataset == "easy-vqa":
        if split == "test":
            examples = D.read_easy_vqa("test")
        else:
            train, val = D.split_holdout(D.read_easy_vqa("train"), source.val_fraction, source.seed)
            examples = train if split == "train" else val
        return D.easy_vqa_captions(examples) if training_task(source.task).reads_captions else examples
    spec = {"train": source.train_data, "val": source.val_data, "test": source.test_data}[split]
    if split == "val" and not spec:
        _, val = D.split_holdout(read_split(source, "train"), source.val_fraction, source.seed)
        return val
    if not spec:
        raise ViltInputError(f"no {split} data: pass --{split}-data")
    files = _files(spec)
    if source.dataset == "vqav2":
        return D.read_vqav2(files[0], files[1] if len(files) > 1 else None, source.image_root)
    if source.dataset == "nlvr2":
        return D.read_nlvr2(files[0], source.image_root)
    if source.dataset == "karpathy":
        return D.read_karpathy(files[0], split, source.image_root)
    return D.read_jsonl(files[0], source.image_root or None)


def training_examples(source: DataSource, train_fraction: float) -> list[D.Example]:
    """The training split, minus the validation hold-out, subsampled to ``train_fraction`` (by the seed)."""
    examples = read_split(source, "train")
    if not source.val_data and source.dataset != "easy-vqa":
        examples, _ = D.split_holdout(examples, source.val_fraction, source.seed)
    if train_fraction < 1:
        keep = random.Random(source.seed).sample(range(len(examples)), round(train_fraction * len(examples)))
        examples = [examples[i] for i in sorted(keep)]
    return examples


def answer_vocab(source: DataSource, answers_file: str, train: list[D.Example]) -> list[str]:
    """The VQA answer vocabulary: the user's file, easy-VQA's 13 answers, or built from the data."""
    if answers_file:
        return D.load_answer_vocab(answers_file)
    if source.dataset == "easy-vqa":
        return D.easy_vqa_answers()
    if source.dataset == "vqav2":
        annotations = [_files(s)[1] for s in (source.train_data, source.val_data) if len(_files(s)) > 1]
        return D.vqav2_answer_vocab(annotations)
    return D.build_answer_vocab(
        [max(ex.answer_scores, key=ex.answer_scores.__getitem__) for ex in train if ex.answer_scores], 1
    )


def randaugment(magnitude: int, operations: str) -> Callable[[Any, random.Random], Any]:
    """RandAugment (N=2) of ``magnitude`` over the comma-separated ``operations`` (empty: all 14)."""
    from .randaugment import RandAugment

    return RandAugment(m=magnitude, operations=_files(operations) or None)


def build_dataset(
    examples: list[D.Example],
    task: str | TrainingTask,
    processor: ViltProcessor,
    answers: list[str] | None,
    issues: D.DataIssues,
    *,
    cache_images: bool,
    augment: Callable[[Any, random.Random], Any] | None = None,
    negatives: int = 0,
    seed: int = 0,
) -> D.ViltDataset:
    """Examples -> :class:`~vilt.train.data.ViltDataset`, images preprocessed once when cached.

    Args:
        examples: from :func:`read_split` or :func:`training_examples`.
        task: the training task (or its name).
        processor: the model's processor (images and texts).
        answers: the answer vocabulary (vqa).
        issues: where skipped examples are counted.
        cache_images: keep every image in memory, preprocessed once.
        augment: the training augmentation, None for none.
        negatives: random negative captions per image, for tasks that rank captions (retrieval training).
        seed: seed of the per-item randomness.
    """
    loader = D.ImageLoader(processor.image_processor, cache=cache_images, augment=augment)
    dataset = D.ViltDataset(examples, task, loader, issues, answers=answers, negatives=negatives, seed=seed)
    dataset.drop_unreadable(loader.preload(dataset.image_paths()))
    return dataset
