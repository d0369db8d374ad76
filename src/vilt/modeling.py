"""ViLT: Vision-and-Language Transformer Without Convolution or Region Supervision.

Kim, Son and Kim, ICML 2021 (arXiv 2102.03334). References: the original code (dandelin/ViLT) and
Hugging Face ``transformers`` (``modeling_vilt.py``), whose outputs this file reproduces to 1e-5.

The contract:

* Parameter names are the reference's state-dict keys, so reference checkpoints load with no remapping.
* The token sequence is ``[text (Lt)] [image CLS] [patches of each image (Li)]``. Each image
  contributes its valid patches in row-major order, then padding tokens, as in the reference.
* Unlike the reference, eval is deterministic: patches keep their row-major order instead of being
  shuffled. The encoder is permutation-equivariant, so only float summation order changes.
* The image embedding is vectorised over the batch: no Python loop over samples, and at most one
  host sync (to learn the number of image tokens when images are padded).
* Each layer is written once (:class:`ViltLayer`), from blocks of :mod:`vilt.layers`; eval calls that
  need no gradient, head mask or attention probabilities run those blocks on cached, prepacked weights
  (the fast path, on by default: :meth:`ViltPreTrainedModel.set_fast_path`), with the CPU-dependent
  choices made by :mod:`vilt.tuning`'s probes.

Shape vocabulary: B batch, Lt text tokens, Li image tokens (patches kept), L = Lt + 1 + Li,
D hidden size, H heads, Dh head size, Hp x Wp the patch grid of the (padded) pixel batch,
N = Hp * Wp, G = image_size // patch_size (the trained position grid).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration import ViltConfig
from .devices import warn_if_slow
from .errors import ViltInputError
from .inputs import check_pixels, check_same_batch, check_text
from .layers import (
    CachedProduct,
    Dense,
    PatchProjection,
    QKVProjection,
    attention_length,
    batch_pieces,
    fast_layer_pays,
    fast_patches_pay,
    fast_path_default,
    inference_only,
    padded_bias,
)

# ----------------------------------------------------------------------------- outputs


class ModelOutput:
    """Base of the output dataclasses: attribute, key and tuple-index access, like transformers.

    ``keys()``/``to_tuple()`` list the fields that are not None, in declaration order, which is the
    reference's ``return_dict=False`` tuple. Fields named in ``_extra_fields`` (our additions) are
    reachable by attribute and key but are left out of the tuple, so indices match the reference.
    """

    _extra_fields: ClassVar[tuple[str, ...]] = ()

    def keys(self) -> list[str]:
        return [
            f.name
            for f in fields(self)  # type: ignore[arg-type]
            if f.name not in self._extra_fields and getattr(self, f.name) is not None
        ]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.keys())

    def values(self) -> list[Any]:
        return list(self.to_tuple())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None)
        return default if value is None else value

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if getattr(self, key, None) is None:
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and getattr(self, key, None) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class ViltModelOutput(ModelOutput):
    """Output of :class:`ViltModel` (the reference's ``BaseModelOutputWithPooling`` plus extras).

    Attributes:
        last_hidden_state: (B, L, D) after the final LayerNorm.
        pooler_output: (B, D) tanh(Linear(text [CLS])).
        hidden_states: num_layers + 1 tensors (B, L, D); the last one is before the final LayerNorm.
        attentions: num_layers tensors (B, H, L, L) of attention probabilities.
        patch_index: (B, Li) row and column of each image token on the patch grid, (B, Li, 2).
            None when ``image_embeds`` were given.
        image_grid_size: (Hp, Wp), the patch grid of the padded pixel batch.
        text_mask: (B, Lt) 1 for real text tokens.
        image_mask: (B, 1 + Li) 1 for the image CLS and valid patches, 0 for padding tokens.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    patch_index: torch.Tensor | None = None
    image_grid_size: tuple[int, int] | None = None
    text_mask: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None

    _extra_fields = ("patch_index", "image_grid_size", "text_mask", "image_mask")


# ----------------------------------------------------------------------------- activations

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    """The activation module for ``config.hidden_act``."""
    return _ACTIVATIONS[name]()


# ----------------------------------------------------------------------------- embeddings


class TextEmbeddings(nn.Module):
    """BERT embeddings: LayerNorm(word + segment + position), then dropout."""

    position_ids: torch.Tensor  # buffers, (1, max_position_embeddings)
    token_type_ids: torch.Tensor

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        n = config.max_position_embeddings
        self.register_buffer("position_ids", torch.arange(n).unsqueeze(0), persistent=False)  # (1, n)
        self.register_buffer("token_type_ids", torch.zeros(1, n, dtype=torch.long), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (B, Lt, D)
        length = inputs_embeds.shape[1]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :length]  # (1, Lt), broadcast over B
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(self.position_ids[:, :length])
        return self.dropout(self.LayerNorm(embeddings))  # (B, Lt, D)


class ViltPatchEmbeddings(nn.Module):
    """Non-overlapping P x P patches projected by a strided convolution (``projection``).

    In float32 it is the reference's convolution, bit for bit. In reduced precision (bfloat16 / float16
    weights or autocast) the same sum runs as one matrix product over the flattened patches: faster on
    CPU (the patch table of benchmarks/bench_kernels.py), and ~8x faster in its bfloat16 backward than
    the oneDNN convolution's. On the fast path (``fast``, decided by :class:`ViltModel`) the product
    runs on a prepacked weight, in float32 too (same sum, different rounding).
    """

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = PatchProjection(config.num_channels, config.hidden_size, config.patch_size)

    def forward(self, pixel_values: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, Hp, Wp, D) patch embeddings, Hp = H // P and Wp = W // P; ``fast``
        where a probe found the prepacked product faster here (:func:`vilt.layers.fast_patches_pay`)."""
        weight = self.projection.weight  # (D, C, P, P)
        pixel_values = pixel_values.to(dtype=weight.dtype)
        fast = fast and fast_patches_pay(pixel_values, self.patch_size, self._embed, *weight.shape)
        return self._embed(pixel_values, fast)

    def _embed(self, pixel_values: torch.Tensor, fast: bool) -> torch.Tensor:
        weight = self.projection.weight  # (D, C, P, P)
        float32 = weight.dtype == torch.float32 and not torch.is_autocast_enabled(weight.device.type)
        if float32 and not fast:
            return self.projection(pixel_values).permute(0, 2, 3, 1)  # (B, Hp, Wp, D)
        return self.patch_product(pixel_values, fast)

    def patch_product(self, pixel_values: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """The convolution as a matrix product: (B, C, H, W) -> (B, Hp, Wp, D); ``fast``: on the
        prepacked weight.

        Rows and columns past the last whole patch are dropped, as the strided convolution does.
        """
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        hp, wp = h // p, w // p  # at least 1 each: ViltModel checks the image size
        x = pixel_values[:, :, : hp * p, : wp * p]
        x = x.reshape(b, c, hp, p, wp, p).permute(0, 2, 4, 1, 3, 5)  # (B, Hp, Wp, C, P, P)
        x = x.reshape(b, hp, wp, c * p * p)  # (B, Hp, Wp, C*P*P), one row per patch
        return self.projection.product(x, fast)  # (B, Hp, Wp, D)


@dataclass
class ImageTokens:
    """The image part of the sequence (:meth:`ViltModel.embed_images`): pass ``embeddings`` as
    ``image_embeds`` with ``pixel_mask=mask`` to reuse them with any text."""

    embeddings: torch.Tensor  # (B, 1 + Li, D), image CLS first, position embeddings added
    mask: torch.Tensor  # (B, 1 + Li) long, 1 = real token
    patch_index: torch.Tensor | None  # (B, Li, 2) (row, col) on the patch grid
    grid_size: tuple[int, int] | None  # (Hp, Wp)

    def select(self, index: torch.Tensor | np.ndarray | Sequence[int] | slice) -> ImageTokens:
        """The tokens of the images at ``index`` (repeats allowed), e.g. one row per (image, text) pair."""
        if not isinstance(index, (torch.Tensor, slice)):
            index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        patch_index = None if self.patch_index is None else self.patch_index[index]
        return ImageTokens(self.embeddings[index], self.mask[index], patch_index, self.grid_size)


def _bilinear_axis(size: torch.Tensor, out_len: int, grid_len: int) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of an align_corners=True bilinear resize, per image.

    Resizing a ``grid_len`` axis to ``size[b]`` samples (b over the batch), evaluated at output
    positions 0..out_len-1. Positions past ``size[b]`` are marked invalid. Mirrors PyTorch's
    ``upsample_bilinear2d`` arithmetic so that the result matches ``F.interpolate``.

    Returns:
        i0, i1: (B, out_len) long source indices; w0, w1: (B, out_len) weights; valid: (B, out_len).
    """
    pos = torch.arange(out_len, device=size.device)  # (out_len,)
    numerator = torch.full(size.shape, float(grid_len - 1), device=size.device)  # not `int / tensor`: that
    scale = torch.where(
        size > 1, numerator / (size - 1).clamp(min=1).float(), 0.0
    )  # is reciprocal-then-multiply
    src = scale[:, None] * pos[None, :].float()  # (B, out_len)
    i0 = src.long().clamp(max=grid_len - 1)
    w1 = src - i0.float()
    i1 = (i0 + 1).clamp(max=grid_len - 1)
    valid = pos[None, :] < size[:, None]  # (B, out_len)
    return i0, i1, 1.0 - w1, w1, valid


def _tracing() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing the call: then the graph must not depend
    on values (no host sync), so padded tokens stay in the sequence, masked, instead of being dropped."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class ViltEmbeddings(nn.Module):
    """Text and image embeddings, each plus its modality embedding, concatenated."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.image_size // config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid + 1, config.hidden_size))
        self.text_embeddings = TextEmbeddings(config)
        self.patch_embeddings = ViltPatchEmbeddings(config)
        self.token_type_embeddings = nn.Embedding(config.modality_type_vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    # -- image tokens -----------------------------------------------------------------------
    def patch_position_embeddings(
        self, height: torch.Tensor, width: torch.Tensor, hp: int, wp: int
    ) -> torch.Tensor:
        """The trained G x G position grid resized to each image's valid patch grid.

        Bilinear with align_corners=True to (height[b], width[b]), zero outside it, on a (hp, wp)
        canvas: exactly the reference's per-sample ``F.interpolate`` + ``F.pad``, for all samples at once.

        Args:
            height, width: (B,) valid patch rows and columns per image.
        Returns:
            (B, hp, wp, D)
        """
        g = self.config.image_size // self.config.patch_size
        grid = self.position_embeddings[0, 1:].reshape(g, g, -1)  # (G, G, D)
        r0, r1, rw0, rw1, r_ok = _bilinear_axis(height, hp, g)  # each (B, hp)
        c0, c1, cw0, cw1, c_ok = _bilinear_axis(width, wp, g)  # each (B, wp)
        r0, r1, rw0, rw1 = r0[:, :, None], r1[:, :, None], rw0[:, :, None, None], rw1[:, :, None, None]
        c0, c1, cw0, cw1 = c0[:, None, :], c1[:, None, :], cw0[:, None, :, None], cw1[:, None, :, None]
        top = cw0 * grid[r0, c0] + cw1 * grid[r0, c1]  # (B, hp, wp, D)
        bottom = cw0 * grid[r1, c0] + cw1 * grid[r1, c1]  # (B, hp, wp, D)
        pos = rw0 * top + rw1 * bottom  # (B, hp, wp, D)
        inside = (r_ok[:, :, None] & c_ok[:, None, :])[..., None]  # (B, hp, wp, 1)
        return pos * inside.to(pos.dtype)

    def unpadded_position_embeddings(self, hp: int, wp: int) -> torch.Tensor:
        """Position embeddings of an unpadded hp x wp patch grid, (1, hp * wp, D).

        The trained grid itself when hp = wp = G (an align_corners resize of G to G is the identity,
        bit for bit), else its bilinear resize computed once for the whole batch.
        """
        g = self.config.image_size // self.config.patch_size
        if (hp, wp) == (g, g):
            return self.position_embeddings[:, 1:]  # (1, N, D)
        device = self.position_embeddings.device
        size = torch.tensor([hp], device=device), torch.tensor([wp], device=device)
        return self.patch_position_embeddings(*size, hp, wp).reshape(1, hp * wp, -1)  # (1, N, D)

    def _token_order(
        self, valid: torch.Tensor, num_tokens: int, max_image_length: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Which patches become image tokens, and in which order: (B, num_tokens) flat patch indices.

        * Eval, or training without a cap: every valid patch in row-major order, then padding
          patches in row-major order (deterministic; the reference shuffles here).
        * Training with ``max_image_length > 0``: a random subset of valid patches, as the
          original pretraining does (uses ``generator`` when given).
        * Eval with ``max_image_length > 0``: an evenly spaced subset of each image's valid
          patches (rank ``floor(k * valid / num_tokens)``), in row-major order.
        """
        b, n = valid.shape
        flat = torch.arange(n, device=valid.device).expand(b, n)  # (B, N)
        if self.training and max_image_length > 0:
            noise = torch.rand(b, n, device=valid.device, generator=generator)
            key = noise + (~valid).to(noise.dtype) * 2.0  # valid patches first, random order
        else:
            key = flat + (~valid).long() * n  # valid patches first, row-major order
        order = key.argsort(dim=1)  # (B, N)
        if self.training or max_image_length <= 0:
            return order[:, :num_tokens]
        counts = valid.sum(dim=1, keepdim=True)  # (B, 1)
        k = torch.arange(num_tokens, device=valid.device)[None, :]  # (1, num_tokens)
        ranks = torch.where(counts >= num_tokens, k * counts // num_tokens, k)  # (B, num_tokens)
        return order.gather(1, ranks)

    def visual_embed(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None,
        max_image_length: int = -1,
        generator: torch.Generator | None = None,
        fast: bool = False,
    ) -> ImageTokens:
        """Patch embeddings + interpolated positions + image CLS, with per-image patch selection.

        Args:
            pixel_values: (B, C, H, W) padded pixel batch.
            pixel_mask: (B, H, W), 1 on real pixels; None means every pixel is real.
            max_image_length: image tokens per image; -1 keeps every valid patch.
            generator: RNG for the random patch sampling of training with max_image_length > 0.
            fast: run the patch projection on its cached product (see :class:`ViltModel`).
        """
        x = self.patch_embeddings(pixel_values, fast)  # (B, Hp, Wp, D)
        b, hp, wp, _ = x.shape
        n = hp * wp
        x = x.reshape(b, n, -1)  # (B, N, D), row-major patches
        rows = torch.arange(hp, device=x.device)
        cols = torch.arange(wp, device=x.device)
        patch_index = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(
            1, n, 2
        )  # (1, N, 2)

        if pixel_mask is None:  # every patch is real: one shared position grid, no selection needed
            pos = self.unpadded_position_embeddings(hp, wp).to(x.dtype)  # (1, N, D)
            valid = torch.ones(b, n, dtype=torch.bool, device=x.device)  # (B, N)
            num_tokens = n if max_image_length <= 0 else min(n, max_image_length)
            least = n
        else:
            patch_mask = (
                F.interpolate(pixel_mask[:, None].float(), size=(hp, wp)).long()[:, 0] != 0
            )  # (B, Hp, Wp)
            height = patch_mask[:, :, 0].sum(dim=1)  # (B,) valid rows, counted down column 0
            width = patch_mask[:, 0, :].sum(dim=1)  # (B,) valid columns, counted along row 0
            valid = patch_mask.flatten(1)  # (B, N)
            counts = valid.sum(dim=1)  # (B,)
            if _tracing():  # a compiled or exported graph keeps every patch; padding stays masked
                most = least = n
            else:
                most, least = torch.stack([counts.max(), counts.min()]).tolist()  # the one host sync
            if least == 0:
                empty = (counts == 0).nonzero().flatten().tolist()
                raise ViltInputError(
                    f"pixel_mask marks no pixel of image(s) {empty} as valid (at the top-left pixel of "
                    "each patch); every image needs at least one real patch. Pass the pixel_mask the "
                    "processor returns, or None when the images are not padded."
                )
            if least == n and not _tracing():  # no padding: one shared grid
                pos = self.unpadded_position_embeddings(hp, wp).to(x.dtype)  # (1, N, D)
            else:
                pos = (
                    self.patch_position_embeddings(height, width, hp, wp).reshape(b, n, -1).to(x.dtype)
                )  # (B, N, D)
            num_tokens = most if max_image_length <= 0 else min(most, max_image_length)

        patch_index = patch_index.expand(b, n, 2)
        if num_tokens < n or least < n:  # some images are padded or capped: choose tokens per image
            order = self._token_order(valid, num_tokens, max_image_length, generator)  # (B, Li)
            x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))  # (B, Li, D)
            pos = pos.expand(b, -1, -1).gather(
                1, order[..., None].expand(-1, -1, pos.shape[-1])
            )  # (B, Li, D)
            valid = valid.gather(1, order)  # (B, Li)
            patch_index = patch_index.gather(1, order[..., None].expand(-1, -1, 2))  # (B, Li, 2)

        cls = self.cls_token.expand(b, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + Li, D)
        pos = torch.cat([self.position_embeddings[:, :1].expand(b, -1, -1), pos.expand(b, -1, -1)], dim=1)
        x = self.dropout(x + pos)  # (B, 1 + Li, D)
        mask = torch.cat(
            [torch.ones(b, 1, dtype=torch.long, device=x.device), valid.long()], dim=1
        )  # (B, 1+Li)
        return ImageTokens(x, mask, patch_index, (hp, wp))

    # -- both modalities --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        pixel_mask: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
        image_token_type_idx: int | torch.Tensor = 1,
        generator: torch.Generator | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, ImageTokens]:
        """Returns (embeddings (B, L, D), mask (B, L), image tokens); ``fast`` as :meth:`visual_embed`."""
        text = self.text_embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, Lt, D)
        if image_embeds is None:
            assert pixel_values is not None  # ViltModel checked: exactly one of pixel_values, image_embeds
            image = self.visual_embed(pixel_values, pixel_mask, self.config.max_image_length, generator, fast)
        else:  # precomputed image tokens: the caller included CLS and position embeddings
            b, li = image_embeds.shape[:2]
            mask = torch.ones(b, li, dtype=torch.long, device=image_embeds.device)
            if pixel_mask is not None:
                mask = pixel_mask.reshape(b, -1).long()  # (B, Li)
            image = ImageTokens(image_embeds, mask, None, None)
        text = text + self.token_type_embeddings(torch.zeros_like(attention_mask, dtype=torch.long))
        modality = torch.as_tensor(image_token_type_idx, device=image.mask.device).long()
        modality = modality.reshape(-1, 1).expand_as(image.mask)  # (B, 1 + Li)
        image_embeds = image.embeddings + self.token_type_embeddings(modality)
        embeddings = torch.cat([text, image_embeds], dim=1)  # (B, L, D)
        mask = torch.cat([attention_mask.long(), image.mask], dim=1)  # (B, L)
        return embeddings, mask, image


