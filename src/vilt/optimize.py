"""The inference fast path behind ``model.optimize_for_inference()``.

Each encoder layer runs as seven calls: LayerNorm, one fused query/key/value projection, SDPA, the
output projection with the residual add, LayerNorm, the MLP up-projection with its activation, and the
MLP down-projection with the residual add. On CPU builds with oneDNN the Linear weights are prepacked
once into oneDNN's blocked layout, and the bias, activation and residual add are fused into the matrix
products as oneDNN post-ops, so no bias copy and no separate elementwise pass remains. Elsewhere
(CUDA, builds without oneDNN, float16) the same seven steps run with ``F.linear`` on the concatenated
weights. ``benchmarks/RESULTS.md`` measures the gain against the plain layers and transformers.

In bfloat16 on CPU the sequence may also run padded to a multiple of 32: see :func:`attention_length`.
The patch embedding's convolution runs as one prepacked product too (:class:`PackedPatchProjection`).

The packed weights are a cache. The parameters keep the reference's names and stay the source of truth:
``state_dict``, saving and training are untouched. The cache is rebuilt when a source parameter changes
(an in-place update, ``load_state_dict``, ``.to()``), and it is used only in eval mode, without
gradients, head mask or attention probabilities; anything else runs the plain layers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import concatenated_linear

if TYPE_CHECKING:
    from .modeling import AttentionMask, ViltEncoder, ViltLayer

# config.hidden_act -> oneDNN post-op (name, algorithm); other activations run as a separate call.
_ONEDNN_ACTIVATIONS = {
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
}


def onednn_applies(weight: torch.Tensor) -> bool:
    """Whether oneDNN's packed Linear kernels serve this weight (CPU, float32 or bfloat16)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
    )


# PyTorch's CPU flash attention (torch 2.x) runs its bfloat16 products as many small GEMMs, which are
# markedly faster when the sequence length is a multiple of 32: at 185 rows, ViLT-B/32's sequence for a
# 384x384 image and 40 tokens, padding to 192 and masking the padded keys makes the kernel ~1.5x faster
# (the attention table of benchmarks/bench_kernels.py).
ATTENTION_ROW_MULTIPLE = 32
# Every Linear pays for the padded rows too, so pad only while they are few. In float32 the matrix
# products dominate and the attention gains less: the encoder never pads there.
ATTENTION_MAX_EXTRA_FRACTION = 1 / 16


def attention_length(length: int, x: torch.Tensor) -> int:
    """The length the packed encoder runs a (B, length, D) sequence at: ``length`` or a little more.

    bfloat16 CPU sequences round up to a multiple of ``ATTENTION_ROW_MULTIPLE`` when that adds at most
    ``ATTENTION_MAX_EXTRA_FRACTION`` rows (185 -> 192, 221 -> 224, 281 -> 288; not 257 -> 288). The
    extra rows are masked as keys and dropped at the end, so outputs change only by rounding.
    """
    padded = -(-length // ATTENTION_ROW_MULTIPLE) * ATTENTION_ROW_MULTIPLE
    worth_it = padded - length <= length * ATTENTION_MAX_EXTRA_FRACTION
    bfloat16_cpu = x.device.type == "cpu" and x.dtype == torch.bfloat16
    return padded if bfloat16_cpu and worth_it else length


# oneDNN's bfloat16 products can lose speed past a few thousand rows, so a bfloat16 CPU batch with more
# rows than this runs through the encoder in equal pieces. At 384x384 (192 rows per example) batch 32 as
# two pieces of 16 measured from even to ~1.25x faster across runs on the 2-core test machine, never
# slower, while batch 16 ran best whole (the encoder-passes table of benchmarks/bench_kernels.py shows
# one run). float32 gained nothing from it.
MAX_ROWS_PER_PASS = 4096


def batch_passes(x: torch.Tensor) -> int:
    """How many pieces the packed encoder splits a (B, L, D) batch into: 1 unless bfloat16 on CPU with
    more than ``MAX_ROWS_PER_PASS`` rows."""
    b, length, _ = x.shape
    if x.device.type != "cpu" or x.dtype != torch.bfloat16:
        return 1
    return min(b, -(-b * length // MAX_ROWS_PER_PASS))


def padded_bias(bias: torch.Tensor | None, x: torch.Tensor, padded: int) -> torch.Tensor:
    """The (B, 1, 1, padded) additive key mask once ``x`` (B, L, D) is padded: ``bias`` (or zeros) for
    its L keys, the dtype's lowest value for the padded ones."""
    b, length, _ = x.shape
    full = torch.full((b, 1, 1, padded), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device)
    full[..., :length] = 0.0 if bias is None else bias
    return full


def parameter_signature(parameters: Iterable[torch.Tensor]) -> list[tuple[int, int, torch.dtype]]:
    """What identifies the current values of ``parameters``: storage, in-place version, dtype.

    Tensors made under ``torch.inference_mode()`` keep no version counter; for them an in-place change
    goes unseen (replacing them, as ``load_state_dict`` outside inference mode does, is seen).
    """
    return [(p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype) for p in parameters]


class FusedLinear:
    """A (N, K) weight and its bias ready for inference: ``x @ weight.T + bias``, prepacked for oneDNN.

    Args:
        weight: (N, K), detached.
        bias: (N,) or None.
        packed_rows: the row count oneDNN chooses the weight's blocked layout for (its default if None).
    """

    @classmethod
    def concatenated(cls, linears: Sequence[nn.Linear], packed_rows: int | None = None) -> FusedLinear:
        """Linear layers with the same input size as one, their outputs concatenated in order."""
        weight, bias = concatenated_linear(linears)  # (sum N, K), (sum N,)
        return cls(weight.detach(), None if bias is None else bias.detach(), packed_rows)

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, packed_rows: int | None = None
    ) -> None:
        self.bias = bias
        self.onednn = onednn_applies(weight)
        if not self.onednn:
            self.weight = weight
        elif packed_rows is None:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight)
        else:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, packed_rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def activated(self, x: torch.Tensor, name: str, activation: nn.Module) -> torch.Tensor:
        """activation(linear(x)), fused when oneDNN has the activation ``name`` as a post-op."""
        if self.onednn and name in _ONEDNN_ACTIVATIONS:
            post_op, algorithm = _ONEDNN_ACTIVATIONS[name]
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, post_op, [], algorithm)
        return activation(self(x))

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """linear(x) + residual, with the add fused into the matrix product under oneDNN."""
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
        return residual + self(x)


