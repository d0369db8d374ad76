"""The model a run trains or evaluates, its processor, and its attention implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..configuration import ViltConfig
from ..image_processing import ViltImageProcessor
from ..modeling import ViltPreTrainedModel
from ..processing import ViltProcessor
from .tasks import TrainingTask


def new_processor(shortest_edge: int, patch_size: int) -> ViltProcessor:
    """A processor whose images fit a new model: shorter side ``shortest_edge``, sides multiple of the patch."""
    image_processor = ViltImageProcessor(size={"shortest_edge": shortest_edge}, size_divisor=patch_size)
    return ViltProcessor(image_processor=image_processor)


def load_processor(init: str, shortest_edge: int, patch_size: int) -> ViltProcessor:
    """The processor saved with ``init`` (a directory or hub id), else a new one (:func:`new_processor`)."""
    local = Path(init) if init else None
    if local is None or (local.exists() and not (local / "preprocessor_config.json").exists()):
        return new_processor(shortest_edge, patch_size)
    return ViltProcessor.from_pretrained(init)


def build_model(
    task: TrainingTask, answers: list[str] | None, init: str, new_config: dict[str, Any]
) -> ViltPreTrainedModel:
    """The task model: loaded from ``init`` (a new head where the task needs one), or new.

    Args:
        task: the training task: its head class and the config fields the head needs.
        answers: the answer vocabulary (vqa): the labels of the classifier.
        init: a model directory or hub id to start from; empty for a new model.
        new_config: the :class:`ViltConfig` options of a new model (its size).
    """
    cls = task.model_class
    labels = task.head_config(answers)
    if init:
        return cls.from_pretrained(init, ignore_mismatched_sizes=True, **labels)
    return cls(ViltConfig(**new_config, **labels))


def set_attention(model: ViltPreTrainedModel, attention: str) -> None:
    """Use ``attention``: "eager", "sdpa", or "auto" (the model's default, "sdpa", whose CPU backward takes the
    explicit softmax where that is faster: :func:`vilt.modeling.explicit_softmax` decides)."""
    model.set_attn_implementation("sdpa" if attention == "auto" else attention)