# ----------------------------------------------------------------------------- transformer


# Longest sequence whose CPU backward takes the explicit softmax instead of SDPA (its probabilities take
# B x H x L x L memory per layer; ViLT-B/32 at 384x640 with 40 tokens is L = 281).
EXPLICIT_TRAINING_MAX_LENGTH = 512
# the attention implementations, as transformers spells them (``attn_implementation=``)
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def check_attn_implementation(name: Any) -> str:
    """``name`` if it is one of :data:`ATTENTION_IMPLEMENTATIONS`.

    Raises:
        ViltInputError: naming the implementations there are.
    """
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ViltInputError(
            f"attention implementation must be 'sdpa' or 'eager', got {name!r} (ViLT has no flash, flex or "
            "kernel-hub attention: 'sdpa' runs PyTorch's fused kernels)"
        )
    return name


def explicit_softmax(
    implementation: str, x: torch.Tensor, model: nn.Module, probabilities_needed: bool
) -> bool:
    """Whether the attention of a call runs the explicit softmax instead of SDPA: the one place this is decided.

    * ``"eager"`` (the reference's arithmetic), or the call needs the probabilities (``output_attentions``,
      a head mask): the explicit softmax.
    * ``"sdpa"``: SDPA, except on CPU when a backward follows (an input or a parameter of ``model`` needs a
      gradient) on a sequence of at most :data:`EXPLICIT_TRAINING_MAX_LENGTH` tokens: there the flash
      kernel's backward is ~3x slower (``benchmarks/bench_train.py``); the explicit path keeps (B, H, L, L)
      probabilities, so long sequences and GPUs stay on SDPA.

    Args:
        implementation: the model's ``config._attn_implementation``.
        x: (B, L, D) the encoder's input.
        model: the module whose parameters may need gradients.
        probabilities_needed: the call asks for attention probabilities or masks heads.
    """
    if implementation == "eager" or probabilities_needed:
        return True
    if x.device.type != "cpu" or x.shape[1] > EXPLICIT_TRAINING_MAX_LENGTH or not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in model.parameters())


