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

Shape vocabulary: B batch, Lt text tokens, Li image tokens (patches kept), L = Lt + 1 + Li,
D hidden size, H heads, Dh head size, Hp x Wp the patch grid of the (padded) pixel batch,
N = Hp * Wp, G = image_size // patch_size (the trained position grid).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration import ViltConfig

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

_ACTIVATIONS = {
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
    """Non-overlapping P x P patches projected by a strided convolution.

    In float32 it is the reference's convolution, bit for bit. In reduced precision (bfloat16 / float16
    weights or autocast), and in a model after ``optimize_for_inference()``, the same sum runs as one
    matrix product over the flattened patches: faster on CPU (the patch table of
    benchmarks/bench_kernels.py), and ~8x faster in its bfloat16 backward than the oneDNN convolution's.
    After ``optimize_for_inference()``, eval calls without gradients use a prepacked weight.
    """

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.packed: Any = None  # a vilt.optimize.PackedPatchProjection, set by optimize_for_inference()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, Hp, Wp, D) patch embeddings, Hp = H // P and Wp = W // P."""
        weight = self.projection.weight  # (D, C, P, P)
        pixel_values = pixel_values.to(dtype=weight.dtype)
        float32 = weight.dtype == torch.float32 and not torch.is_autocast_enabled(weight.device.type)
        if float32 and self.packed is None:
            return self.projection(pixel_values).permute(0, 2, 3, 1)  # (B, Hp, Wp, D)
        return self.patch_product(pixel_values)

    def patch_product(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The convolution as a matrix product: (B, C, H, W) -> (B, Hp, Wp, D).

        Rows and columns past the last whole patch are dropped, as the strided convolution does.
        """
        weight = self.projection.weight  # (D, C, P, P)
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        hp, wp = h // p, w // p  # at least 1 each: ViltModel checks the image size
        x = pixel_values[:, :, : hp * p, : wp * p]
        x = x.reshape(b, c, hp, p, wp, p).permute(0, 2, 4, 1, 3, 5)  # (B, Hp, Wp, C, P, P)
        x = x.reshape(b, hp, wp, c * p * p)  # (B, Hp, Wp, C*P*P), one row per patch
        if self.packed is not None and self.packed.applies():
            return self.packed(x)  # (B, Hp, Wp, D)
        return F.linear(x, weight.reshape(weight.shape[0], -1), self.projection.bias)  # (B, Hp, Wp, D)


@dataclass
class ImageTokens:
    """The image part of the sequence, as built by :meth:`ViltEmbeddings.visual_embed`."""

    embeddings: torch.Tensor  # (B, 1 + Li, D), image CLS first
    mask: torch.Tensor  # (B, 1 + Li) long, 1 = real token
    patch_index: torch.Tensor | None  # (B, Li, 2) (row, col) on the patch grid
    grid_size: tuple[int, int] | None  # (Hp, Wp)


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
    ) -> ImageTokens:
        """Patch embeddings + interpolated positions + image CLS, with per-image patch selection.

        Args:
            pixel_values: (B, C, H, W) padded pixel batch.
            pixel_mask: (B, H, W), 1 on real pixels; None means every pixel is real.
            max_image_length: image tokens per image; -1 keeps every valid patch.
            generator: RNG for the random patch sampling of training with max_image_length > 0.
        """
        x = self.patch_embeddings(pixel_values)  # (B, Hp, Wp, D)
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
            if torch.compiler.is_exporting():  # an exported graph keeps every patch; padding stays masked
                most = least = n
            else:
                most, least = torch.stack([counts.max(), counts.min()]).tolist()  # the one host sync
            if least == 0:
                empty = (counts == 0).nonzero().flatten().tolist()
                raise ValueError(
                    f"pixel_mask marks no pixel of image(s) {empty} as valid (at the top-left pixel of "
                    "each patch); every image needs at least one real patch. Pass the pixel_mask the "
                    "processor returns, or None when the images are not padded."
                )
            if least == n and not torch.compiler.is_exporting():  # no padding: one shared grid
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
    ) -> tuple[torch.Tensor, torch.Tensor, ImageTokens]:
        """Returns (embeddings (B, L, D), mask (B, L), image tokens)."""
        text = self.text_embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, Lt, D)
        if image_embeds is None:
            image = self.visual_embed(pixel_values, pixel_mask, self.config.max_image_length, generator)
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


class _QKV(nn.Module):
    """Holds the query/key/value projections under the reference's names."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.query = nn.Linear(d, d, bias=config.qkv_bias)
        self.key = nn.Linear(d, d, bias=config.qkv_bias)
        self.value = nn.Linear(d, d, bias=config.qkv_bias)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)


class _Dense(nn.Module):
    """A Linear layer named ``dense`` followed by dropout (the reference's module names)."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


def concatenated_linear(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear layers with one input size as one: their weights (sum N, K) and biases (sum N,) concatenated
    along the outputs, in order (one layer's own tensors when there is one)."""
    if len(linears) == 1:
        return linears[0].weight, linears[0].bias
    weight = torch.cat([linear.weight for linear in linears])  # (sum N, K)
    bias = None if linears[0].bias is None else torch.cat([linear.bias for linear in linears])  # (sum N,)
    return weight, bias


# Longest sequence whose CPU backward takes the explicit softmax instead of SDPA (its probabilities take
# B x H x L x L memory per layer; ViLT-B/32 at 384x640 with 40 tokens is L = 281).
EXPLICIT_TRAINING_MAX_LENGTH = 512


class ViltAttention(nn.Module):
    """Multi-head self-attention: SDPA by default, explicit softmax when probabilities are needed."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.attention = _QKV(config)
        self.output = _Dense(config.hidden_size, config.hidden_size, config.hidden_dropout_prob)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        head_mask: torch.Tensor | None = None,
        eager: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, length, d = x.shape
        backward = torch.is_grad_enabled() and x.requires_grad
        q, k, v = self._project_fused(x) if backward else self._project(x)  # each (B, H, L, Dh)
        probs = None
        if eager or head_mask is not None or (backward and self._explicit_trains_faster(x)):
            context, probs = self._explicit_attention(q, k, v, mask, head_mask)
        else:
            drop = self.attention.dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.keep, dropout_p=drop
            )  # (B, H, L, Dh)
        context = context.transpose(1, 2).reshape(b, length, d)  # (B, L, D)
        return self.output(context), probs

    @staticmethod
    def _explicit_trains_faster(x: torch.Tensor) -> bool:
        """Whether the explicit softmax beats SDPA for a backward: on CPU, for sequences that are not long.

        There the flash kernel's backward is ~3x slower (``benchmarks/bench_train.py``); the explicit
        path keeps (B, H, L, L) probabilities, so long sequences and GPUs stay on SDPA.
        """
        return x.device.type == "cpu" and x.shape[1] <= EXPLICIT_TRAINING_MAX_LENGTH

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value as three products (inference; ``optimize_for_inference`` fuses them)."""
        qkv = self.attention
        return self._split_heads(qkv.query(x)), self._split_heads(qkv.key(x)), self._split_heads(qkv.value(x))

    def _project_fused(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value as one product on the concatenated weights (when a backward follows).

        One wide product, one autocast cast of ``x`` and one gradient for it instead of three; the
        parameters keep the reference's three names.
        """
        qkv = self.attention
        weight, bias = concatenated_linear([qkv.query, qkv.key, qkv.value])  # (3D, D), (3D,)
        b, length, _ = x.shape
        fused = F.linear(x, weight, bias).view(
            b, length, 3, self.num_heads, self.head_dim
        )  # (B, L, 3, H, Dh)
        q, k, v = fused.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        return q, k, v

    def _explicit_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        head_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q k^T / sqrt(Dh) + mask) v with the probabilities kept: (B, H, L, Dh), (B, H, L, L).

        Used when the probabilities or a head mask are asked for, and for CPU backward passes.
        """
        # the reference's arithmetic, so that eager outputs are bit-identical to it
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, L, L)
        if mask.additive is not None:
            scores = scores + mask.additive.to(scores.dtype)
        probs = self.attention.dropout(scores.softmax(dim=-1))
        if head_mask is not None:
            probs = probs * head_mask
        return probs @ v, probs  # (B, H, L, Dh)


@dataclass
class AttentionMask:
    """The key-padding mask in the two forms the attention paths use (None when nothing is masked)."""

    keep: torch.Tensor | None  # (B, 1, 1, L) bool, True = attend (for SDPA)
    additive: torch.Tensor | None  # (B, 1, 1, L) 0 / finfo.min (for explicit softmax)

    @classmethod
    def from_padding(cls, mask: torch.Tensor, dtype: torch.dtype, any_padding: bool) -> AttentionMask:
        if not any_padding:
            return cls(None, None)
        keep = mask[:, None, None, :].bool()  # (B, 1, 1, L)
        additive = (1.0 - keep.to(dtype)) * torch.finfo(dtype).min
        return cls(keep, additive)


class ViltLayer(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.attention = ViltAttention(config)
        self.intermediate = _Dense(config.hidden_size, config.intermediate_size, 0.0)
        self.intermediate_act_fn = activation(config.hidden_act)
        self.output = _Dense(config.intermediate_size, config.hidden_size, config.hidden_dropout_prob)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, mask: AttentionMask, head_mask: torch.Tensor | None = None, eager: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attention(self.layernorm_before(x), mask, head_mask, eager)
        x = x + attended
        x = x + self.output(self.intermediate_act_fn(self.intermediate(self.layernorm_after(x))))
        return x, probs


class ViltEncoder(nn.Module):
    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ViltLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self.packed: Any = None  # a vilt.optimize.PackedEncoder, set by optimize_for_inference()

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        head_mask: list[torch.Tensor | None],
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        packed = self.packed is not None and not torch.compiler.is_exporting()  # packed kernels don't trace
        if packed and self.packed.applies(head_mask, output_attentions):
            x, packed_hidden_states = self.packed(x, mask, output_hidden_states)
            return x, packed_hidden_states, None
        hidden_states: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        for layer, layer_head_mask in zip(self.layer, head_mask):
            if output_hidden_states:
                hidden_states.append(x)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, probs = checkpoint(layer, x, mask, layer_head_mask, output_attentions, use_reentrant=False)
            else:
                x, probs = layer(x, mask, layer_head_mask, output_attentions)
            if output_attentions:
                attentions.append(probs)
        if output_hidden_states:
            hidden_states.append(x)
        return (
            x,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )


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
    """Shared init, loading and saving of every ViLT model class."""

    config_class = ViltConfig
    base_model_prefix = "vilt"

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        if not isinstance(config, ViltConfig):
            raise TypeError(f"expected a vilt.ViltConfig, got {type(config).__name__}")
        config.validate()
        self.config = config

    def post_init(self) -> None:
        """Initialise every weight as the reference does, then tie weights if configured."""
        self.apply(self._init_weights)
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Share output embeddings with the input embeddings (only heads with a decoder do this)."""

    # -- conveniences -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of (unique) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in backward to save memory (non-reentrant)."""
        base = self if isinstance(self, ViltModel) else getattr(self, self.base_model_prefix)
        base.encoder.gradient_checkpointing = enable

    def gradient_checkpointing_enable(self, **_: Any) -> None:
        """transformers-style alias of ``set_grad_checkpointing(True)``."""
        self.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.set_grad_checkpointing(False)

    def optimize_for_inference(self) -> ViltPreTrainedModel:
        """Eval mode plus the encoder fast path of :mod:`vilt.optimize`; returns the model.

        The encoder's weights are prepacked (oneDNN on CPU) with fused QKV, bias, activation and
        residual adds. Parameters, names and saving are unchanged; the packed copy is rebuilt when a
        weight changes, and only no-gradient eval calls use it. Cast the dtype first (e.g. bfloat16).
        The patch embedding runs as a product on a prepacked weight, in float32 too (same sum,
        different rounding).
        """
        from .optimize import PackedEncoder, PackedPatchProjection

        base = self if isinstance(self, ViltModel) else getattr(self, self.base_model_prefix)
        base.encoder.packed = PackedEncoder(base.encoder, self.config.hidden_act)
        patches = base.embeddings.patch_embeddings
        patches.packed = PackedPatchProjection(patches.projection)
        return self.eval()

    def get_input_embeddings(self) -> nn.Embedding:
        base = self if isinstance(self, ViltModel) else getattr(self, self.base_model_prefix)
        return base.embeddings.text_embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        base = self if isinstance(self, ViltModel) else getattr(self, self.base_model_prefix)
        base.embeddings.text_embeddings.word_embeddings = value

    def no_weight_decay(self) -> set[str]:
        """Parameter names the original recipe does not decay: biases and LayerNorm weights."""
        return {
            n
            for n, p in self.named_parameters()
            if n.endswith("bias") or "LayerNorm" in n or "layernorm" in n
        }

    # -- weights I/O --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Load a model from a local directory or a Hugging Face hub id.

        See :func:`vilt.checkpoint.load_pretrained` for the keyword arguments (``config``,
        ``revision``, ``cache_dir``, ``local_files_only``, ``torch_dtype``, ``device``,
        ``ignore_mismatched_sizes``, and config overrides such as ``num_labels``).
        """
        from .checkpoint import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Write ``config.json`` and ``model.safetensors`` (sharded above ``max_shard_size``)."""
        from .checkpoint import save_pretrained

        save_pretrained(self, save_directory, **kwargs)


# ----------------------------------------------------------------------------- the model


class ViltModel(ViltPreTrainedModel):
    """The bare ViLT transformer: embeddings, encoder, final LayerNorm and (optional) pooler."""

    def __init__(self, config: ViltConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = ViltEmbeddings(config)
        self.encoder = ViltEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViltPooler(config) if add_pooling_layer else None
        self.attn_implementation = "sdpa"
        self.post_init()

    def set_attn_implementation(self, name: str) -> None:
        """ "sdpa" (default: fused kernels; CPU backward passes take the explicit softmax, faster there)
        or "eager" (explicit softmax everywhere, as the reference)."""
        if name not in ("sdpa", "eager"):
            raise ValueError(f"attention implementation must be 'sdpa' or 'eager', got {name!r}")
        self.attn_implementation = name

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
        """Validate shapes and return (batch size, text length); raise ValueError naming the problem."""
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("pass exactly one of pixel_values or image_embeds")
        text = input_ids if input_ids is not None else inputs_embeds
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be 2-D (batch, text length), got shape {tuple(input_ids.shape)}"
            )
        if inputs_embeds is not None and (
            inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.hidden_size
        ):
            raise ValueError(
                f"inputs_embeds must be (batch, text length, {cfg.hidden_size}), got {tuple(inputs_embeds.shape)}"
            )
        batch, length = text.shape[:2]
        if length > cfg.max_position_embeddings:
            raise ValueError(
                f"the text is {length} tokens long but this model reads at most "
                f"{cfg.max_position_embeddings}; tokenize with truncation=True, "
                f"max_length={cfg.max_position_embeddings}"
            )
        if length == 0:
            raise ValueError(
                "the text is empty: tokenize with add_special_tokens=True to get [CLS] and [SEP]"
            )
        for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if value is not None and tuple(value.shape) != (batch, length):
                raise ValueError(
                    f"{name} must have shape {(batch, length)} like the text, got {tuple(value.shape)}"
                )
        if pixel_values is not None:
            if pixel_values.dim() != 4:
                raise ValueError(
                    f"pixel_values must be 4-D (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
                )
            b, c, h, w = pixel_values.shape
            if c != cfg.num_channels:
                raise ValueError(
                    f"pixel_values has {c} channels but the model expects {cfg.num_channels}; "
                    "convert images to RGB (the processor does this)"
                )
            if h < cfg.patch_size or w < cfg.patch_size:
                raise ValueError(
                    f"the image batch is {h}x{w} pixels, smaller than one {cfg.patch_size}x{cfg.patch_size} "
                    "patch; resize it (the processor does this)"
                )
            if pixel_mask is not None and tuple(pixel_mask.shape) != (b, h, w):
                raise ValueError(f"pixel_mask must have shape {(b, h, w)}, got {tuple(pixel_mask.shape)}")
        else:
            b = image_embeds.shape[0]
            if image_embeds.dim() != 3 or image_embeds.shape[-1] != cfg.hidden_size:
                raise ValueError(
                    f"image_embeds must be (batch, image tokens, {cfg.hidden_size}), got {tuple(image_embeds.shape)}"
                )
            if pixel_mask is not None and pixel_mask.numel() != image_embeds.shape[0] * image_embeds.shape[1]:
                raise ValueError(
                    f"with image_embeds, pixel_mask must mark each of the {image_embeds.shape[1]} image tokens: "
                    f"expected shape {tuple(image_embeds.shape[:2])}, got {tuple(pixel_mask.shape)}"
                )
        if b != batch:
            raise ValueError(
                f"the text batch has {batch} examples but the image batch has {b}; they must match"
            )
        return batch, length

    def _head_mask_per_layer(self, head_mask: torch.Tensor | None) -> list[torch.Tensor | None]:
        """(H,) or (num_layers, H) multiplicative head mask -> one (1, H, 1, 1) tensor per layer."""
        n = self.config.num_hidden_layers
        if head_mask is None:
            return [None] * n
        heads = self.config.num_attention_heads
        if head_mask.dim() == 1:
            head_mask = head_mask[None].expand(n, -1)
        if tuple(head_mask.shape) != (n, heads):
            raise ValueError(
                f"head_mask must have shape ({heads},) or ({n}, {heads}), got {tuple(head_mask.shape)}"
            )
        return [m.reshape(1, heads, 1, 1).to(self.dtype) for m in head_mask]

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
    ) -> ViltModelOutput | tuple[torch.Tensor, ...]:
        """Encode text and image(s) jointly.

        Args:
            input_ids: (B, Lt) token ids; or ``inputs_embeds`` (B, Lt, D).
            attention_mask: (B, Lt) 1 for real text tokens (default: all ones).
            token_type_ids: (B, Lt) text segment ids (default: zeros).
            pixel_values: (B, C, H, W) padded images; or ``image_embeds`` (B, Li, D) precomputed image
                tokens including CLS and position embeddings, with ``pixel_mask`` (B, Li) marking them.
            pixel_mask: (B, H, W) 1 on real pixels (default: all real).
            head_mask: (H,) or (num_layers, H) multiplicative mask on attention heads.
            image_token_type_idx: modality id of the image tokens (default 1; NLVR2 uses 1, 2, ...).
            output_attentions, output_hidden_states, return_dict: as in transformers.
            generator: RNG for random patch sampling (training with max_image_length > 0 only).
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
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
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
        )
        eager = output_attentions or self.attn_implementation == "eager"
        any_padding = torch.compiler.is_exporting() or (  # an exported graph must serve padded batches
            bool((mask == 0).any()) if (attention_mask is not None or pixel_mask is not None) else False
        )
        attention = AttentionMask.from_padding(mask, embeddings.dtype, any_padding)
        x, hidden_states, attentions = self.encoder(
            embeddings, attention, self._head_mask_per_layer(head_mask), eager, output_hidden_states
        )
        if attentions is not None and not output_attentions:
            attentions = None
        sequence = self.layernorm(x)  # (B, L, D)
        pooled = self.pooler(sequence) if self.pooler is not None else None
        if not return_dict:
            return tuple(v for v in (sequence, pooled, hidden_states, attentions) if v is not None)
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
