"""The data a task is trained on, whatever the format: :class:`Example` (what the readers of
:mod:`vilt.train.data` make), :class:`Item` (one example read and ready for the collator) and
:class:`Skipped` (one that could not be read)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Example:
    """One training or evaluation example, independent of the on-disk format.

    Attributes:
        images: image file paths (one; two for NLVR2).
        text: the question, statement or caption.
        answer_scores: VQA soft targets, answer string -> score in [0, 1].
        answers: the raw annotator answers (VQAv2: 10), for the official VQA accuracy.
        label: class id (NLVR2: 1 = True).
        group: the image identity (retrieval and pretraining: which captions belong to which image).
    """

    images: tuple[str, ...]
    text: str
    answer_scores: dict[str, float] = field(default_factory=dict)
    answers: tuple[str, ...] = ()
    label: int | None = None
    group: str = ""


@dataclass
class Item:
    """One dataset item, ready for the collator (:class:`vilt.train.data.Collator`)."""

    images: list[torch.Tensor]  # (C, H, W) each; the true image first
    texts: list[str]  # the text first; retrieval: then the negative texts
    target: torch.Tensor | int | None
    index: int


@dataclass
class Skipped:
    """An item that could not be read (the collator drops it and counts ``reason``)."""

    reason: str