@dataclass
class AttentionMask:
    """The key-padding mask of every attention path: one additive (B, 1, 1, L) bias, 0 where a key is
    attended and the dtype's lowest value where it is padding (None when nothing is masked). The explicit
    softmax adds it to the scores, SDPA takes it as ``attn_mask`` (a float mask, which SDPA does not
    convert in every layer as it would a bool mask)."""

    additive: torch.Tensor | None  # (B, 1, 1, L)

    @classmethod
    def from_padding(cls, mask: torch.Tensor, dtype: torch.dtype, any_padding: bool) -> AttentionMask:
        """From the (B, L) 1/0 token mask; ``any_padding`` False when no token is padding."""
        if not any_padding:
            return cls(None)
        keep = mask[:, None, None, :].to(dtype)  # (B, 1, 1, L)
        return cls((1.0 - keep) * torch.finfo(dtype).min)

    @classmethod
    def additive_only(cls, additive: torch.Tensor | None) -> AttentionMask:
        """From an additive (B, 1, 1, L) bias, or None."""
        return cls(additive)


class ViltAttention(nn.Module):
    """Multi-head self-attention: SDPA, or the explicit softmax (``eager``, decided by
    :func:`explicit_softmax`)."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.attention = QKVProjection(
            config.hidden_size,
            config.num_attention_heads,
            config.qkv_bias,
            config.attention_probs_dropout_prob,
        )
        self.output = Dense(config.hidden_size, config.hidden_size, config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        head_mask: torch.Tensor | None = None,
        eager: bool = False,
        residual: torch.Tensor | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention over x (B, L, D), projected, plus ``residual``; returns it and the (B, H, L, L)
        probabilities when the explicit softmax ran (``eager``)."""
        b, length, d = x.shape
        q, k, v = self.attention(x, fast)  # each (B, H, L, Dh)
        probs = None
        if eager:
            context, probs = self._explicit_attention(q, k, v, mask, head_mask)
        else:
            drop = self.attention.dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.additive, dropout_p=drop
            )  # (B, H, L, Dh)
        context = context.transpose(1, 2).reshape(b, length, d)  # (B, L, D)
        return self.output(context, residual=residual, fast=fast), probs

    def _explicit_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        head_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q k^T / sqrt(Dh) + mask) v with the probabilities kept: (B, H, L, Dh), (B, H, L, L)."""
        # the reference's arithmetic, so that eager outputs are bit-identical to it
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.attention.head_dim)  # (B, H, L, L)
        if mask.additive is not None:
            scores = scores + mask.additive.to(scores.dtype)
        probs = self.attention.dropout(scores.softmax(dim=-1))
        if head_mask is not None:
            probs = probs * head_mask
        return probs @ v, probs  # (B, H, L, Dh)


class ViltLayer(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    ``fast`` runs every product on its cached weights, with the GELU and both residual adds inside the
    products (:class:`ViltModel` decides when; see :mod:`vilt.layers`). With ``gradient_checkpointing``
    on (:meth:`ViltPreTrainedModel.gradient_checkpointing_enable`), the encoder runs the layer through
    ``_gradient_checkpointing_func`` in training, so that backward recomputes its activations.
    """

    gradient_checkpointing = False
    _gradient_checkpointing_func: Callable[..., Any] = functools.partial(checkpoint, use_reentrant=False)

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.attention = ViltAttention(config)
        self.intermediate = Dense(config.hidden_size, config.intermediate_size, 0.0)
        self.intermediate_act_fn = activation(config.hidden_act)
        # the down-projection (4D -> D) lets a probe pick its oneDNN weight layout
        self.output = Dense(
            config.intermediate_size, config.hidden_size, config.hidden_dropout_prob, layout_probe=True
        )
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        head_mask: torch.Tensor | None = None,
        eager: bool = False,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, D) -> (B, L, D), and the attention probabilities when the explicit softmax ran."""
        x, probs = self.attention(self.layernorm_before(x), mask, head_mask, eager, residual=x, fast=fast)
        hidden = self.intermediate(self.layernorm_after(x), activation=self.intermediate_act_fn, fast=fast)
        x = self.output(hidden, residual=x, fast=fast)  # (B, L, D)
        return x, probs


class ViltEncoder(nn.Module):
    """The stack of layers. On the fast path (``fast``, decided by :class:`ViltModel`) the layers run on
    cached products where a probe found that faster on this machine, and on CPU the batch may run in
    pieces and each sequence padded to a multiple of 32, where probes found those faster (the probes are
    :mod:`vilt.layers`'): :func:`~vilt.layers.fast_layer_pays`, :func:`~vilt.layers.batch_pieces`,
    :func:`~vilt.layers.attention_length`."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ViltLayer(config) for _ in range(config.num_hidden_layers))
        self.layer_sizes = (config.hidden_size, config.num_attention_heads, config.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        head_mask: list[torch.Tensor | None],
        output_attentions: bool,
        output_hidden_states: bool,
        eager: bool = False,
        fast: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Run every layer on x (B, L, D).

        Args:
            head_mask: one (1, H, 1, 1) multiplicative mask or None per layer.
            output_attentions: return each layer's (B, H, L, L) probabilities (implies ``eager``).
            output_hidden_states: return each layer's input, then the last output.
            eager: the explicit softmax instead of SDPA (the reference's arithmetic).
            fast: take the fast path (the caller checked that no gradient, head mask or probabilities
                are needed).
        Returns:
            (output (B, L, D), hidden states or None, attention probabilities or None).
        """
        eager = eager or output_attentions
        warn_if_slow(x.dtype, x.device)
        if (
            fast
            and self.layer
            and fast_layer_pays(x, lambda s, f: self._probe_layer(s, None, f), *self.layer_sizes)
        ):
            x, states = self._fast(x, mask.additive, output_hidden_states)
            return x, states, None
        hidden_states: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        for layer, layer_head_mask in zip(cast(Sequence[ViltLayer], self.layer), head_mask):
            if output_hidden_states:
                hidden_states.append(x)
            if layer.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, probs = layer._gradient_checkpointing_func(layer, x, mask, layer_head_mask, eager)
            else:
                x, probs = layer(x, mask, layer_head_mask, eager)
            attentions.append(probs)
        if output_hidden_states:
            hidden_states.append(x)
        return (
            x,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )

    # -- the fast path ---------------------------------------------------------------------------
    def _fast(
        self, x: torch.Tensor, bias: torch.Tensor | None, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Every layer on cached products; ``bias`` is the (B, 1, 1, L) additive key mask or None.

        A batch runs in :func:`vilt.layers.batch_pieces` pieces, whose results are concatenated.
        """
        passes = batch_pieces(x, self._probe_layer, *self.layer_sizes)
        if passes == 1:
            return self._fast_pass(x, bias, output_hidden_states)
        biases = [None] * passes if bias is None else bias.tensor_split(passes)
        pieces = [
            self._fast_pass(*piece, output_hidden_states) for piece in zip(x.tensor_split(passes), biases)
        ]
        x = torch.cat([out for out, _ in pieces])  # (B, L, D)
        if not output_hidden_states:
            return x, None
        per_piece = [states for _, states in pieces if states is not None]
        return x, tuple(torch.cat(states) for states in zip(*per_piece))

    def _fast_pass(
        self, x: torch.Tensor, bias: torch.Tensor | None, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Every layer on x (B, L, D) in one pass, run at :func:`vilt.layers.attention_length` rows."""
        length = x.shape[1]
        padded = attention_length(x, self._probe_layer, *self.layer_sizes)
        if padded > length:
            bias = padded_bias(bias, x, padded)  # (B, 1, 1, padded), the padded keys masked
            x = F.pad(x, (0, 0, 0, padded - length))  # (B, padded, D), zero rows at the end
        mask = AttentionMask.additive_only(bias)
        hidden_states = []
        for layer in self.layer:
            if output_hidden_states:
                hidden_states.append(x[:, :length].contiguous())  # (B, L, D); x itself if not padded
            x, _ = layer(x, mask, fast=True)
        x = x[:, :length].contiguous()  # (B, L, D); x itself if not padded
        if output_hidden_states:
            hidden_states.append(x)
        return x, tuple(hidden_states) if output_hidden_states else None

    def _probe_layer(self, x: torch.Tensor, bias: torch.Tensor | None, fast: bool = True) -> torch.Tensor:
        """The first layer on x (B, L, D) with an additive key mask: what the fast path's probes time."""
        return self.layer[0](x, AttentionMask.additive_only(bias), fast=fast)[0]


class ViltPooler(nn.Module):
    """tanh(Linear(text [CLS])): token 0 of the sequence."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))  # (B, D)


# ----------------------------------------------------------------------------- base class


class ViltPreTrainedModel(nn.Module):
    """Shared init, loading and saving of every ViLT model class, and the part of transformers'
    ``PreTrainedModel`` interface that tools read (``transformers.Trainer``, PEFT, accelerate):
    the class attributes below, ``_from_config``, ``init_weights``, gradient checkpointing, input and
    output embeddings and their resizing, ``num_parameters``, ``set_attn_implementation``."""

    config_class = ViltConfig
    base_model_prefix = "vilt"
    main_input_name = "input_ids"  # the first argument of forward
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # attn_implementation "sdpa" (the default) or "eager"
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _no_split_modules = ["ViltEmbeddings", "ViltLayer"]  # modules a device map must keep whole
    _skip_keys_device_placement: list[str] | None = None
    _keep_in_fp32_modules: frozenset[str] = frozenset()  # none: every weight follows the model's dtype
    _keep_in_fp32_modules_strict: frozenset[str] = frozenset()
    _keys_to_ignore_on_load_missing: list[str] | None = None
    _keys_to_ignore_on_load_unexpected: list[str] | None = None
    _keys_to_ignore_on_save: list[str] | None = None
    _tied_weights_keys: dict[str, str] = {}  # tied parameter -> the parameter it shares (when tying is on)
    is_parallelizable = False
    model_tags: list[str] | None = None

    def __init__(self, config: ViltConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(config, ViltConfig):
            raise TypeError(f"expected a vilt.ViltConfig, got {type(config).__name__}")
        config.validate_for_model()
        config._attn_implementation = check_attn_implementation(config._attn_implementation or "sdpa")
        self.config = config
        self.name_or_path = config.name_or_path
        self.warnings_issued: dict[str, bool] = {}

    def post_init(self) -> None:
        """Initialise the weights as the reference does (:meth:`init_weights`), and apply the reference's
        ``gradient_checkpointing`` config switch."""
        self.init_weights()
        if getattr(self.config, "gradient_checkpointing", False):
            self.gradient_checkpointing_enable()
            del self.config.gradient_checkpointing  # consumed, so that it is not saved

    def init_weights(self) -> None:
        """Initialise every module not initialised yet (:meth:`_init_weights`), then tie weights if configured.

        Nothing is drawn while the model is built on the meta device; ``model.to_empty(device=...)``
        followed by ``init_weights()`` initialises it then, buffers included.
        """
        if torch.get_default_device().type != "meta":
            for module in self.modules():
                if not getattr(module, "_is_hf_initialized", False):
                    self._init_weights(module)
                    # torch types Module.__setattr__ for tensors and modules only; any value is allowed
                    module._is_hf_initialized = True  # type: ignore[assignment]
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, ViltEmbeddings):  # the reference creates these zero, and keeps them so
                nn.init.zeros_(module.cls_token)
                nn.init.zeros_(module.position_embeddings)
            elif isinstance(module, TextEmbeddings):
                module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]))
                module.token_type_ids.zero_()

    def tie_weights(self) -> None:
        """Share output embeddings with the input embeddings (only heads with a decoder do this)."""

    @classmethod
    def _from_config(cls, config: ViltConfig, **kwargs: Any) -> Any:
        """A new model of ``config``, as transformers' ``_from_config``: ``attn_implementation`` and
        ``dtype`` (``torch_dtype``) are applied to ``config``; other keyword arguments go to the class."""
        if "attn_implementation" in kwargs:
            config._attn_implementation = check_attn_implementation(kwargs.pop("attn_implementation"))
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        model = cls(config, **kwargs)
        if dtype is not None:
            config.dtype = dtype
            model.to(dtype=config.dtype)
        return model

    @classmethod
    def can_generate(cls) -> bool:
        """ViLT classifies and fills masks; it does not generate text."""
        return False

    @property
    def tp_plan(self) -> dict[str, str]:
        """transformers' tensor-parallel plan: empty, ViLT shards no layer across devices."""
        return {}

    @property
    def base_model(self) -> nn.Module:
        """The :class:`ViltModel` inside a head model (the model itself for ``ViltModel``)."""
        return getattr(self, self.base_model_prefix, self)

    # -- conveniences -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of (unique) parameters: only those that need gradients (``only_trainable``), or without
        the ``nn.Embedding`` weights (``exclude_embeddings``)."""
        embeddings = {
            f"{name}.weight" for name, module in self.named_modules() if isinstance(module, nn.Embedding)
        }
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if (p.requires_grad or not only_trainable) and not (exclude_embeddings and name in embeddings)
        )

    # -- gradient checkpointing ---------------------------------------------------------------
    def gradient_checkpointing_enable(
        self,
        gradient_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute layers' activations in backward to save memory.

        Args:
            gradient_checkpointing_kwargs: arguments of ``torch.utils.checkpoint.checkpoint``
                (default ``{"use_reentrant": False}``).
            every_n_layers: checkpoint layers 0, n, 2n...; the others keep their activations.
            offload: keep the checkpointed inputs in (pinned, on a GPU) host memory.

        As transformers does, the input embeddings' output is then made to require gradients
        (:meth:`enable_input_require_grads`), which the reentrant variant needs when they are frozen.
        """
        if not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ViltInputError(f"every_n_layers must be a positive integer, got {every_n_layers!r}")
        options = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        function: Callable[..., Any] = functools.partial(checkpoint, **options)
        if offload:
            function = functools.partial(_offloaded, function)
        for index, layer in enumerate(self._layers()):
            layer.gradient_checkpointing = index % every_n_layers == 0
            layer._gradient_checkpointing_func = function
        self.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        """Turn gradient checkpointing off."""
        for layer in self._layers():
            layer.gradient_checkpointing = False
        if getattr(self, "_hf_peft_config_loaded", False):
            self.disable_input_require_grads()

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """The transformers v5 name of :meth:`gradient_checkpointing_enable`."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)

    def activation_checkpointing_disable(self) -> None:
        """The transformers v5 name of :meth:`gradient_checkpointing_disable`."""
        self.gradient_checkpointing_disable()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in backward to save memory (non-reentrant), or stop."""
        if enable:
            self.gradient_checkpointing_enable()
        else:
            self.gradient_checkpointing_disable()

    def _layers(self) -> list[ViltLayer]:
        return [module for module in self.modules() if isinstance(module, ViltLayer)]

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether gradient checkpointing is on."""
        return any(layer.gradient_checkpointing for layer in self._layers())

    @property
    def is_activation_checkpointing(self) -> bool:
        """The transformers v5 name of :attr:`is_gradient_checkpointing`."""
        return self.is_gradient_checkpointing

    # -- embeddings ------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        base = self if isinstance(self, ViltModel) else getattr(self, self.base_model_prefix)
        return base.embeddings.text_embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        base = self if isinstance(self, ViltModel) else getattr(self, self.base_model_prefix)
        base.embeddings.text_embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        """The decoder onto the vocabulary: None, except for the masked-LM head."""
        return None

    def enable_input_require_grads(self) -> None:
        """Make the word embeddings' output require gradients (for adapters on a frozen model, and for
        reentrant gradient checkpointing)."""
        self.disable_input_require_grads()

        def require_grads(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(require_grads)

    def disable_input_require_grads(self) -> None:
        """Undo :meth:`enable_input_require_grads`."""
        hook = self.__dict__.pop("_require_grads_hook", None)
        if hook is not None:
            hook.remove()

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Give the word embeddings (and the MLM decoder) ``new_num_tokens`` rows, as transformers does.

        Rows are kept from the start; added rows are the mean of the old ones (``mean_resizing``) or
        drawn as new weights are. ``config.vocab_size`` follows.

        Args:
            new_num_tokens: the new vocabulary size (None: the current one).
            pad_to_multiple_of: round the size up to a multiple of this.
            mean_resizing: initialise added rows (and decoder biases) with the mean of the old ones.
        Returns:
            The word embedding module (the same object, resized).
        """
        embeddings = self.get_input_embeddings()
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or isinstance(pad_to_multiple_of, bool):
                raise ValueError(
                    f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is not "
                    "and integer. Please make sure to pass an integer"
                )
            rows = embeddings.weight.shape[0] if new_num_tokens is None else new_num_tokens
            new_num_tokens = -(-rows // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens is None:
            return embeddings
        _check_vocab_size(new_num_tokens)
        decoder = self.get_output_embeddings()
        tied = decoder is not None and decoder.weight is embeddings.weight
        with torch.no_grad():
            embeddings.weight = _resized_parameter(
                embeddings.weight, new_num_tokens, mean_resizing, self._init_weights
            )
            embeddings.num_embeddings = new_num_tokens
            if embeddings.padding_idx is not None and embeddings.padding_idx >= new_num_tokens:
                embeddings.padding_idx = None
                self.config.pad_token_id = None
            if decoder is not None:
                if not tied:
                    decoder.weight = _resized_parameter(
                        decoder.weight, new_num_tokens, mean_resizing, self._init_weights
                    )
                if decoder.bias is not None:
                    decoder.bias = _resized_parameter(
                        decoder.bias, new_num_tokens, mean_resizing, nn.init.zeros_
                    )
                decoder.out_features = new_num_tokens
        self.config.vocab_size = new_num_tokens
        self.vocab_size = new_num_tokens
        self.tie_weights()
        return embeddings

    def no_weight_decay(self) -> set[str]:
        """Parameter names the original recipe does not decay: biases and LayerNorm weights."""
        return {
            n
            for n, p in self.named_parameters()
            if n.endswith("bias") or "LayerNorm" in n or "layernorm" in n
        }

    # -- attention -------------------------------------------------------------------------------
    def set_attn_implementation(self, name: str) -> None:
        """``"sdpa"`` (the default: PyTorch's fused kernels; see :func:`explicit_softmax` for when a CPU
        backward takes the explicit softmax) or ``"eager"`` (the explicit softmax everywhere, the
        reference's arithmetic). Stored as ``config._attn_implementation``, as transformers stores it."""
        self.config._attn_implementation = check_attn_implementation(name)

    # -- the fast path ---------------------------------------------------------------------------
    def set_fast_path(self, enabled: bool = True) -> ViltPreTrainedModel:
        """Turn the inference fast path on or off; returns the model.

        On (the default, unless ``VILT_FAST_PATH=0`` was set when the model was built), eval calls that
        need no gradient, head mask or attention probabilities run the encoder and the patch embedding
        on cached, prepacked weights (see :mod:`vilt.layers`). Off, every call runs the plain layers and
        the caches are released.
        """
        for module in self.modules():
            if isinstance(module, ViltModel):
                module.fast_path = enabled
            if not enabled and isinstance(module, CachedProduct):
                module.release()
        return self

    def optimize_for_inference(self) -> ViltPreTrainedModel:
        """Eval mode with the fast path on and its caches built now instead of on the first call;
        returns the model. Cast the dtype and move the device first (either drops the caches).

        The encoder's products run on prepacked weights (oneDNN on CPU) with the query, key and value
        projections fused, and the bias, activation and residual adds inside the products; the patch
        embedding runs as a product on a prepacked weight, in float32 too (same sum, different rounding).
        Parameters, names and saving are unchanged.
        """
        self.eval().set_fast_path(True)
        for module in self.modules():
            if isinstance(module, CachedProduct) and module.packable():
                module.packed()
        return self

    # -- weights I/O --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str] | None, *args: Any, **kwargs: Any
    ) -> Any:
        """Load a model from a local directory or a Hugging Face hub id, or (``None`` with ``config`` and
        ``state_dict``) from tensors in memory.

        See :func:`vilt.checkpoint.load_pretrained` for the keyword arguments (``config``, ``state_dict``,
        ``revision``, ``cache_dir``, ``local_files_only``, ``dtype``/``torch_dtype``, ``device``,
        ``ignore_mismatched_sizes``, ``output_loading_info``, ``attn_implementation``, and config
        overrides such as ``num_labels``).
        """
        from .checkpoint import load_pretrained

        if args:  # transformers passes model arguments positionally after the name
            raise TypeError(
                f"{cls.__name__}.from_pretrained takes the model name and keyword arguments only, got "
                f"{len(args)} positional argument(s) more"
            )
        return load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Write ``config.json`` and ``model.safetensors`` (sharded above ``max_shard_size``); see
        :func:`vilt.checkpoint.save_pretrained` for the keyword arguments (``state_dict``,
        ``is_main_process``, ``max_shard_size``, ``safe_serialization``)."""
        from .checkpoint import save_pretrained

        save_pretrained(self, save_directory, **kwargs)


def _offloaded(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` with the tensors autograd saves kept in host memory (pinned on a GPU)."""
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return function(*args, **kwargs)


def _check_vocab_size(rows: Any) -> None:
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ViltInputError(f"new_num_tokens must be a positive integer, got {rows!r}")


def _resized_parameter(
    old: torch.Tensor, rows: int, mean_resizing: bool, init: Callable[..., Any]
) -> nn.Parameter:
    """``old`` (N, ...) with ``rows`` rows: its first ones kept, added ones the mean of the old rows
    (``mean_resizing``) or initialised by ``init`` (given a module holding them, or the tensor)."""
    new = torch.empty(rows, *old.shape[1:], dtype=old.dtype, device=old.device)
    kept = min(rows, old.shape[0])
    new[:kept] = old[:kept]
    if rows > kept:
        if mean_resizing:
            new[kept:] = old.float().mean(dim=0).to(old.dtype)
        elif new.dim() == 2:
            added = nn.Embedding(rows - kept, new.shape[1], dtype=old.dtype, device=old.device)
            init(added)
            new[kept:] = added.weight
        else:
            new[kept:] = init(new[kept:].clone())
    return nn.Parameter(new, requires_grad=old.requires_grad)


# ----------------------------------------------------------------------------- the model


class ViltModel(ViltPreTrainedModel):
    """The bare ViLT transformer: embeddings, encoder, final LayerNorm and (optional) pooler."""

    def __init__(self, config: ViltConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = ViltEmbeddings(config)
        self.encoder = ViltEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViltPooler(config) if add_pooling_layer else None
        self.fast_path = fast_path_default()
        self.post_init()

    @property
    def attn_implementation(self) -> str:
        """``config._attn_implementation``: "sdpa" or "eager" (see :meth:`set_attn_implementation`)."""
        return self.config._attn_implementation  # type: ignore[return-value]

    def takes_fast_path(self, *inputs: torch.Tensor | None, exact: bool = False) -> bool:
        """Whether a call on these input tensors takes the fast path: the switch is on (see
        :meth:`set_fast_path`), the call needs no gradient, head mask or attention probabilities
        (``exact``: it needs one of them), and :func:`vilt.layers.inference_only` holds (eval mode, no
        autocast, not compiling or exporting)."""
        return self.fast_path and not exact and inference_only(self, *inputs)

    # -- input checks ---------------------------------------------------------------------------
    def _check_inputs(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        pixel_mask: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
    ) -> tuple[int, int]:
        """Validate shapes and values; return (batch size, text length). Raise ViltInputError naming the
        problem."""
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ViltInputError("pass exactly one of input_ids or inputs_embeds")
        if (pixel_values is None) == (image_embeds is None):
            raise ViltInputError("pass exactly one of pixel_values or image_embeds")
        if inputs_embeds is not None and (
            inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.hidden_size
        ):
            raise ViltInputError(
                f"inputs_embeds must be (batch, text length, {cfg.hidden_size}), got {tuple(inputs_embeds.shape)}"
            )
        text = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]  # type: ignore[union-attr]
        masks = [None if m is None else m.shape for m in (attention_mask, token_type_ids)]
        batch, length = check_text(cfg, text, *masks)
        if pixel_values is not None:
            images = self._check_pixels(pixel_values, pixel_mask)
        else:
            assert image_embeds is not None  # checked above: exactly one of pixel_values, image_embeds
            images = image_embeds.shape[0]
            if image_embeds.dim() != 3 or image_embeds.shape[-1] != cfg.hidden_size:
                raise ViltInputError(
                    f"image_embeds must be (batch, image tokens, {cfg.hidden_size}), got {tuple(image_embeds.shape)}"
                )
            if pixel_mask is not None and pixel_mask.numel() != image_embeds.shape[0] * image_embeds.shape[1]:
                raise ViltInputError(
                    f"with image_embeds, pixel_mask must mark each of the {image_embeds.shape[1]} image tokens: "
                    f"expected shape {tuple(image_embeds.shape[:2])}, got {tuple(pixel_mask.shape)}"
                )
        check_same_batch(batch, images)
        self._check_values(input_ids, token_type_ids, pixel_values)
        return batch, length

    def _check_pixels(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> int:
        """Validate the shapes of a pixel batch and its mask; return the batch size."""
        return check_pixels(self.config, pixel_values.shape, None if pixel_mask is None else pixel_mask.shape)

    def _check_values(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
    ) -> None:
        """Token ids inside the vocabulary, segment ids inside ``type_vocab_size``, finite pixel values.

        A few reductions and one host sync (pixels: their sum is finite unless a value is not, or the
        sum overflows); the exact culprits are looked up only when a check fails. Skipped while
        compiling or exporting, where a graph cannot branch on values.
        """
        if torch.compiler.is_compiling():
            return
        cfg = self.config
        checks = [
            (name, ids, limit)
            for name, ids, limit in (
                ("input_ids", input_ids, cfg.vocab_size),
                ("token_type_ids", token_type_ids, cfg.type_vocab_size),
            )
            if ids is not None
        ]
        stats = [s for _, ids, _ in checks for s in (ids.min(), ids.max())]
        if pixel_values is not None:
            stats.append(pixel_values.sum())  # in the pixels' dtype: no converted copy
        if not stats:
            return
        values = torch.stack([s.to(torch.float32) for s in stats]).tolist()  # the one host sync
        for i, (name, ids, limit) in enumerate(checks):
            if values[2 * i] < 0 or values[2 * i + 1] >= limit:
                bad = ids[(ids < 0) | (ids >= limit)].unique()[:5].tolist()
                raise ViltInputError(
                    f"{name} must lie in [0, {limit}) for this model, got {bad}; encode the text with this "
                    "model's tokenizer (its vocabulary must match the model's)"
                    if name == "input_ids"
                    else f"{name} must lie in [0, {limit}) for this model, got {bad}; pass 0 for the text "
                    "segment (or leave token_type_ids out)"
                )
        if pixel_values is not None and not math.isfinite(values[-1]):
            finite = torch.isfinite(pixel_values).flatten(1).all(dim=1)  # (B,)
            if not bool(finite.all()):  # else only the sum overflowed
                images = (~finite).nonzero().flatten().tolist()
                raise ViltInputError(
                    f"pixel_values of image(s) {images} hold NaN or infinite values; pass images decoded "
                    "and normalized by the processor"
                )

    def _head_mask_per_layer(self, head_mask: torch.Tensor | None) -> list[torch.Tensor | None]:
        """(H,) or (num_layers, H) multiplicative head mask -> one (1, H, 1, 1) tensor per layer."""
        n = self.config.num_hidden_layers
        if head_mask is None:
            return [None] * n
        heads = self.config.num_attention_heads
        if head_mask.dim() == 1:
            head_mask = head_mask[None].expand(n, -1)
        if tuple(head_mask.shape) != (n, heads):
            raise ViltInputError(
                f"head_mask must have shape ({heads},) or ({n}, {heads}), got {tuple(head_mask.shape)}"
            )
        return [m.reshape(1, heads, 1, 1).to(self.dtype) for m in head_mask]

    # -- image tokens --------------------------------------------------------------------------------
    def embed_images(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> ImageTokens:
        """The image tokens of a pixel batch, to embed each image once and pair it with many texts.

        Args:
            pixel_values: (B, C, H, W) padded images, as for :meth:`forward`.
            pixel_mask: (B, H, W) 1 on real pixels (default: all real).
        Returns:
            :class:`ImageTokens`: ``embeddings`` (B, 1 + Li, D), the image CLS first, with position
            embeddings, and ``mask`` (B, 1 + Li). ``forward(..., image_embeds=tokens.embeddings,
            pixel_mask=tokens.mask)`` gives the outputs of ``forward(..., pixel_values, pixel_mask)``;
            ``tokens.select(rows)`` picks images, repeats allowed.
        """
        self._check_pixels(pixel_values, pixel_mask)
        self._check_values(None, None, pixel_values)
        fast = self.takes_fast_path(pixel_values)
        return self.embeddings.visual_embed(pixel_values, pixel_mask, self.config.max_image_length, fast=fast)

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_token_type_idx: int | torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> ViltModelOutput | tuple[torch.Tensor, ...]:
        """Encode text and image(s) jointly.

        Args:
            input_ids: (B, Lt) token ids; or ``inputs_embeds`` (B, Lt, D).
            attention_mask: (B, Lt) 1 for real text tokens (default: all ones).
            token_type_ids: (B, Lt) text segment ids (default: zeros).
            pixel_values: (B, C, H, W) padded images; or ``image_embeds`` (B, Li, D) precomputed image
                tokens including CLS and position embeddings (:meth:`embed_images`), with ``pixel_mask``
                (B, Li) marking them.
            pixel_mask: (B, H, W) 1 on real pixels (default: all real).
            head_mask: (H,) or (num_layers, H) multiplicative mask on attention heads.
            image_token_type_idx: modality id of the image tokens (default 1; NLVR2 uses 1, 2, ...).
            output_attentions, output_hidden_states, return_dict: as in transformers.
            generator: RNG for random patch sampling (training with max_image_length > 0 only).
            kwargs: accepted and ignored, as transformers does (e.g. a Trainer's ``num_items_in_batch``).
        """
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = cfg.return_dict if return_dict is None else return_dict
        batch, length = self._check_inputs(
            input_ids, inputs_embeds, attention_mask, token_type_ids, pixel_values, pixel_mask, image_embeds
        )
        text = input_ids if input_ids is not None else inputs_embeds
        assert text is not None  # _check_inputs raised unless exactly one was given
        device = text.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
        probabilities_needed = output_attentions or head_mask is not None
        fast = self.takes_fast_path(
            pixel_values,
            inputs_embeds,
            image_embeds,
            exact=probabilities_needed or self.attn_implementation == "eager",
        )
        embeddings, mask, image = self.embeddings(
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            pixel_mask,
            inputs_embeds,
            image_embeds,
            1 if image_token_type_idx is None else image_token_type_idx,
            generator,
            fast,
        )
        any_padding = _tracing() or (  # a compiled or exported graph must serve padded batches
            bool((mask == 0).any()) if (attention_mask is not None or pixel_mask is not None) else False
        )
        attention = AttentionMask.from_padding(mask, embeddings.dtype, any_padding)
        eager = explicit_softmax(self.attn_implementation, embeddings, self.encoder, probabilities_needed)
        x, hidden_states, attentions = self.encoder(
            embeddings,
            attention,
            self._head_mask_per_layer(head_mask),
            output_attentions,
            output_hidden_states,
            eager=eager,
            fast=fast,
        )
        sequence = self.layernorm(x)  # (B, L, D)
        pooled = self.pooler(sequence) if self.pooler is not None else None
        if not return_dict:  # the reference's tuple: pooled (None without a pooler) always in position 1
            return (sequence, pooled, *(v for v in (hidden_states, attentions) if v is not None))
        return ViltModelOutput(
            last_hidden_state=sequence,
            pooler_output=pooled,
            hidden_states=hidden_states,
            attentions=attentions,
            patch_index=image.patch_index,
            image_grid_size=image.grid_size,
            text_mask=attention_mask,
            image_mask=image.mask,
        )
