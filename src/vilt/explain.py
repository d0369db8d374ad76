"""Where the model looks: per-word heatmaps over the image.

``explain(model, processor, image, text, method="rollout") -> Explanation`` runs the model once on the
image and text and scores, for every word of the text, every image patch:

* ``"ipot"``: word-patch alignment, as in the original ViLT demo (paper section 4.7). The cost between a
  text token and an image patch is 1 - cosine similarity of their final features; IPOT (inexact
  proximal-point optimal transport, Xie et al. 2020) finds the transport plan between the text tokens
  (without [CLS] and the closing [SEP]) and the valid image patches (without the image [CLS]), with the
  demo's constants: beta 0.1, 1000 iterations, one inner step. A token's heat on a patch is its row of
  the plan times the number of text tokens.
* ``"rollout"``: attention rollout (Abnar and Zuidema, 2020): the head-averaged attention of each layer,
  mixed half and half with the identity for the residual path and renormalised, multiplied through the
  layers; a token's heat on a patch is its rollout weight on that patch.

Which to use: IPOT is word-specific, but its maps are only as good as the alignment between word and
patch features that training left; the original demo used the model pretrained on 4M image-caption pairs
with the word-patch alignment loss. On the bundled easy-VQA model, trained on VQA alone, IPOT maps of
the word naming the shape mostly miss the shape, while rollout finds it (``examples/eval_explain.py``,
report in ``results/explain_eval.json``). Rollout maps of a question are much alike from word to word:
they show where the model looks while reading the question. Hence the default ``method="rollout"``.

A word made of several word pieces gets the mean heat of its pieces. Patch scores go onto the patch grid
through the model's ``patch_index`` output and are scaled to [0, 1] per word: IPOT heat as in the demo
(z-scored over the grid, clamped to [1, 3], so only clearly above-average patches show), rollout heat by
its minimum and maximum (rollout weights are smooth and positive; clamping would blank coarse grids).
Each patch's value then covers its pixels (nearest resizing, as the demo).

``draw(explanation, path)`` saves the image and one overlay per word (matplotlib, the ``explain``
extra, imported only there). ``vilt explain IMAGE -q TEXT -o out.png [--method ipot|rollout]`` does both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .alignment import cosine_cost, ipot

METHODS = ("ipot", "rollout")
IPOT_BETA = 0.1  # the demo's constants (pretraining used beta 0.5, 50 iterations)
IPOT_ITERATIONS = 1000
Z_CLAMP = (1.0, 3.0)  # the demo keeps z-scores in [1, 3]: only clearly above-average patches show


@dataclass
class Explanation:
    """Per-word heatmaps of one image and text.

    Attributes:
        image: the input image as RGB.
        text: the text explained.
        words: the words of the text (word pieces joined), in order.
        heatmaps: (num_words, H, W) float32 in [0, 1], at the image's resolution.
        method: "ipot" or "rollout".
    """

    image: Image.Image
    text: str
    words: list[str]
    heatmaps: np.ndarray
    method: str

    def heatmap(self, word: str) -> np.ndarray:
        """The (H, W) heatmap of the first occurrence of ``word`` (case-insensitive)."""
        lowered = [w.lower() for w in self.words]
        if word.lower() not in lowered:
            raise KeyError(f"{word!r} is not a word of {self.text!r}; its words are {self.words}")
        return self.heatmaps[lowered.index(word.lower())]


# ----------------------------------------------------------------------------- rollout


def attention_rollout(attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(L, L) rollout of one example's attention: prod over layers of renormalised (A + I) / 2.

    Args:
        attentions: per layer (1, heads, L, L) attention probabilities.
    """
    rollout = torch.eye(attentions[0].shape[-1], dtype=torch.float32)  # (L, L)
    for layer in attentions:
        mixed = 0.5 * layer[0].float().mean(dim=0) + 0.5 * torch.eye(layer.shape[-1])  # (L, L)
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


# ----------------------------------------------------------------------------- heatmaps


