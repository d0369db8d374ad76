"""The model a run trains or evaluates, its processor, and its attention implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import heads
from ..configuration import ViltConfig
from ..image_processing import ViltImageProcessor
from ..modeling import ViltPreTrainedModel
from ..processing import ViltProcessor
from ..tasks import find_task, task_names

# the head class of each trainable task (the task table's preferred architecture)
MODEL_CLASSES: dict[str, type[ViltPreTrainedModel]] = {
    name: getattr(heads, find_task(name).architectures[0]) for name in task_names("train")
}


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
    task: str, answers: list[str] | None, init: str, new_config: dict[str, Any]
) -> ViltPreTrainedModel:
    """The task model: loaded from ``init`` (a new head where the task needs one), or new.

    Args:
        task: the training task.
        answers: the answer vocabulary (vqa): the labels of the classifier.
        init: a model directory or hub id to start from; empty for a new model.
        new_config: the :class:`ViltConfig` options of a new model (its size).
    """
    cls = MODEL_CLASSES[task]
    labels: dict[str, Any] = {}
    if task == "vqa":
        labels = {"id2label": dict(enumerate(answers or []))}
    elif task == "nlvr2":
        labels = {"num_labels": 2, "num_images": 2, "modality_type_vocab_size": 3}
    if init:
        return cls.from_pretrained(init, ignore_mismatched_sizes=True, **labels)
    return cls(ViltConfig(**new_config, **labels))


def set_attention(model: ViltPreTrainedModel, attention: str) -> None:
    """Use ``attention``: "eager", "sdpa", or "auto" (the model's default, "sdpa", whose CPU backward takes the
    explicit softmax where that is faster: :func:`vilt.modeling.explicit_softmax` decides)."""
    model.set_attn_implementation("sdpa" if attention == "auto" else attention)
