"""The trainable tasks, one module each: what each adds to the shared training code (:mod:`.base`).

:data:`TRAINING_TASKS` holds one :class:`~.base.TrainingTask` per task of :data:`vilt.tasks.TASKS` marked
trainable; :func:`training_task` finds one by name. A new trainable task is a module here with a
:class:`~.base.TrainingTask` subclass, listed below.
"""

from __future__ import annotations

from .base import ClassificationTask, Evaluation, ScoredData, TrainingTask
from .nlvr2 import NLVR2Task
from .pretrain import PretrainingTask
from .retrieval import RetrievalTask
from .vqa import VQATask

__all__ = [
    "TRAINING_TASKS",
    "ClassificationTask",
    "Evaluation",
    "NLVR2Task",
    "PretrainingTask",
    "RetrievalTask",
    "ScoredData",
    "TrainingTask",
    "VQATask",
    "training_task",
]

# task name -> its object (the names are those of vilt.tasks.task_names("train"))
TRAINING_TASKS: dict[str, TrainingTask] = {
    task.name: task for task in (VQATask(), NLVR2Task(), RetrievalTask(), PretrainingTask())
}


def training_task(name: str) -> TrainingTask:
    """The trainable task called ``name``.

    Raises:
        ValueError: no trainable task has that name; the message lists those there are.
    """
    task = TRAINING_TASKS.get(name)
    if task is None:
        raise ValueError(f"task must be one of {', '.join(TRAINING_TASKS)}, got {name!r}")
    return task
