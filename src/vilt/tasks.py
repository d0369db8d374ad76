"""The task table: every name a task goes by, the heads that do it, and who offers it.

One row per task. The pipelines (:func:`vilt.pipeline`), ``vilt export --task``, ``vilt train --task``,
the server's endpoints and the CLI all read their vocabulary from :data:`TASKS`, so a task has the
same names and the same head everywhere. Standard library only: importing it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ViltInputError


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Attributes:
        name: the short name (``vilt export --task``, ``vilt train --task``).
        pipeline: the :func:`vilt.pipeline` task name, None when no pipeline runs it on its own.
        aliases: other names :func:`find_task` accepts.
        architectures: the model classes that do the task, preferred first.
        head: what those classes add to the base model, for error messages.
        exportable: whether ``vilt export --task NAME`` writes it.
        trainable: whether ``vilt train --task NAME`` trains it.
        endpoint: the server route ``/v1/<endpoint>`` that answers it, None when not served.
    """

    name: str
    pipeline: str | None
    aliases: tuple[str, ...]
    architectures: tuple[str, ...]
    head: str
    exportable: bool
    trainable: bool
    endpoint: str | None


TASKS = (
    TaskSpec("vqa", "visual-question-answering", ("visual-question-answering",),
             ("ViltForQuestionAnswering",), "a VQA classifier head", True, True, "vqa"),
    TaskSpec("nlvr2", "nlvr2", (), ("ViltForImagesAndTextClassification",),
             "an NLVR2 head over two images (config.num_images=2)", True, True, "nlvr2"),
    TaskSpec("retrieval", "image-text-retrieval", ("image-text-retrieval", "rank"),
             ("ViltForImageAndTextRetrieval", "ViltForImageTextMatching"),
             "a retrieval head (rank_output) or an image-text matching head (itm_score)", True, True, "rank"),
    TaskSpec("itm", None, ("image-text-matching",), ("ViltForImageTextMatching",),
             "an image-text matching head (itm_score)", True, False, None),
    TaskSpec("mlm", "fill-mask", ("fill-mask",), ("ViltForMaskedLM",),
             "a masked-language-model head (mlm_score)", True, False, "fill-mask"),
    TaskSpec("token-classification", "token-classification", (), ("ViltForTokenClassification",),
             "a token classification head", False, False, None),
    TaskSpec("pretrain", None, ("pretraining",), ("ViltForPreTraining",),
             "the MLM and ITM pretraining heads", False, True, None),
)  # fmt: skip

BASE_ARCHITECTURE = "ViltModel"


def find_task(name: str) -> TaskSpec:
    """The task called ``name`` (its name, pipeline name or an alias).

    Raises:
        ViltInputError: no task has that name; the message lists the names there are.
    """
    for task in TASKS:
        if name in (task.name, task.pipeline, *task.aliases):
            return task
    names = sorted({n for task in TASKS for n in (task.name, task.pipeline, *task.aliases) if n})
    raise ViltInputError(f"unknown task {name!r}; choose one of {', '.join(names)}")


def task_names(kind: str) -> tuple[str, ...]:
    """The names one interface offers: ``"pipeline"``, ``"export"`` or ``"train"``."""
    if kind == "pipeline":
        return tuple(task.pipeline for task in TASKS if task.pipeline)
    if kind == "export":
        return tuple(task.name for task in TASKS if task.exportable)
    if kind == "train":
        return tuple(task.name for task in TASKS if task.trainable)
    raise ValueError(f"unknown interface {kind!r}")


def task_of_architecture(architecture: str) -> TaskSpec | None:
    """The first task a model class does (None for the base model)."""
    return next((task for task in TASKS if architecture in task.architectures), None)
