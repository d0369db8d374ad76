"""The machinery every task pipeline shares: input checks, size-sorted prefetched batches, result order.

:class:`Pipeline.__call__` is the one body of a call: normalise the call form to (images, text) pairs,
check every input before any work (URL images are fetched here, once), warn once when a text is cut
to the model's length, sort the inputs by the size their images are resized to, cut them into batches,
preprocess the next batch in a background thread while the model runs the current one, and return
the results in input order. A task adds its call signature, its per-batch prediction
(:meth:`Pipeline._predict`) and, when it needs one, an extra text check.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from ..configuration import ViltConfig
from ..errors import ViltInputError
from ..feature import BatchFeature
from ..image_processing import get_resize_output_image_size
from ..images import DEFAULT_TIMEOUT, describe, image_size, is_array, is_url, load_image, load_pipeline_image
from ..tasks import TaskSpec, find_task

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
_T = TypeVar("_T")


@dataclass
class PipelineInput:
    """One checked input of a pipeline call: its images, its text, and the size used to sort it."""

    images: list[Any]  # as given, URLs replaced by the images fetched from them
    text: str | None  # None for an image alone (retrieval scores images against separate texts)
    where: str  # how messages name the input: "" alone, " (item 3)" in a list
    size: tuple[int, int]  # (height, width) after resizing; the largest over the images


# ----------------------------------------------------------------------------- argument checks


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ViltInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_top_k(top_k: Any, limit: int | None = None) -> int:
    """``top_k``, capped at ``limit`` (the number of candidates) when given."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ViltInputError(f"top_k must be a positive integer, got {top_k!r}")
    return top_k if limit is None else min(top_k, limit)


