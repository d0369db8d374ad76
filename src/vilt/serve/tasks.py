"""The served tasks: which pipeline answers each endpoint, and how a batch of requests runs through it.

Each endpoint ``/v1/<name>`` is a :class:`Task`. Its requests are validated (:mod:`.schemas`) and their
images decoded and shrunk to what the model reads (:mod:`.images`) before they queue; a batch of them
then runs as one call of the task's pipeline (:mod:`vilt.pipelines`), which does the rest of the
preprocessing and the inference.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel

from ..tasks import find_task
from . import schemas

logger = logging.getLogger(__name__)

OVERLAY_SIDE = 384  # heatmap overlays are sent at most this large; the page stretches them over the image
EXPLAIN_SIDE = 768  # explain() makes one full-size heatmap per word, so larger images are shrunk first


@dataclass
class Work:
    """One validated request and its decoded images, waiting for a forward pass."""

    request: Any
    images: list[Image.Image]


# ----------------------------------------------------------------------------- batch runners
# Each takes the task's pipeline and a batch of Work, runs in the inference thread, and returns one
# response body per request, in order.


def _run_vqa(vqa: Any, batch: Sequence[Work]) -> list[dict[str, Any]]:
    top_k = max(work.request.top_k for work in batch)
    answers = vqa(
        [{"image": work.images[0], "question": work.request.question} for work in batch],
        top_k=top_k,
        batch_size=len(batch),
    )
    return [{"answers": found[: work.request.top_k]} for work, found in zip(batch, answers)]


def _run_nlvr2(nlvr2: Any, batch: Sequence[Work]) -> list[dict[str, Any]]:
    return nlvr2(
        [{"images": tuple(work.images), "text": work.request.statement} for work in batch],
        batch_size=len(batch),
    )


def _run_fill_mask(fill: Any, batch: Sequence[Work]) -> list[dict[str, Any]]:
    return fill(
        [{"image": work.images[0], "text": work.request.text} for work in batch], batch_size=len(batch)
    )


def _run_rank(rank: Any, batch: Sequence[Work]) -> list[dict[str, Any]]:
    return [{"scores": rank(images=work.images, texts=work.request.texts).tolist()} for work in batch]


def _run_explain(vqa: Any, batch: Sequence[Work]) -> list[dict[str, Any]]:
    from vilt.explain import explain

    results = []
    for work in batch:  # each image arrives shrunk to EXPLAIN_SIDE (Task.fit)
        found = explain(vqa.model, vqa.processor, work.images[0], work.request.question, work.request.method)
        height, width = found.heatmaps.shape[1:]
        results.append(
            {
                "words": found.words,
                "heatmaps": [heatmap_overlay(heat) for heat in found.heatmaps],
                "width": width,
                "height": height,
                "method": found.method,
            }
        )
    return results


def heatmap_overlay(heat: np.ndarray) -> str:
    """A (H, W) heatmap in [0, 1] as a PNG data URL: transparent where cold, red to yellow as it heats.

    The overlay is shrunk to at most :data:`OVERLAY_SIDE` pixels a side (the heat lives on a coarse
    patch grid, so nothing is lost) and drawn over the image by the client.
    """
    level = (heat * 255).round().astype(np.uint8)  # (H, W)
    rgba = np.stack(
        [np.full_like(level, 255), level, np.zeros_like(level), (level * 0.8).astype(np.uint8)], -1
    )
    overlay = Image.fromarray(rgba, mode="RGBA")  # (H, W, 4)
    overlay.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    overlay.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- the task table


@dataclass(frozen=True)
class Task:
    """One endpoint: its request and response, the pipeline behind it, and how a batch runs.

    Attributes:
        name: the endpoint is ``/v1/<name>``; also the metrics label.
        pipeline_task: the :func:`vilt.pipeline` task whose pipeline serves it.
        request, response: the pydantic models of the bodies.
        run: ``run(pipeline, batch) -> responses`` (blocking; runs in the inference thread).
        batched: whether requests share forward passes (rank and explain run one request at a time:
            a rank request is already N x M pairs, an explanation is one example's attention).
        fit: how uploaded images are shrunk before they queue: ``"model"`` to the size the model's image
            processor resizes them to (so the answer is unchanged), ``"explain"`` to at most
            :data:`EXPLAIN_SIDE` a side (the heatmaps are drawn at the image's size).
        input_errors: exceptions of this task's pipeline that mean the request was wrong (400), besides
            :class:`vilt.errors.ViltInputError`; any other exception is a server error (500, logged).
        summary, description: the OpenAPI summary and description.
        torch_only: needs the PyTorch model (explain reads its attention), so it is not served on an
            exported backend.
    """

    name: str
    pipeline_task: str
    request: type[BaseModel]
    response: type[BaseModel]
    run: Callable[[Any, Sequence[Work]], list[dict[str, Any]]]
    batched: bool
    fit: Literal["model", "explain"]
    input_errors: tuple[type[Exception], ...]
    summary: str
    description: str
    torch_only: bool = False


def _served(task: str, *fields: Any, endpoint: str | None = None, **named: Any) -> Task:
    """An endpoint of a task of :data:`vilt.tasks.TASKS`: its pipeline and its endpoint name from that table
    (``endpoint`` names another endpoint on the same pipeline, e.g. ``explain`` on VQA's)."""
    spec = find_task(task)
    assert spec.endpoint is not None and spec.pipeline is not None, f"{task} is not served"
    return Task(endpoint or spec.endpoint, spec.pipeline, *fields, **named)


_BODIES = (
    " The body is multipart/form-data (images as file uploads) or JSON (images as base64 strings, a "
    "`data:` URL prefix allowed)."
)
TASKS = (
    _served(
        "vqa", schemas.VQARequest, schemas.VQAResponse, _run_vqa,
        batched=True, fit="model", input_errors=(),
        summary="Answer a question about an image",
        description="The model's `top_k` most likely answers to a question about one image, best first, each "
        "with its sigmoid probability. Requests that arrive together share one forward pass." + _BODIES,
    ),
    _served(
        "vqa", schemas.ExplainRequest, schemas.ExplainResponse, _run_explain,
        endpoint="explain", batched=False, fit="explain", input_errors=(), torch_only=True,
        summary="Where the model looks for each word of a question",
        description="One heatmap per word of the question, as a transparent PNG overlay (a `data:` URL) to "
        "draw over the image: attention `rollout` (the default) or the `ipot` word-patch alignment. Images "
        f"are shrunk to at most {EXPLAIN_SIDE} pixels a side first; `width` and `height` give the size the "
        "heatmaps were made at." + _BODIES,
    ),
    _served(
        "nlvr2", schemas.NLVR2Request, schemas.NLVR2Response, _run_nlvr2,
        batched=True, fit="model", input_errors=(),
        summary="Check a statement against a pair of images",
        description="Whether a statement is true of a pair of images (NLVR2), with the probability of that "
        "label. Needs a `ViltForImagesAndTextClassification` model." + _BODIES,
    ),
    _served(
        "retrieval", schemas.RankRequest, schemas.RankResponse, _run_rank,
        batched=False, fit="model", input_errors=(),
        summary="Score N images against M texts",
        description="An N x M matrix of image-text match scores, higher for a better match. Needs a "
        "retrieval (`ViltForImageAndTextRetrieval`) or `ViltForImageTextMatching` model." + _BODIES,
    ),
    _served(
        "mlm", schemas.FillMaskRequest, schemas.FillMaskResponse, _run_fill_mask,
        batched=True, fit="model", input_errors=(ValueError,),  # no [MASK], or one past the model's tokens
        summary="Fill the [MASK] words of a text from an image",
        description="The text with each `[MASK]` filled from the image, most confident first, with the "
        "filled word pieces and their probabilities. A text without `[MASK]`, or whose `[MASK]` lies past "
        "the tokens the model reads, is a 400. Needs a `ViltForMaskedLM` model." + _BODIES,
    ),
)  # fmt: skip
MODEL_TASKS = {
    "ViltForQuestionAnswering": "visual question answering",
    "ViltForImagesAndTextClassification": "checking statements against image pairs (NLVR2)",
    "ViltForImageAndTextRetrieval": "image-text retrieval",
    "ViltForImageTextMatching": "image-text matching",
    "ViltForMaskedLM": "filling masked words from an image",
}


def model_card(pipeline: Any, name: str | None) -> dict[str, Any]:
    """The card of a pipeline's model: its ``config.json``'s ``model_card`` (``name``, ``description``)
    when it has one, else ``name`` (how the model was given) and what its class says."""
    architecture = type(pipeline.model).__name__
    card = getattr(pipeline.config, "extra", {}).get("model_card")
    card = card if isinstance(card, dict) else {}
    given = card.get("name")
    description = card.get("description")
    return {
        "name": given if isinstance(given, str) and given else name or architecture,
        "architecture": architecture,
        "task": MODEL_TASKS.get(architecture, "vision and language"),
        "answers": pipeline.config.num_labels if architecture == "ViltForQuestionAnswering" else None,
        "description": description if isinstance(description, str) and description else None,
    }


SERVED_PIPELINES = tuple(dict.fromkeys(task.pipeline_task for task in TASKS))


def load_pipelines(
    model: str | None, device: str | None = None, dtype: str | None = None, backend: str = "torch"
) -> dict[str, Any]:
    """Load ``model`` once and build every served pipeline its head supports.

    Args:
        model: a hub id or a local directory; None = the bundled easy-VQA model.
        device, dtype: as :func:`vilt.pipeline` takes them (None = pick the fastest).
        backend: "torch", or "onnxruntime"/"openvino" for a directory written by ``vilt export``.

    Returns:
        pipeline task -> pipeline, sharing one model and processor.

    Raises:
        ValueError: the model has none of the heads the server serves (or a bad device/dtype).
        FileNotFoundError / OSError: the model cannot be found.
    """
    from vilt.pipelines import pipeline

    loaded: dict[str, Any] = {}
    reasons = []
    for task in SERVED_PIPELINES:
        first = next(iter(loaded.values()), None)
        try:
            if first is None:
                loaded[task] = pipeline(task, model=model, device=device, dtype=dtype, backend=backend)
            else:
                loaded[task] = pipeline(task, model=first.model, processor=first.processor)
        except ValueError as err:
            reasons.append(str(err))
            logger.info("not serving %s: %s", task, err)
    if not loaded:
        raise ValueError(f"nothing to serve: {' | '.join(dict.fromkeys(reasons))}")  # each reason once
    return loaded