def _words(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Group WordPiece tokens into words: a piece starting with ``##`` continues the previous word."""
    words: list[tuple[str, list[int]]] = []
    for index, token in enumerate(tokens):
        if token.startswith("##") and words:
            text, pieces = words[-1]
            words[-1] = (text + token[2:], [*pieces, index])
        else:
            words.append((token, [index]))
    return words


def _z_clamped(grid: torch.Tensor) -> torch.Tensor:
    """The demo's scaling of IPOT heat, (words, Hp, Wp): z-score per word, clamp to [1, 3], map to [0, 1]."""
    mean = grid.mean(dim=(-2, -1), keepdim=True)
    std = grid.std(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
    clamped = ((grid - mean) / std).clamp(*Z_CLAMP)
    return (clamped - Z_CLAMP[0]) / (Z_CLAMP[1] - Z_CLAMP[0])


def _min_max(grid: torch.Tensor) -> torch.Tensor:
    """Rollout heat, (words, Hp, Wp), scaled per word to [0, 1]."""
    low = grid.amin(dim=(-2, -1), keepdim=True)
    high = grid.amax(dim=(-2, -1), keepdim=True)
    return (grid - low) / (high - low).clamp(min=1e-12)


_SCALINGS = {"ipot": _z_clamped, "rollout": _min_max}


def _rgb_pixels(processor: Any, image: Any) -> np.ndarray:
    """(H, W, 3) uint8: the image as the processor reads it (any accepted input), before resizing."""
    raw = processor.image_processor(
        image, do_resize=False, do_rescale=False, do_normalize=False, return_tensors="np"
    )["pixel_values"][0]  # (3, H, W) pixel levels
    return raw.transpose(1, 2, 0).astype(np.uint8)


def _token_patch_scores(out: Any, text_length: int, method: str) -> torch.Tensor:
    """(Lt - 2, Li) heat of every text token between [CLS] and the last [SEP] on every valid patch."""
    hidden = out.last_hidden_state[0].float()  # (L, D)
    valid = out.image_mask[0, 1:].bool()  # (Li,) patches that are not padding
    first, last = 1, text_length - 1  # skip [CLS] and the closing [SEP]
    if method == "ipot":
        text = hidden[None, first:last]  # (1, m, D)
        patches = hidden[None, text_length + 1 :][:, valid]  # (1, n, D), the image [CLS] left out
        cost = cosine_cost(text, patches)  # (1, m, n)
        no_pad = (
            torch.zeros(cost.shape[:2], dtype=torch.bool),
            torch.zeros(1, cost.shape[2], dtype=torch.bool),
        )
        plan = ipot(cost, *no_pad, beta=IPOT_BETA, iterations=IPOT_ITERATIONS)  # (1, n, m)
        return plan[0].T * cost.shape[1]  # (m, n)
    rollout = attention_rollout(out.attentions)  # (L, L)
    return rollout[first:last, text_length + 1 :][:, valid]  # (m, n)


def explain(model: Any, processor: Any, image: Any, text: str, method: str = "rollout") -> Explanation:
    """Per-word heatmaps of where ``model`` looks in ``image`` while reading ``text``.

    Args:
        model: any ViLT model (a head model with ``.vilt``, or a bare ViltModel).
        processor: the model's :class:`vilt.ViltProcessor`.
        image: a path, bytes, PIL image or array.
        text: the text (a question, a caption...).
        method: "rollout" (attention rollout) or "ipot" (word-patch alignment, as the original demo).

    Returns:
        An :class:`Explanation`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the text to explain is empty; pass a question or caption")
    base = getattr(model, "vilt", model)
    inputs = processor(
        images=image,
        text=text,
        truncation=True,
        max_length=base.config.max_position_embeddings,
        return_tensors="pt",
    )
    parameter = next(base.parameters())
    with torch.inference_mode():
        out = base(
            **inputs.to(parameter.device, parameter.dtype),
            output_attentions=method == "rollout",
            return_dict=True,
        )
    text_length = inputs["input_ids"].shape[1]
    if text_length < 3:
        raise ValueError(f"{text!r} has no word between [CLS] and [SEP] to explain")
    scores = _token_patch_scores(out, text_length, method).cpu()  # (m, n)
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0, 1:-1].tolist())
    words = _words(tokens)
    per_word = torch.stack([scores[pieces].mean(dim=0) for _, pieces in words])  # (num_words, n)
    hp, wp = out.image_grid_size
    index = out.patch_index[0][out.image_mask[0, 1:].bool()].cpu()  # (n, 2) row, col of each patch
    grid = torch.zeros(len(words), hp, wp)  # (num_words, Hp, Wp)
    grid[:, index[:, 0], index[:, 1]] = per_word
    pixels = _rgb_pixels(processor, image)
    # each patch's heat covers its pixels (nearest, as the demo), (num_words, 1, H, W)
    heat = F.interpolate(_SCALINGS[method](grid)[:, None], size=pixels.shape[:2], mode="nearest")
    return Explanation(
        image=Image.fromarray(pixels),
        text=text,
        words=[word for word, _ in words],
        heatmaps=heat[:, 0].clamp(0, 1).numpy(),  # (num_words, H, W)
        method=method,
    )


# ----------------------------------------------------------------------------- drawing


def draw(
    explanation: Explanation, path: str | os.PathLike[str], columns: int = 4, title: str | None = None
) -> None:
    """Save the image and, for each word, its heatmap overlaid on the image.

    Args:
        explanation: what :func:`explain` returned.
        path: the output image file (the extension picks the format: .png, .jpg, .pdf, .svg).
        columns: panels per row.
        title: the figure title (default: the text and the method).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("drawing heatmaps needs matplotlib: pip install 'vilt[explain]'") from err
    panels = 1 + len(explanation.words)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(explanation.image)
    axes.flat[0].set_title("image")
    for ax, word, heat in zip(axes.flat[1:], explanation.words, explanation.heatmaps):
        ax.imshow(explanation.image)
        ax.imshow(heat, cmap="jet", alpha=0.5 * heat, vmin=0.0, vmax=1.0)
        ax.set_title(word)
    figure.suptitle(title or f"{explanation.text}  ({explanation.method})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