class PackedLayer:
    """One :class:`vilt.modeling.ViltLayer` as the seven fused calls (LayerNorms stay the layer's own)."""

    def __init__(self, layer: ViltLayer, hidden_act: str) -> None:
        attention = layer.attention
        projections = attention.attention
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.qkv = FusedLinear.concatenated([projections.query, projections.key, projections.value])
        self.attention_output = FusedLinear.concatenated([attention.output.dense])
        self.up = FusedLinear.concatenated([layer.intermediate.dense])
        # In oneDNN's default bfloat16 layout the down-projection's weight (4D -> D) runs at about half
        # speed for 512-1280 rows (batch 3-6 at 384x384). Its layout for 1 row is faster at batch 1-6
        # and about even at 8 and 32 (the layout table of benchmarks/bench_kernels.py). The
        # up-projection's gains and losses from it were mixed in the whole model, so it keeps the
        # default; so does float32, where the default measured a few percent faster.
        bfloat16 = layer.output.dense.weight.dtype == torch.bfloat16
        self.down = FusedLinear.concatenated([layer.output.dense], packed_rows=1 if bfloat16 else None)
        self.norm_before, self.norm_after = layer.layernorm_before, layer.layernorm_after
        self.hidden_act, self.activation = hidden_act, layer.intermediate_act_fn

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """One layer on x (B, L, D); ``bias`` is the (B, 1, 1, L) additive key mask or None."""
        b, length, d = x.shape
        qkv = self.qkv(self.norm_before(x)).view(b, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh), strided views
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, L, Dh)
        context = context.transpose(1, 2).reshape(b, length, d)  # (B, L, D)
        x = self.attention_output.plus(context, x)
        hidden = self.up.activated(self.norm_after(x), self.hidden_act, self.activation)  # (B, L, 4D)
        return self.down.plus(hidden, x)


