"""Task pipelines: answer, verify, rank, fill and tag in one call, batched and in input order.

The interface (the HTTP server and the ONNX backend build against it; keep it stable)::

    vilt.pipeline(task, model=None, device=None, dtype=None, processor=None, backend="torch",
                  batch_size=32) -> Pipeline

``task`` is one of (aliases in brackets):

=============================== ========================================= ============================================
task                            model architecture(s)                     call -> result
=============================== ========================================= ============================================
"visual-question-answering"     ViltForQuestionAnswering                  ``vqa(image, question, top_k=5)`` ->
("vqa")                                                                   ``[{"answer": str, "score": float}, ...]``
                                                                          sigmoid probabilities, best first;
                                                                          ``vqa([{"image", "question"}, ...])`` or
                                                                          ``vqa(images, question)`` -> one list each
"nlvr2"                         ViltForImagesAndTextClassification        ``nlvr2((image_a, image_b), statement)`` ->
                                                                          ``{"label": bool, "score": float}`` (softmax
                                                                          probability of the label; class 1 = True);
                                                                          ``nlvr2([{"images", "text"}, ...])`` -> list
"image-text-retrieval"          ViltForImageAndTextRetrieval (its         ``rank(images=[...], texts=[...])`` -> (N, M)
("retrieval")                   ``rank_output``) or                       numpy float32 score matrix (higher = better
                                ViltForImageTextMatching (the "match"     match); ``rank.rank(images, texts, top_k)``
                                logit: zero-shot)                         -> sorted text->images and image->texts
"fill-mask"                     ViltForMaskedLM                           ``fill(image, "a [MASK] circle")`` ->
                                                                          ``{"sequence", "tokens", "scores"}``
"token-classification"          ViltForTokenClassification                ``tag(image, text)`` ->
                                                                          ``[{"token", "label", "score", "index"}]``
=============================== ========================================= ============================================

``model`` is a hub id, a local directory or a model instance. ``model=None`` means the bundled easy-VQA
model for "visual-question-answering"; every other task needs a model and says so. A model without the
head a task needs raises ``ValueError`` naming the task, the model's architecture and the head needed.

Images are file paths, encoded bytes, PIL images, numpy arrays or torch tensors (whatever
:class:`vilt.ViltImageProcessor` accepts). A call takes one example or a list; lists are sorted by the
size the processor will resize each image to, cut into batches of ``batch_size`` (so one batch holds
similar sizes and little padding), run with the next batch preprocessed in a background thread while the
model runs, and returned in input order. Every input is validated first, with an error naming the item.

**Device and dtype** (:func:`select_device_and_dtype`): CUDA with bfloat16 when a GPU is present, else the
CPU with bfloat16 when it has AVX512-BF16 or AMX (bf16 matmuls several times faster), else float32.
A model instance stays where and as it is unless ``device``/``dtype`` are given.

**The model contract.** A pipeline only needs ``pipeline.model``, a callable taking keyword tensors
``input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask`` (as the processor makes them) and
returning an object with ``.logits``, and ``pipeline.config``, a :class:`vilt.ViltConfig`. With
``backend="onnxruntime"`` or ``"openvino"`` the model is ``vilt.export.load_exported(directory, backend,
device=...)`` (an ``OnnxModel`` or ``OpenVinoModel``), which honours that contract; everything else is
shared.
Image-text retrieval embeds each image once through ``model.vilt.embeddings.visual_embed``, so it needs
the torch backend.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from PIL import Image

from .checkpoint import read_config
from .configuration import ViltConfig
from .devices import select_device_and_dtype
from .errors import ViltInputError
from .export.graph import BACKEND_OF_FORMAT
from .feature import BatchFeature
from .heads import MODEL_CLASSES
from .hub import model_source, resolve_file
from .image_processing import get_resize_output_image_size
from .tasks import find_task

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
BACKENDS = ("torch", *BACKEND_OF_FORMAT.values())
_T = TypeVar("_T")


# ----------------------------------------------------------------------------- inputs


@dataclass
class Example:
    """One validated input: its image(s), its text, and the processed size used to sort it."""

    images: list[Any]
    text: str
    size: tuple[int, int]  # (height, width) after resizing; the largest over the images


def _raw_size(image: Any, where: str = "") -> tuple[int, int]:
    """(height, width) of an input image, reading only the header of files and bytes.

    Args:
        image: a path, bytes, PIL image, numpy array or torch tensor.
        where: which input it is, for error messages (e.g. " (item 3)").

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: bytes or a file that is not an image; an array that is not 2-d or 3-d.
        TypeError: anything that is not an image.
    """
    label = f"the image{where}"
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, (np.ndarray, torch.Tensor)):
        shape = tuple(image.shape)
        if len(shape) == 2:
            return shape[0], shape[1]
        if len(shape) == 3:  # channels first when the first axis can be channels, as the processor does
            return (shape[1], shape[2]) if shape[0] in (1, 3, 4) else (shape[0], shape[1])
        raise ValueError(f"{label} is an array of shape {shape}; pass (H, W), (H, W, C) or (C, H, W)")
    if isinstance(image, (str, os.PathLike)):
        return _header_size(image, f"image file {os.fspath(image)!r}{where}")
    if isinstance(image, (bytes, bytearray)):
        return _header_size(image, f"the image bytes{where}")
    raise TypeError(
        f"{label} is a {type(image).__name__}; pass a file path, encoded bytes, a PIL image or an array"
    )


def _header_size(source: str | os.PathLike[str] | bytes | bytearray, label: str) -> tuple[int, int]:
    """Open a file or bytes lazily (no decoding) to learn the image size and check it is an image."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ValueError(f"{label} is empty (0 bytes)")
        handle: Any = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{label} does not exist")
        handle = path
    try:
        with Image.open(handle) as image:
            return image.height, image.width
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{label} is not a readable image ({err}); pass a PNG, JPEG or other image") from err


