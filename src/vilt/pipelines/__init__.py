"""Task pipelines: answer, verify, rank, fill and tag in one call, batched and in input order.

The interface (the HTTP server, the CLI and the exported backends build against it; keep it stable)::

    vilt.pipeline(task, model=None, device=None, dtype=None, processor=None, backend="torch",
                  batch_size=32, timeout=10.0) -> Pipeline

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

``model`` is a hub id, a local directory, ``"bundled"`` (the bundled easy-VQA model) or a model instance.
``model=None`` means the bundled model for "visual-question-answering"; every other task needs a model
and says so. A model without the head a task needs raises :class:`vilt.errors.ViltInputError` naming the
task, the model's architecture and the head needed.

**Inputs.** Images are file paths, ``http://``/``https://`` URLs (fetched once per call, within
``timeout`` seconds), encoded bytes, base64 text or ``data:`` URLs, PIL images, numpy arrays or torch
tensors. Each is loaded as transformers' pipelines load images (:func:`vilt.images.load_pipeline_image`:
EXIF orientation applied, PIL images included, then RGB). A call takes one input or a list; every input
is checked before any work, and a bad one raises :class:`vilt.errors.ViltInputError` naming its item
(``FileNotFoundError`` for a missing file). Texts longer than the model's ``max_position_embeddings``
(40) tokens are cut to it, with a warning through the ``logging`` module (once per pipeline) naming how
many tokens were dropped.

**Batching.** Lists are sorted by the size the processor will resize each image to, cut into batches of
``batch_size`` (so one batch holds similar sizes and little padding), run with the next batch
preprocessed in a background thread while the model runs, and returned in input order.

**Device and dtype** (:func:`vilt.devices.select_device_and_dtype`): CUDA with bfloat16 when a GPU is
present, else the CPU with bfloat16 when it multiplies bfloat16 in hardware (AVX512-BF16, AMX, ARM bf16:
several times faster), else float32; never a precision the CPU has no hardware for. ``dtype="int8"``
gives the encoder int8 weights (float32 elsewhere): the fast choice on CPUs without bfloat16 hardware.
A model instance stays where and as it is unless ``device``/``dtype`` are given.

**The model contract.** A pipeline only needs ``pipeline.model``, a callable taking keyword tensors
``input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask`` (as the processor makes them) and
returning an object with ``.logits``, and ``pipeline.config``, a :class:`vilt.ViltConfig`. With
``backend="onnxruntime"`` or ``"openvino"`` the model is ``vilt.export.load_exported(directory, backend,
device=...)`` (an ``OnnxModel`` or ``OpenVinoModel``), which honours that contract; everything else is
shared. Image-text retrieval embeds each image once and pairs its tokens with every text, so it needs
the torch backend.

The package: :mod:`.base` (the shared call: checks, batches, order), :mod:`.loading` (model, backend and
processor), one module per task (:mod:`.vqa`, :mod:`.nlvr2`, :mod:`.retrieval`, :mod:`.fill_mask`,
:mod:`.token_classification`), and here the registry and :func:`pipeline`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..devices import select_device_and_dtype
from ..errors import ViltInputError
from ..images import DEFAULT_TIMEOUT
from ..tasks import find_task
from .base import DEFAULT_BATCH_SIZE, Pipeline, PipelineInput, check_batch_size
from .fill_mask import FillMaskPipeline
from .loading import BACKENDS, load_model, load_processor, load_runner, read_model_config
from .nlvr2 import NLVR2Pipeline
from .retrieval import ImageTextRetrievalPipeline, top_k_per_row
from .token_classification import TokenClassificationPipeline
from .vqa import VisualQuestionAnsweringPipeline

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "PIPELINES",
    "FillMaskPipeline",
    "ImageTextRetrievalPipeline",
    "NLVR2Pipeline",
    "Pipeline",
    "PipelineInput",
    "TokenClassificationPipeline",
    "VisualQuestionAnsweringPipeline",
    "load_model",
    "pipeline",
    "read_model_config",
    "select_device_and_dtype",
    "top_k_per_row",
]

# pipeline task name (vilt.tasks.TaskSpec.pipeline) -> the class that runs it
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


def pipeline(
    task: str,
    model: str | os.PathLike[str] | Any | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    processor: Any = None,
    backend: str = "torch",
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
) -> Pipeline:
    """Build a task pipeline (see the module docstring for the tasks and their call shapes).

    Args:
        task: "visual-question-answering" ("vqa"), "nlvr2", "image-text-retrieval" ("retrieval"),
            "fill-mask" or "token-classification".
        model: a hub id, a local directory, ``"bundled"``, or a model instance; None = the bundled
            easy-VQA model (VQA only).
        device: "cpu", "cuda", "cuda:N"; None/"auto" picks (see :func:`select_device_and_dtype`).
        dtype: "float32", "bfloat16", "float16", "int8" (int8 weights, on the CPU) or a torch dtype;
            None/"auto" picks.
        processor: a :class:`vilt.ViltProcessor`; default: the one saved with the model (or the default one).
        backend: "torch"; or, for a directory written by ``vilt export``, "onnxruntime" (float32, or its
            int8 weights) or "openvino" (computing in ``dtype``: bfloat16 by default on CPUs that have it).
        batch_size: inputs per forward pass (each call may override it).
        timeout: seconds to wait for an image URL (each call may override it).

    Raises:
        ViltInputError: unknown task or backend, a bad batch size, or a model without the task's head.
        FileNotFoundError / OSError: the model cannot be found or downloaded.
    """
    spec = find_task(task)
    if spec.pipeline is None:
        raise ViltInputError(
            f"no pipeline runs the {task!r} task on its own; choose one of {', '.join(PIPELINES)}"
        )
    cls = PIPELINES[spec.pipeline]
    check_batch_size(batch_size)
    runner, device, dtype, source = load_runner(spec, model, device, dtype, backend)
    if processor is None:
        processor = load_processor(source)
    return cls(runner, runner.config, processor, device, dtype, batch_size, timeout)