class PackedEncoder:
    """The encoder's layers as :class:`PackedLayer`, rebuilt whenever a source weight changes.

    Args:
        encoder: the :class:`vilt.modeling.ViltEncoder` whose layers to pack.
        hidden_act: ``config.hidden_act``.
    """

    def __init__(self, encoder: ViltEncoder, hidden_act: str) -> None:
        self.encoder, self.hidden_act = encoder, hidden_act
        self.layers: list[PackedLayer] = []
        self.signature: list[tuple[int, int, torch.dtype]] = []

    def __deepcopy__(self, memo: dict[int, object]) -> PackedEncoder:
        """A copied model gets an empty cache of its own (packed oneDNN tensors cannot be copied)."""
        return PackedEncoder(copy.deepcopy(self.encoder, memo), self.hidden_act)

    def __getstate__(self) -> dict[str, object]:
        """Pickle without the packed weights; they are rebuilt on the first call."""
        return {"encoder": self.encoder, "hidden_act": self.hidden_act, "layers": [], "signature": []}

    def _sources(self) -> list[torch.Tensor]:
        return [
            p
            for layer in self.encoder.layer
            for name, p in layer.named_parameters()
            if "layernorm" not in name
        ]

    def applies(self, head_mask: Sequence[torch.Tensor | None], eager: bool) -> bool:
        """Whether this call may take the fast path: eval, no gradients, no head mask, SDPA attention."""
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self._sources())
        return not (self.encoder.training or needs_grad or eager or any(m is not None for m in head_mask))

    def __call__(
        self, x: torch.Tensor, mask: AttentionMask, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run every layer; returns (output (B, L, D), the per-layer inputs plus output if asked).

        A large batch runs in :func:`batch_passes` pieces, whose results are concatenated.
        """
        signature = parameter_signature(self._sources())
        if signature != self.signature:
            self.layers = [PackedLayer(layer, self.hidden_act) for layer in self.encoder.layer]
            self.signature = signature
        # The additive mask, not the boolean one: SDPA would convert a boolean mask in every layer.
        passes = batch_passes(x)
        if passes == 1:
            return self._encode(x, mask.additive, output_hidden_states)
        biases = [None] * passes if mask.additive is None else mask.additive.tensor_split(passes)
        pieces = [self._encode(*piece, output_hidden_states) for piece in zip(x.tensor_split(passes), biases)]
        x = torch.cat([out for out, _ in pieces])  # (B, L, D)
        if not output_hidden_states:
            return x, None
        per_piece = [states for _, states in pieces if states is not None]
        return x, tuple(torch.cat(states) for states in zip(*per_piece))

    def _encode(
        self, x: torch.Tensor, bias: torch.Tensor | None, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Every layer on x (B, L, D) in one pass; ``bias`` is the (B, 1, 1, L) additive mask or None."""
        length = x.shape[1]
        padded = attention_length(length, x)
        if padded > length:
            bias = padded_bias(bias, x, padded)
            x = F.pad(x, (0, 0, 0, padded - length))  # (B, padded, D), zero rows at the end
        hidden_states = []
        for layer in self.layers:
            if output_hidden_states:
                hidden_states.append(x[:, :length].contiguous())  # (B, L, D); x itself if not padded
            x = layer(x, bias)
        if padded > length:
            x = x[:, :length].contiguous()  # (B, L, D)
        if output_hidden_states:
            hidden_states.append(x)
        return x, tuple(hidden_states) if output_hidden_states else None


class PackedPatchProjection:
    """The patch embedding's (D, C, P, P) convolution as one packed product over flattened patches,
    rebuilt whenever its weight or bias changes. In bfloat16 the weight takes oneDNN's layout for 1 row:
    its default runs this 3072 -> 768 product at about half speed for 512-1280 patches (batch 4-8 at
    384x384), like the MLP down-projection (benchmarks/bench_kernels.py).

    Args:
        projection: ``ViltPatchEmbeddings.projection``.
    """

    def __init__(self, projection: nn.Conv2d) -> None:
        self.projection = projection
        self.product: FusedLinear | None = None
        self.signature: list[tuple[int, int, torch.dtype]] = []

    def __deepcopy__(self, memo: dict[int, object]) -> PackedPatchProjection:
        """A copied model gets an empty cache of its own (packed oneDNN tensors cannot be copied)."""
        return PackedPatchProjection(copy.deepcopy(self.projection, memo))

    def __getstate__(self) -> dict[str, object]:
        """Pickle without the packed weight; it is rebuilt on the first call."""
        return {"projection": self.projection, "product": None, "signature": []}

    def applies(self) -> bool:
        """Whether this call may use the packed weight: eval, no gradients, not being exported."""
        needs_grad = torch.is_grad_enabled() and self.projection.weight.requires_grad
        return not (self.projection.training or needs_grad or torch.compiler.is_exporting())

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., C*P*P) flattened patches -> (..., D) embeddings."""
        signature = parameter_signature(self.projection.parameters())
        if signature != self.signature:
            weight = self.projection.weight.detach()  # (D, C, P, P)
            bias = None if self.projection.bias is None else self.projection.bias.detach()
            rows = 1 if weight.dtype == torch.bfloat16 else None
            self.product = FusedLinear(weight.reshape(weight.shape[0], -1), bias, packed_rows=rows)
            self.signature = signature
        assert self.product is not None
        return self.product(patches)