def _check_text(text: Any, label: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{label} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{label} is empty; pass some words")
    return text


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _pairs(first: Any, second: Any, first_name: str, second_name: str) -> tuple[bool, list[tuple[Any, Any]]]:
    """Normalise the call forms ``(x, text)``, ``([x, ...], text)``, ``([x, ...], [text, ...])`` and
    ``([{first_name: x, second_name: text}, ...])`` to (single example?, [(x, text), ...])."""
    if isinstance(first, list) and first and all(isinstance(item, dict) for item in first):
        if second is not None:
            raise ValueError(
                f"pass either a list of {{{first_name!r}, {second_name!r}}} dicts or {second_name}="
            )
        pairs = []
        for index, item in enumerate(first):
            missing = {first_name, second_name} - set(item)
            if missing:
                raise ValueError(
                    f"item {index} lacks the key(s) {sorted(missing)}; each dict needs {first_name!r} and {second_name!r}"
                )
            pairs.append((item[first_name], item[second_name]))
        return False, pairs
    if first is None or second is None:
        raise ValueError(f"pass both {first_name}= and {second_name}= (or a list of dicts with those keys)")
    if not isinstance(first, list):
        if isinstance(second, (list, tuple)):
            raise ValueError(
                f"one {first_name} was given with a list of {second_name}s; pass one {second_name}"
            )
        return True, [(first, second)]
    if not first:
        raise ValueError(f"the list of {first_name}s is empty")
    seconds = list(second) if isinstance(second, (list, tuple)) else [second] * len(first)
    if len(seconds) != len(first):
        raise ValueError(
            f"got {len(first)} {first_name}s but {len(seconds)} {second_name}s; pass one each or one for all"
        )
    return False, list(zip(first, seconds))


# ----------------------------------------------------------------------------- batching


def _prefetched(work: Sequence[_T], prepare: Callable[[_T], Any]) -> Iterator[tuple[_T, Any]]:
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


def _size_sorted_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar image size (area, then height), in a stable order."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0] * sizes[i][1], sizes[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _check_top_k(top_k: Any, limit: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    return min(top_k, limit)


# ----------------------------------------------------------------------------- the base pipeline


class Pipeline:
    """Shared machinery: input checks, size-sorted prefetched batches, device moves, result order.

    Subclasses set ``task`` (a pipeline name of :data:`vilt.tasks.TASKS`, which gives ``architectures``
    and ``head``) and implement ``__call__`` on top of :meth:`_run`.

    Args:
        model: the callable model (see the module docstring's model contract).
        config: its configuration.
        processor: a :class:`vilt.ViltProcessor`.
        device, dtype: where the inputs go and the dtype of ``pixel_values``.
        batch_size: examples per forward pass (each call may override it).
    """

    task: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]  # the model classes that do the task
    head: ClassVar[str]  # what they add to the base model, for error messages
    images_per_example: ClassVar[int] = 1
    text_name: ClassVar[str] = "text"  # what error messages call the text

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = find_task(cls.task)
        cls.architectures, cls.head = spec.architectures, spec.head

    def __init__(
        self,
        model: Any,
        config: ViltConfig,
        processor: Any,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.model = model
        self.config = config
        self.labels: dict[int, str] = config.id2label or {}  # class index -> name
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.batch_size = _check_batch_size(batch_size)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task on one example or a list (each task documents its call shape)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        arch = (self.config.architectures or ["?"])[0]
        return f"{type(self).__name__}(task={self.task!r}, model={arch}, device={self.device}, dtype={self.dtype})"

    # -- inputs ----------------------------------------------------------------------------------
    def _example(self, images: Any, text: Any, index: int | None) -> Example:
        """Validate one example; ``index`` names it in errors when it came in a list."""
        where = "" if index is None else f" (item {index})"
        images = _as_list(images)
        if len(images) != self.images_per_example:
            raise ValueError(
                f"the {self.task} task takes {self.images_per_example} image(s) per example, got "
                f"{len(images)}{where}"
            )
        text = _check_text(text, f"the {self.text_name}{where}")
        return Example(images=images, text=text, size=self._processed_size(images, where))

    def _processed_size(self, images: list[Any], where: str) -> tuple[int, int]:
        """The largest (height, width) the processor will resize these images to (checks each image)."""
        size = self.processor.image_processor.size["shortest_edge"]
        divisor = self.processor.image_processor.size_divisor
        return max(get_resize_output_image_size(*_raw_size(image, where), size, divisor) for image in images)

    def _encode(self, examples: Sequence[Example]) -> BatchFeature:
        """Processor outputs for a batch of examples, as tensors."""
        images = [e.images if self.images_per_example > 1 else e.images[0] for e in examples]
        return self.processor(
            images=images,
            text=[e.text for e in examples],
            padding=True,
            truncation=True,
            max_length=self.config.max_position_embeddings,
            return_tensors="pt",
        )

    def _to_device(self, batch: BatchFeature) -> dict[str, torch.Tensor]:
        """Move a batch to the model's device; floating tensors (pixel_values) take the model dtype."""
        return dict(batch.to(self.device, self.dtype))

    def _logits(self, batch: BatchFeature) -> torch.Tensor:
        """Run the model on a batch; float32 logits on the CPU."""
        with torch.inference_mode():
            return self.model(**self._to_device(batch)).logits.float().cpu()

    # -- the batched loop --------------------------------------------------------------------------
    def _run(
        self,
        examples: Sequence[Example],
        step: Callable[[BatchFeature], list[Any]],
        batch_size: int | None,
    ) -> list[Any]:
        """Apply ``step`` to size-sorted batches (prepared in the background); results in input order."""
        from tqdm.auto import tqdm

        batch_size = _check_batch_size(self.batch_size if batch_size is None else batch_size)
        batches = _size_sorted_batches([e.size for e in examples], batch_size)
        results: list[Any] = [None] * len(examples)
        prepared = _prefetched(batches, lambda indices: self._encode([examples[i] for i in indices]))
        with tqdm(total=len(examples), desc=self.task, unit="ex", disable=len(batches) < 2) as bar:
            for indices, batch in prepared:
                for i, result in zip(indices, step(batch)):
                    results[i] = result
                bar.update(len(indices))
        return results


# ----------------------------------------------------------------------------- VQA


class VisualQuestionAnsweringPipeline(Pipeline):
    """``vqa(image, question, top_k=5) -> [{"answer", "score"}]``, best first (sigmoid scores).

    Also ``vqa(image=..., question=...)``; ``vqa([{"image": ..., "question": ...}, ...])`` and
    ``vqa([image, ...], question)`` (one question for every image) return one list per item.
    """

    task = "visual-question-answering"
    text_name = "question"

    def __call__(
        self,
        image: Any = None,
        question: str | Sequence[str] | None = None,
        top_k: int = 5,
        batch_size: int | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Answer questions about images.

        Args:
            image: one image, a list of images, or a list of ``{"image", "question"}`` dicts.
            question: the question (one for all images), or one question per image.
            top_k: answers to return per question (at most the number of answers the model knows).
            batch_size: examples per forward pass (default: the pipeline's).
        """
        top_k = _check_top_k(top_k, self.config.num_labels)
        single, pairs = _pairs(image, question, "image", "question")
        examples = [self._example(img, q, None if single else i) for i, (img, q) in enumerate(pairs)]
        results = self._run(examples, functools.partial(self._answers, top_k=top_k), batch_size)
        return results[0] if single else results

    def _answers(self, batch: BatchFeature, top_k: int) -> list[list[dict[str, Any]]]:
        scores, ids = self._logits(batch).sigmoid().topk(top_k, dim=-1)  # each (B, top_k)
        return [
            [{"answer": self.labels[i], "score": s} for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]


# ----------------------------------------------------------------------------- NLVR2


class NLVR2Pipeline(Pipeline):
    """``nlvr2((image_a, image_b), statement) -> {"label": bool, "score": float}``.

    ``nlvr2([{"images": (a, b), "text": ...}, ...])`` or ``nlvr2([(a, b), ...], [statement, ...])``
    return one dict per item. The score is the softmax probability of the label; class 1 is True.
    """

    task = "nlvr2"
    images_per_example = 2
    text_name = "statement"

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Check statements against pairs of images.

        Args:
            images: a pair ``(image_a, image_b)``, a list of pairs, or a list of ``{"images", "text"}`` dicts.
            text: the statement, or one statement per pair.
            batch_size: examples per forward pass (default: the pipeline's).
        """
        single, pairs = _pairs(images, text, "images", "text")
        examples = [self._example(imgs, t, None if single else i) for i, (imgs, t) in enumerate(pairs)]
        results = self._run(examples, self._verdicts, batch_size)
        return results[0] if single else results

    def _verdicts(self, batch: BatchFeature) -> list[dict[str, Any]]:
        scores, ids = self._logits(batch).softmax(dim=-1).max(dim=-1)  # each (B,)
        return [{"label": bool(i), "score": s} for s, i in zip(scores.tolist(), ids.tolist())]


# ----------------------------------------------------------------------------- token classification


class TokenClassificationPipeline(Pipeline):
    """``tag(image, text) -> [{"token", "label", "score", "index"}]`` for every word piece of the text.

    ``index`` is the token's position in ``input_ids``; special tokens and padding are left out. A list
    of images (one text for all, or one text each) or of ``{"image", "text"}`` dicts gives one list each.
    """

    task = "token-classification"

    def __call__(
        self, image: Any = None, text: str | Sequence[str] | None = None, batch_size: int | None = None
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Label every token of the text.

        Args:
            image: one image, a list of images, or a list of ``{"image", "text"}`` dicts.
            text: the text, or one text per image.
            batch_size: examples per forward pass (default: the pipeline's).
        """
        single, pairs = _pairs(image, text, "image", "text")
        examples = [self._example(img, t, None if single else i) for i, (img, t) in enumerate(pairs)]
        results = self._run(examples, self._tags, batch_size)
        return results[0] if single else results

    def _tags(self, batch: BatchFeature) -> list[list[dict[str, Any]]]:
        scores, ids = self._logits(batch).softmax(dim=-1).max(dim=-1)  # each (B, Lt)
        tokenizer = self.processor.tokenizer
        special = set(tokenizer.all_special_ids)
        results = []
        for row_ids, row_mask, row_scores, row_labels in zip(
            batch["input_ids"].tolist(), batch["attention_mask"].tolist(), scores.tolist(), ids.tolist()
        ):
            tokens = tokenizer.convert_ids_to_tokens(row_ids)
            results.append(
                [
                    {
                        "token": tokens[t],
                        "label": self.labels[row_labels[t]],
                        "score": row_scores[t],
                        "index": t,
                    }
                    for t, (token_id, real) in enumerate(zip(row_ids, row_mask))
                    if real and token_id not in special
                ]
            )
        return results


# ----------------------------------------------------------------------------- fill-mask


class FillMaskPipeline(Pipeline):
    """``fill(image, "a [MASK] circle") -> {"sequence", "tokens", "scores"}``: the reference demo's filling.

    As in the reference's ViltForMaskedLM example: predict every [MASK], fill the one predicted with the
    highest probability (the leftmost on ties), run the model again on the new text, until no [MASK] is
    left. ``tokens``/``scores`` list the filled word pieces and their probabilities in text order.
    A list of images or of ``{"image", "text"}`` dicts gives one dict each, filled in batches.
    """

    task = "fill-mask"

    def __call__(
        self, image: Any = None, text: str | Sequence[str] | None = None, batch_size: int | None = None
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Fill the [MASK] tokens of the text.

        Args:
            image: one image, a list of images, or a list of ``{"image", "text"}`` dicts.
            text: the text with one or more ``[MASK]``, or one text per image.
            batch_size: examples per forward pass (default: the pipeline's).
        """
        single, pairs = _pairs(image, text, "image", "text")
        examples = [self._example(img, t, None if single else i) for i, (img, t) in enumerate(pairs)]
        results = self._run(examples, self._fill, batch_size)
        return results[0] if single else results

    def _example(self, images: Any, text: Any, index: int | None) -> Example:
        example = super()._example(images, text, index)
        mask = self.processor.tokenizer.mask_token
        if mask not in example.text:
            where = "" if index is None else f" (item {index})"
            raise ValueError(f"the text{where} has no {mask} to fill: {example.text!r}")
        return example

    def _fill(self, batch: BatchFeature) -> list[dict[str, Any]]:
        mask_id = self.processor.tokenizer.mask_token_id
        input_ids = batch["input_ids"].clone()  # (B, Lt), filled in place step by step
        to_fill = input_ids == mask_id  # (B, Lt) the positions of the original masks
        if not bool(to_fill.any(dim=1).all()):
            raise ValueError(
                f"a text's [MASK] fell beyond the model's {self.config.max_position_embeddings} tokens; shorten it"
            )
        probabilities = torch.zeros(input_ids.shape)  # (B, Lt) probability of each filled token
        for _ in range(int(to_fill.sum(dim=1).max())):
            remaining = input_ids == mask_id  # (B, Lt)
            rows = remaining.any(dim=1).nonzero().flatten()  # examples that still have a mask
            step = BatchFeature({key: value[rows] for key, value in batch.items()})
            step["input_ids"] = input_ids[rows]
            best, predicted = self._logits(step).softmax(dim=-1).max(dim=-1)  # each (b, Lt)
            best = best.masked_fill(~remaining[rows], -1.0)
            position = best.argmax(dim=1)  # (b,) the most confident mask; argmax takes the leftmost tie
            input_ids[rows, position] = predicted[torch.arange(len(rows)), position]
            probabilities[rows, position] = best[torch.arange(len(rows)), position]
        tokenizer = self.processor.tokenizer
        return [
            {
                "sequence": tokenizer.decode(ids, skip_special_tokens=True),
                "tokens": tokenizer.convert_ids_to_tokens(ids[where].tolist()),
                "scores": probs[where].tolist(),
            }
            for ids, where, probs in zip(input_ids, to_fill, probabilities)
        ]


# ----------------------------------------------------------------------------- retrieval


class ImageTextRetrievalPipeline(Pipeline):
    """``rank(images=[...], texts=[...]) -> (N, M) numpy scores``; ``rank.rank(...)`` sorts them.

    Every (image, text) pair is scored jointly (ViLT has no separate encoders), ``batch_size`` pairs per
    forward pass, with a progress bar. Each image is embedded once (patch projection, positions) and its
    image tokens reused for all M texts. ViltForImageAndTextRetrieval scores with its ``rank_output``;
    ViltForImageTextMatching with its "match" logit, the pretrained model's zero-shot score.
    """

    task = "image-text-retrieval"

    def __init__(self, model: Any, config: ViltConfig, *args: Any, **kwargs: Any) -> None:
        if not hasattr(model, "vilt"):
            raise ValueError(
                "image-text-retrieval embeds each image once through the torch model; use backend='torch'"
            )
        super().__init__(model, config, *args, **kwargs)

    def __call__(
        self,
        images: Sequence[Any] | None = None,
        texts: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Score every image against every text.

        Args:
            images: N images.
            texts: M texts.
            batch_size: (image, text) pairs per forward pass (default: the pipeline's).

        Returns:
            (N, M) float32 scores; higher means a better match.
        """
        images, texts = (
            _as_list(images if images is not None else []),
            _as_list(texts if texts is not None else []),
        )
        if not images or not texts:
            raise ValueError("pass a non-empty list of images= and a non-empty list of texts=")
        examples = [
            Example([image], "", self._processed_size([image], f" (item {i})"))
            for i, image in enumerate(images)
        ]
        for j, text in enumerate(texts):
            _check_text(text, f"text {j}")
        tokens = self.processor.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.config.max_position_embeddings,
            return_tensors="pt",
        )
        batch_size = _check_batch_size(self.batch_size if batch_size is None else batch_size)
        return self._score(examples, BatchFeature(tokens).to(self.device), batch_size)

    def _score(self, examples: list[Example], tokens: BatchFeature, batch_size: int) -> np.ndarray:
        from tqdm.auto import tqdm

        num_texts = tokens["input_ids"].shape[0]
        images_per_batch = max(1, batch_size // num_texts)
        chunks = _size_sorted_batches([e.size for e in examples], images_per_batch)
        scores = np.zeros((len(examples), num_texts), dtype=np.float32)
        encode = self.processor.image_processor
        prepared = _prefetched(
            chunks, lambda c: encode([examples[i].images[0] for i in c], return_tensors="pt")
        )
        with tqdm(total=scores.size, desc=self.task, unit="pair", disable=scores.size <= batch_size) as bar:
            for chunk, pixels in prepared:
                with torch.inference_mode():
                    image = self.model.vilt.embeddings.visual_embed(**self._to_device(pixels))
                for rows, cols, values in self._pair_scores(image, tokens, len(chunk), batch_size):
                    scores[np.asarray(chunk)[rows], cols] = values
                    bar.update(len(values))
        return scores

    def _pair_scores(
        self, image: Any, tokens: BatchFeature, num_images: int, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Scores of all (image in the chunk, text) pairs, ``batch_size`` at a time: (rows, cols, values)."""
        num_texts = tokens["input_ids"].shape[0]
        pairs = np.arange(num_images * num_texts)
        for start in range(0, len(pairs), batch_size):
            rows, cols = np.divmod(pairs[start : start + batch_size], num_texts)
            with torch.inference_mode():
                out = self.model(
                    input_ids=tokens["input_ids"][cols],
                    attention_mask=tokens["attention_mask"][cols],
                    token_type_ids=tokens["token_type_ids"][cols],
                    image_embeds=image.embeddings[rows],
                    pixel_mask=image.mask[rows],
                )
            # one score per pair: rank_output's (B, 1) logit, or the ITM head's (B, 2) "match" logit (class 1)
            yield rows, cols, out.logits[:, -1].float().cpu().numpy()

    def rank(
        self, images: Sequence[Any], texts: Sequence[str], top_k: int = 5, batch_size: int | None = None
    ) -> dict[str, Any]:
        """Score all pairs, then sort: the best images for each text and the best texts for each image.

        Returns:
            ``{"scores": (N, M) array, "text_to_images": [[{"index", "score"}] per text],
            "image_to_texts": [[{"index", "text", "score"}] per image]}``, each list best first.
        """
        scores = self(images=images, texts=texts, batch_size=batch_size)
        return {
            "scores": scores,
            "text_to_images": top_k_per_row(scores.T, top_k),
            "image_to_texts": [
                [{**hit, "text": texts[hit["index"]]} for hit in hits]
                for hits in top_k_per_row(scores, top_k)
            ],
        }


def top_k_per_row(scores: np.ndarray, top_k: int) -> list[list[dict[str, Any]]]:
    """For each row of a score matrix, its ``top_k`` columns best first as ``{"index", "score"}``."""
    top_k = _check_top_k(top_k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]  # (rows, top_k)
    return [[{"index": int(j), "score": float(row[j])} for j in cols] for row, cols in zip(scores, order)]


# ----------------------------------------------------------------------------- building a pipeline

PIPELINES: dict[str, type[Pipeline]] = {
    cls.task: cls
    for cls in (
        VisualQuestionAnsweringPipeline,
        NLVR2Pipeline,
        ImageTextRetrievalPipeline,
        FillMaskPipeline,
        TokenClassificationPipeline,
    )
}


def _task_class(task: str) -> type[Pipeline]:
    spec = find_task(task)
    if spec.pipeline is None:
        raise ViltInputError(
            f"no pipeline runs the {task!r} task on its own; choose one of {', '.join(PIPELINES)}"
        )
    return PIPELINES[spec.pipeline]


def _no_head_error(cls: type[Pipeline], source: str, architecture: str) -> ViltInputError:
    needed = " or ".join(cls.architectures)
    return ViltInputError(
        f"the {cls.task} task needs a {needed} ({cls.head}), but {source} is a {architecture}; "
        f"pass a model trained for {cls.task}"
    )


def _architecture(config: ViltConfig, cls: type[Pipeline], source: str) -> str:
    """The model class to load for the task: the checkpoint's own, which must have the task's head."""
    saved = [a for a in (config.architectures or []) if a in MODEL_CLASSES]
    if not saved:
        return cls.architectures[0]  # a config without architectures: trust the caller
    usable = [a for a in saved if a in cls.architectures]
    if not usable:
        raise _no_head_error(cls, source, saved[0])
    return usable[0]


def _model_source(model: str | os.PathLike[str] | None, cls: type[Pipeline]) -> str:
    if model is not None:
        return os.fspath(model)
    if cls is not VisualQuestionAnsweringPipeline:
        raise ValueError(
            f"the {cls.task} task needs a model: pass model= a hub id or a directory holding a "
            f"{' or '.join(cls.architectures)} (the bundled model only answers easy-VQA questions)"
        )
    return model_source(None)


def _load_processor(source: str | None) -> Any:
    """The processor saved with the model, or the default one (bundled vocabulary, 384-pixel images)."""
    from .processing import ViltProcessor

    if source is None:
        return ViltProcessor()
    try:
        return ViltProcessor.from_pretrained(source)
    except FileNotFoundError as err:
        logger.warning("%s has no processor files (%s); using the default ViltProcessor()", source, err)
        return ViltProcessor()


def read_model_config(source: str | os.PathLike[str]) -> ViltConfig:
    """The ``config.json`` of a model directory, ``bundled`` or a hub id."""
    return read_config(resolve_file(source, "config.json"))  # type: ignore[arg-type]


def _load_torch(source: str, architecture: str, device: torch.device, dtype: torch.dtype) -> Any:
    model_class = MODEL_CLASSES[architecture]
    return model_class.from_pretrained(source, torch_dtype=dtype, device=device).optimize_for_inference()


def load_model(
    model: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[Any, Any]:
    """Any ViLT checkpoint as the class its config names (ViltModel when it names none), with its processor.

    Args:
        model: a hub id or a directory; None = the bundled easy-VQA model.
        device, dtype: as for :func:`select_device_and_dtype`.

    Returns:
        (the model in eval mode, its processor).
    """
    source = model_source(model)
    config = read_model_config(source)
    architecture = next((a for a in config.architectures or [] if a in MODEL_CLASSES), "ViltModel")
    device, dtype = select_device_and_dtype(device, dtype)
    return _load_torch(source, architecture, device, dtype), _load_processor(source)


def _load_exported(
    source: str, backend: str, cls: type[Pipeline], device: torch.device, dtype: torch.dtype
) -> Any:
    """An exported model on onnxruntime (float32 or its int8 weights) or OpenVINO (computing in ``dtype``)."""
    from .export.runtime import load_exported

    options = {"dtype": dtype} if backend == "openvino" else {}
    model = load_exported(source, backend, device=device, **options)
    _architecture(model.config, cls, source)
    return model


def _prepare_instance(
    model: Any, cls: type[Pipeline], device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[Any, torch.device, torch.dtype]:
    """A model instance: check its head; move it only when device or dtype were given."""
    name = type(model).__name__
    if name not in cls.architectures:
        raise _no_head_error(cls, "the model passed", name)
    if device is not None or dtype is not None:
        device, dtype = select_device_and_dtype(device or model.device, dtype or model.dtype)
        model.to(device=device, dtype=dtype)
    model.eval()
    return model, model.device, model.dtype


def pipeline(
    task: str,
    model: str | os.PathLike[str] | Any | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    processor: Any = None,
    backend: str = "torch",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Pipeline:
    """Build a task pipeline (see the module docstring for the tasks and their call shapes).

    Args:
        task: "visual-question-answering" ("vqa"), "nlvr2", "image-text-retrieval" ("retrieval"),
            "fill-mask" or "token-classification".
        model: a hub id, a local directory, or a model instance; None = the bundled easy-VQA model (VQA only).
        device: "cpu", "cuda", "cuda:N"; None/"auto" picks (see :func:`select_device_and_dtype`).
        dtype: "float32", "bfloat16", "float16" or a torch dtype; None/"auto" picks.
        processor: a :class:`vilt.ViltProcessor`; default: the one saved with the model (or the default one).
        backend: "torch"; or, for a directory written by ``vilt export``, "onnxruntime" (float32, or its
            int8 weights) or "openvino" (computing in ``dtype``: bfloat16 by default on CPUs that have it).
        batch_size: examples per forward pass.

    Raises:
        ValueError: unknown task or backend, or a model without the task's head.
        FileNotFoundError / OSError: the model cannot be found or downloaded.
    """
    cls = _task_class(task)
    _check_batch_size(batch_size)
    if backend not in BACKENDS:
        raise ViltInputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if isinstance(model, torch.nn.Module):
        if backend != "torch":
            raise ViltInputError(
                f"a model instance runs on the torch backend; pass a directory exported for {backend}"
            )
        runner, device, dtype = _prepare_instance(model, cls, device, dtype)
        source = None
    else:
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(
                f"model must be a hub id, a directory or a ViLT model, got {type(model).__name__}"
            )
        source = _model_source(model, cls)
        if backend == "torch":
            device, dtype = select_device_and_dtype(device, dtype)
            runner = _load_torch(source, _architecture(read_model_config(source), cls, source), device, dtype)
        else:
            device, dtype = select_device_and_dtype(device or "cpu", dtype)
            runner = _load_exported(source, backend, cls, device, dtype)
            dtype = runner.dtype  # exported graphs take float32 inputs
    if processor is None:
        processor = _load_processor(source)
    return cls(runner, runner.config, processor, device, dtype, batch_size)