def check_text(text: Any, label: str) -> str:
    """A text must be a string with some words; ``label`` names it (e.g. "the question (item 2)")."""
    if not isinstance(text, str):
        raise ViltInputError(f"{label} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ViltInputError(f"{label} is empty; pass some words")
    return text


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _plural(name: str) -> str:
    return name if name.endswith("s") else f"{name}s"


def input_pairs(
    first: Any, second: Any, first_name: str, second_name: str
) -> tuple[bool, list[tuple[Any, Any]]]:
    """Normalise the call forms to (one input?, [(first, second), ...]).

    The forms are ``(x, text)``, ``([x, ...], text)`` (one text for all), ``([x, ...], [text, ...])``
    and ``([{first_name: x, second_name: text}, ...])``.
    """
    if isinstance(first, list) and any(isinstance(item, dict) for item in first):
        if second is not None:
            raise ViltInputError(
                f"pass either a list of {{{first_name!r}, {second_name!r}}} dicts or {second_name}=, not both"
            )
        return False, [_dict_pair(item, index, first_name, second_name) for index, item in enumerate(first)]
    if isinstance(first, list):
        if not first:
            raise ViltInputError(f"the list of {_plural(first_name)} is empty; pass at least one")
        if second is None:
            raise ViltInputError(f"pass {second_name}= with the {_plural(first_name)}")
        seconds = list(second) if isinstance(second, (list, tuple)) else [second] * len(first)
        if len(seconds) != len(first):
            raise ViltInputError(
                f"got {len(first)} {_plural(first_name)} but {len(seconds)} {_plural(second_name)}; pass one "
                f"{second_name} for each or one for all"
            )
        return False, list(zip(first, seconds))
    if first is None or second is None:
        raise ViltInputError(
            f"pass both {first_name}= and {second_name}= (or a list of dicts with those keys)"
        )
    if isinstance(second, (list, tuple)):
        raise ViltInputError(
            f"one {first_name} was given with a list of {_plural(second_name)}; pass one {second_name}, or a "
            f"list of {_plural(first_name)}"
        )
    return True, [(first, second)]


def _dict_pair(item: Any, index: int, first_name: str, second_name: str) -> tuple[Any, Any]:
    if not isinstance(item, dict):
        raise ViltInputError(
            f"item {index} is a {type(item).__name__}; in a list of dicts every item is a dict with "
            f"{first_name!r} and {second_name!r}"
        )
    missing = {first_name, second_name} - set(item)
    if missing:
        raise ViltInputError(
            f"item {index} lacks the key(s) {sorted(missing)}; each dict needs {first_name!r} and {second_name!r}"
        )
    return item[first_name], item[second_name]


def _check_finite(image: Any, name: str) -> None:
    """Refuse an array or tensor image holding NaN or infinite values."""
    if isinstance(image, torch.Tensor):
        finite = not image.is_floating_point() or bool(torch.isfinite(image).all())
    else:
        finite = not np.issubdtype(image.dtype, np.floating) or bool(np.isfinite(image).all())
    if not finite:
        raise ViltInputError(f"{name} holds NaN or infinite values; replace them (e.g. np.nan_to_num) first")


# ----------------------------------------------------------------------------- batching


def prefetched(work: Sequence[_T], prepare: Callable[[_T], Any]) -> Iterator[tuple[_T, Any]]:
    """Yield ``(item, prepare(item))`` in order, preparing the next item in a background thread."""
    if not work:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vilt-prefetch") as pool:
        pending = pool.submit(prepare, work[0])
        for index, item in enumerate(work):
            prepared = pending.result()
            if index + 1 < len(work):
                pending = pool.submit(prepare, work[index + 1])
            yield item, prepared


def size_sorted_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar image size (area, then height), in a stable order."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0] * sizes[i][1], sizes[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


# ----------------------------------------------------------------------------- the base pipeline


class Pipeline:
    """Shared machinery: input checks, size-sorted prefetched batches, device moves, result order.

    Subclasses set ``task`` (a pipeline name of :data:`vilt.tasks.TASKS`, which gives ``spec``,
    ``architectures`` and ``head``), give ``__call__`` their signature on top of the shared body, and
    implement :meth:`_predict`.

    Args:
        model: the callable model (see :mod:`vilt.pipelines`' model contract).
        config: its configuration.
        processor: a :class:`vilt.ViltProcessor`.
        device, dtype: where the inputs go and the dtype of ``pixel_values``.
        batch_size: inputs per forward pass (each call may override it).
        timeout: seconds to wait for an image URL (each call may override it).
    """

    task: ClassVar[str]
    spec: ClassVar[TaskSpec]  # the task's row of vilt.tasks.TASKS
    architectures: ClassVar[tuple[str, ...]]  # the model classes that do the task
    head: ClassVar[str]  # what they add to the base model, for error messages
    images_per_input: ClassVar[int] = 1
    image_key: ClassVar[str] = "image"  # the keyword and dict key of the image(s)
    text_key: ClassVar[str] = "text"  # the keyword and dict key of the text
    text_name: ClassVar[str] = "text"  # what error messages call the text

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.spec = find_task(cls.task)
        cls.architectures, cls.head = cls.spec.architectures, cls.spec.head

    def __init__(
        self,
        model: Any,
        config: ViltConfig,
        processor: Any,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.model = model
        self.config = config
        self.labels: dict[int, str] = config.id2label or {}  # class index -> name
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.batch_size = check_batch_size(batch_size)
        self.timeout = timeout
        self._truncation_reported = False  # the truncation warning is shown once per pipeline

    def __repr__(self) -> str:
        arch = (self.config.architectures or ["?"])[0]
        return f"{type(self).__name__}(task={self.task!r}, model={arch}, device={self.device}, dtype={self.dtype})"

    def __call__(
        self,
        inputs: Any = None,
        text: Any = None,
        batch_size: int | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Run the task on one input or a list (each task documents its call shape).

        Args:
            inputs: one input's image(s), a list of them, or a list of dicts with ``image_key`` and
                ``text_key``.
            text: the text, one for all inputs, or one per input.
            batch_size: inputs per forward pass (default: the pipeline's).
            timeout: seconds to wait for an image URL (default: the pipeline's).
            **options: passed to :meth:`_predict` (e.g. VQA's ``top_k``).

        Returns:
            The task's result for one input, or a list of them in input order.
        """
        batch_size = check_batch_size(self.batch_size if batch_size is None else batch_size)
        timeout = self.timeout if timeout is None else timeout
        single, pairs = input_pairs(inputs, text, self.image_key, self.text_key)
        wheres = [""] if single else [f" (item {index})" for index in range(len(pairs))]
        labels = [f"the {self.text_name}{where}" for where in wheres]
        texts = [self._check_text(text, label) for (_, text), label in zip(pairs, labels)]  # before fetching
        items = [
            self._input(images, text, where, timeout)
            for (images, _), text, where in zip(pairs, texts, wheres)
        ]
        self._warn_if_truncated(texts, labels)
        results = self._run(items, functools.partial(self._predict, **options), batch_size)
        return results[0] if single else results

    def _predict(self, batch: BatchFeature, **options: Any) -> list[Any]:
        """The task's result for each input of a processed batch."""
        raise NotImplementedError

    # -- inputs ----------------------------------------------------------------------------------
    def _input(self, images: Any, text: str, where: str, timeout: float) -> PipelineInput:
        """Check the images of one input with its checked text; ``where`` names it (" (item 3)" in a list)."""
        images = as_list(images)
        if len(images) != self.images_per_input:
            raise ViltInputError(
                f"the {self.task} task takes {self.images_per_input} image(s) per input, got {len(images)}{where}"
            )
        return self._image_input(images, text, where, timeout)

    def _check_text(self, text: Any, label: str) -> str:
        """A checked text; ``label`` names it (a task may check more)."""
        return check_text(text, label)

    def _image_input(self, images: list[Any], text: str | None, where: str, timeout: float) -> PipelineInput:
        """Check the images of one input, fetching URLs, and learn the size they are resized to."""
        checked, sizes = [], []
        for image in images:
            name = f"{describe(image)}{where}"
            try:
                if is_url(image):  # fetched once, here: its size and pixels come from this one download
                    image = load_image(image, timeout, name=name)
                elif is_array(image):
                    _check_finite(image, name)
                sizes.append(self._resized(image_size(image, name=name)))
            except TypeError as err:  # not an image at all (a number, a list...)
                raise ViltInputError(str(err)) from err
            checked.append(image)
        return PipelineInput(images=checked, text=text, where=where, size=max(sizes))

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) the processor resizes an image of ``size`` to."""
        settings = self.processor.image_processor
        if not settings.do_resize:
            return size
        return get_resize_output_image_size(*size, settings.size["shortest_edge"], settings.size_divisor)

    def _warn_if_truncated(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        """Warn (once per pipeline, through the logger) when a text is longer than the model reads."""
        if self._truncation_reported:
            return
        limit = self.config.max_position_embeddings
        lengths = self.processor.tokenizer(
            list(texts), return_length=True, return_token_type_ids=False, return_attention_mask=False
        )["length"]
        cut = [index for index, length in enumerate(lengths) if length > limit]
        if not cut:
            return
        self._truncation_reported = True
        first = cut[0]
        others = f"; {len(cut) - 1} more text(s) of this call were cut too" if len(cut) > 1 else ""
        logger.warning(
            "%s is %d tokens long but the model reads at most %d: its last %d tokens were dropped%s. "
            "Shorten long texts (this warning is shown once per pipeline).",
            labels[first],
            lengths[first],
            limit,
            lengths[first] - limit,
            others,
        )

    def _load_images(self, item: PipelineInput) -> list[Any]:
        """The images of an input as the processor takes them: each loaded as transformers' pipelines did."""
        return [load_pipeline_image(image, name=f"{describe(image)}{item.where}") for image in item.images]

    def _encode(self, items: Sequence[PipelineInput]) -> BatchFeature:
        """Processor outputs for a batch of inputs, as tensors (texts cut to the model's length)."""
        images = [self._load_images(item) for item in items]
        return self.processor(
            images=images if self.images_per_input > 1 else [group[0] for group in images],
            text=[item.text for item in items],
            padding=True,
            truncation=True,
            max_length=self.config.max_position_embeddings,
            return_tensors="pt",
        )

    # -- running the model -----------------------------------------------------------------------
    def _to_device(self, batch: BatchFeature) -> dict[str, torch.Tensor]:
        """Move a batch to the model's device; floating tensors (pixel_values) take the model dtype."""
        return dict(batch.to(self.device, self.dtype))

    def _logits(self, batch: BatchFeature) -> torch.Tensor:
        """Run the model on a batch; float32 logits on the CPU."""
        with torch.inference_mode():
            return self.model(**self._to_device(batch)).logits.float().cpu()

    def _run(
        self, items: Sequence[PipelineInput], step: Callable[[BatchFeature], list[Any]], batch_size: int
    ) -> list[Any]:
        """Apply ``step`` to size-sorted batches (prepared in the background); results in input order."""
        from tqdm.auto import tqdm

        batches = size_sorted_batches([item.size for item in items], batch_size)
        results: list[Any] = [None] * len(items)
        prepared = prefetched(batches, lambda indices: self._encode([items[i] for i in indices]))
        with tqdm(total=len(items), desc=self.task, unit="ex", disable=len(batches) < 2) as bar:
            for indices, batch in prepared:
                for i, result in zip(indices, step(batch)):
                    results[i] = result
                bar.update(len(indices))
        return results
