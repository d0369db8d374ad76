"""Building blocks of the encoder and the patch embedding that can also run on cached inference kernels.

Each block keeps the reference's parameters under the reference's names (the weight contract) and
computes the plain result unless its caller passes ``fast=True``. ``ViltModel`` decides that once per
call: for calls that need no gradient, head mask or attention probabilities, in eval mode, outside
autocast, ``torch.compile`` and ``torch.export`` (:func:`inference_only`), while its ``fast_path``
switch is on. A fast call runs on a cache made from the parameters (:class:`PackedProduct`):

* on CPU builds with oneDNN (float32, bfloat16) the weight is prepacked once into oneDNN's blocked
  layout and the bias, the activation (GELU, ReLU) and the residual add run as post-ops of the matrix
  product, so no separate elementwise pass remains;
* elsewhere (CUDA, float16) the cache is the weight itself, or the concatenated weights of the fused
  query/key/value product, and the activation and the add run as usual.

The parameters stay the source of truth; a cache is rebuilt when one of its parameters changes (an
in-place update, ``load_state_dict``, replacing it), and dropped by ``.train()``, ``.to()`` (and every
other ``_apply``), ``copy.deepcopy`` and pickling; the next fast call rebuilds it. ``VILT_FAST_PATH=0``
in the environment turns the switch off in models built afterwards (:func:`fast_path_default`).

Every choice that depends on the CPU asks :func:`vilt.devices.cpu_features`: a dtype oneDNN cannot run here
is never packed for it (bfloat16 without AVX512 or ARM bf16), and a weight that oneDNN still refuses to
pack falls back to the plain product with one log line. Whether the fast path pays at all is probed on
this machine (:func:`fast_layer_pays`, :func:`fast_patches_pay`), as are its finer choices (weight
layouts, padding, batch pieces): each stays on only where it measured faster than the plain way.

:func:`quantize_int8` gives a model int8 weights (``dtype="int8"``): the encoder's Linear layers become
dynamically quantized ones, which the blocks call as they are.

This module imports nothing of ``vilt`` but :mod:`vilt.tuning` and :mod:`vilt.devices`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeGuard, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from . import tuning
from .devices import cpu_features

logger = logging.getLogger(__name__)


def fast_path_default() -> bool:
    """The fast-path switch of a newly built model: on, unless ``VILT_FAST_PATH`` is 0/false/no/off."""
    return os.environ.get("VILT_FAST_PATH", "1").strip().lower() not in ("0", "false", "no", "off")


def inference_only(module: nn.Module, *inputs: torch.Tensor | None) -> bool:
    """Whether a call of ``module`` on the tensors ``inputs`` (None entries ignored) may run on cached
    kernels: eval mode, no gradient to compute (for an input or a parameter), no autocast, not being
    compiled or exported."""
    device = next(t.device for t in inputs if t is not None)
    if module.training or torch.compiler.is_compiling() or torch.is_autocast_enabled(device.type):
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in inputs) and not any(
        p.requires_grad for p in module.parameters()
    )


# ----------------------------------------------------------------------------- the cached product


def onednn_applies(weight: torch.Tensor) -> bool:
    """Whether oneDNN's prepacked Linear kernels serve this weight: on the CPU, in a dtype oneDNN runs
    here (float32; bfloat16 where :meth:`vilt.devices.CpuFeatures.supports` it)."""
    return weight.device.type == "cpu" and cpu_features().supports(weight.dtype)


_refused: set[torch.dtype] = set()  # the dtypes oneDNN refused to pack here (each logged once)


def onednn_pack(weight: torch.Tensor, packed_rows: int | None) -> torch.Tensor | None:
    """``weight`` in oneDNN's blocked layout for ``packed_rows`` rows (its default if None), or None if
    oneDNN refuses it here: the caller runs the plain product, and the first refusal of each dtype is
    logged (one line)."""
    try:
        if packed_rows is None:
            return torch.ops.mkldnn._reorder_linear_weight(weight)
        return torch.ops.mkldnn._reorder_linear_weight(weight, packed_rows)
    except RuntimeError as err:
        if weight.dtype not in _refused:
            _refused.add(weight.dtype)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            logger.warning(
                "oneDNN cannot pack %s weights on this CPU (%s); those products run the plain way",
                str(weight.dtype).removeprefix("torch."),
                reason,
            )
        return None


def onednn_post_op(activation: nn.Module) -> tuple[str, str] | None:
    """oneDNN's post-op (name, algorithm) computing ``activation``, or None if it has none."""
    if type(activation) is nn.GELU:
        return "gelu", "tanh" if activation.approximate == "tanh" else "none"
    if type(activation) is nn.ReLU:
        return "relu", ""
    return None


def concatenated_linear(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear layers with one input size as one: their weights (sum N, K) and biases (sum N,) concatenated
    along the outputs, in order (one layer's own tensors when there is one)."""
    if len(linears) == 1:
        return linears[0].weight, linears[0].bias
    weight = torch.cat([linear.weight for linear in linears])  # (sum N, K)
    bias = None if linears[0].bias is None else torch.cat([linear.bias for linear in linears])  # (sum N,)
    return weight, bias


class PackedProduct:
    """``x @ weight.T + bias`` on a weight prepared once for inference (prepacked for oneDNN on CPU).

    Args:
        weight: (N, K), detached.
        bias: (N,) or None.
        packed_rows: the row count oneDNN chooses the weight's blocked layout for (its default if None).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, packed_rows: int | None = None
    ) -> None:
        self.bias, self.packed_rows = bias, packed_rows
        packed = onednn_pack(weight, packed_rows) if onednn_applies(weight) else None
        self.onednn = packed is not None
        self.weight = weight if packed is None else packed

    def __call__(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, activation: nn.Module | None = None
    ) -> torch.Tensor:
        """``residual + activation(x @ weight.T + bias)``, each part optional; under oneDNN the activation,
        or else the residual add, runs inside the product."""
        if not self.onednn:
            y = F.linear(x, self.weight, self.bias)
        elif residual is not None and activation is None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
        else:
            fused = None if activation is None else onednn_post_op(activation)
            name, algorithm = fused or ("none", "")
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, name, [], algorithm)
            if fused is not None:
                activation = None  # applied inside the product
        if activation is not None:
            y = activation(y)
        return y if residual is None else residual + y


def int8_linears(linears: Sequence[nn.Module]) -> TypeGuard[Sequence[torch.ao.nn.quantized.dynamic.Linear]]:
    """Whether every one of ``linears`` is a dynamically quantized int8 Linear (:func:`quantize_int8`)."""
    quantized = torch.ao.nn.quantized.dynamic.Linear
    return all(isinstance(m, quantized) and m._packed_params.dtype == torch.qint8 for m in linears)


def plain_linears(linears: Sequence[nn.Module]) -> TypeGuard[Sequence[nn.Linear]]:
    """Whether every one of ``linears`` is a plain ``nn.Linear`` (no other module put in its place)."""
    return all(type(m) is nn.Linear for m in linears)


class Int8Product:
    """The products of int8 Linears (dynamically quantized: :func:`quantize_int8`) that share their input,
    as one: their int8 weights and scales concatenated along the outputs and packed once, the input
    quantized once per call. The same sums as calling each Linear (each quantizes the same input alike).

    Args:
        linears: dynamically quantized Linears with one input size.
    """

    def __init__(self, linears: Sequence[torch.ao.nn.quantized.dynamic.Linear]) -> None:
        weights, biases = zip(*(linear._packed_params._weight_bias() for linear in linears))
        per_channel = [_per_channel(weight) for weight in weights]
        weight = torch._make_per_channel_quantized_tensor(
            torch.cat([w.int_repr() for w in per_channel]),  # (sum N, K) int8
            torch.cat([w.q_per_channel_scales() for w in per_channel]),  # (sum N,)
            torch.cat([w.q_per_channel_zero_points() for w in per_channel]),  # (sum N,)
            0,
        )
        bias = None if biases[0] is None else torch.cat(biases)  # (sum N,)
        with quantized_engine():
            self.packed = torch.ops.quantized.linear_prepack(weight, bias)

    def __call__(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, activation: nn.Module | None = None
    ) -> torch.Tensor:
        """``residual + activation(x @ weight.T + bias)``, each part optional, as the int8 Linears compute
        it (inputs quantized to 7 bits on x86, where fbgemm would otherwise risk saturating sums)."""
        y = torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)
        if activation is not None:
            y = activation(y)
        return y if residual is None else residual + y


def _per_channel(weight: torch.Tensor) -> torch.Tensor:
    """A quantized (N, K) weight with one scale per output channel (a per-tensor one's scale repeated)."""
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return weight
    n = weight.shape[0]
    scales = torch.full((n,), weight.q_scale(), dtype=torch.float64)
    zero_points = torch.full((n,), weight.q_zero_point(), dtype=torch.long)
    return torch._make_per_channel_quantized_tensor(weight.int_repr(), scales, zero_points, 0)


def parameter_signature(parameters: Iterable[torch.Tensor | None]) -> list[tuple[int, int, int]]:
    """What identifies the current values of ``parameters``: object, storage, in-place version.

    In-place changes through ``.data`` go unseen (it has a version counter of its own), and so do those
    of tensors made under ``torch.inference_mode()``, which keep none; replacing a tensor is seen.
    """
    return [(id(p), p.data_ptr(), 0 if p.is_inference() else p._version) for p in parameters if p is not None]


class CachedProduct(nn.Module):
    """A module with a :class:`PackedProduct` made from its parameters (:meth:`sources`, by
    :meth:`build_product`), kept while they stay unchanged; mixed in before the ``nn.Module`` subclass it
    extends."""

    _product: PackedProduct | Int8Product | None
    _signature: list[tuple[int, int, int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release()

    def sources(self) -> list[torch.Tensor | None]:
        """The parameters the product is made from."""
        raise NotImplementedError

    def build_product(self) -> PackedProduct | Int8Product:
        raise NotImplementedError

    def packable(self) -> bool:
        """Whether the product may be made from :meth:`sources`. Blocks whose sources sit in child modules
        say no where a tool put another module in place of a plain one (``quantize_dynamic``'s quantized
        Linear, whose ``weight`` is a method, or a LoRA wrapper); such a block runs through that module."""
        return True

    def signature(self) -> list[tuple[int, int, int]]:
        """What identifies the current values of the product's sources (:func:`parameter_signature`)."""
        return parameter_signature(self.sources())

    def packed(self) -> PackedProduct | Int8Product:
        """The cached product, rebuilt first if a parameter changed since it was built."""
        signature = self.signature()
        if self._product is None or signature != self._signature:
            with torch.no_grad():
                self._product = self.build_product()
            self._signature = signature
        return self._product

    @property
    def cached(self) -> bool:
        """Whether a product is cached now."""
        return self._product is not None

    def release(self) -> None:
        """Drop the cached product (its memory is freed once no call uses it)."""
        self._product = None
        self._signature = []

    def train(self, mode: bool = True) -> CachedProduct:
        if mode:
            self.release()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> CachedProduct:
        self.release()
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry no cache (packed oneDNN tensors cannot be copied); they rebuild it."""
        state = super().__getstate__()
        state["_product"], state["_signature"] = None, []
        return state


# oneDNN's default blocked layout for a bfloat16 weight can run a wide-input product (e.g. the MLP's
# 4D -> D down-projection) at about half speed for a few hundred to a thousand rows on some CPUs, where
# its layout for 1 row runs at full speed (the layout table of benchmarks/bench_kernels.py); elsewhere
# the two are even, or the default is faster. The probe times both on this many rows.
LAYOUT_PROBE_ROWS = 768


def one_row_layout_pays(weight: torch.Tensor) -> bool:
    """Whether oneDNN's layout for 1 row beats its default layout for a product with ``weight`` (N, K)
    here: probed once per process for each shape and dtype on ``LAYOUT_PROBE_ROWS`` rows."""
    if not onednn_applies(weight):
        return False
    n, k = weight.shape

    def probe() -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(LAYOUT_PROBE_ROWS, k, generator=generator).to(weight.dtype)  # (rows, K)
        default, one_row = PackedProduct(weight, None), PackedProduct(weight, None, packed_rows=1)
        return tuning.median_seconds({"plain": lambda: default(x), "candidate": lambda: one_row(x)})

    return tuning.decide(("one-row weight layout", str(weight.dtype), n, k), probe)


# ----------------------------------------------------------------------------- the blocks


class Dense(CachedProduct):
    """A Linear layer named ``dense`` followed by dropout (the reference's module names), whose product can
    run on its prepacked weight with the activation or the residual add fused.

    The Linear stays a plain ``nn.Linear``: a tool that puts another module in its place (a quantized
    Linear, a LoRA wrapper) is called as it is, and the cache is not used (:meth:`packable`).

    Args:
        in_features, out_features: the Linear's sizes (with a bias).
        dropout: dropout after the activation, before the add.
        layout_probe: let :func:`one_row_layout_pays` choose the weight's oneDNN layout (for the products
            with a wide input, where the layout matters).
    """

    def __init__(
        self, in_features: int, out_features: int, dropout: float, layout_probe: bool = False
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)
        self.layout_probe = layout_probe

    def sources(self) -> list[torch.Tensor | None]:
        return [self.dense.weight, self.dense.bias]

    def packable(self) -> bool:
        return type(self.dense) is nn.Linear

    def build_product(self) -> PackedProduct:
        weight = self.dense.weight.detach()
        bias = None if self.dense.bias is None else self.dense.bias.detach()
        rows = 1 if self.layout_probe and one_row_layout_pays(weight) else None
        return PackedProduct(weight, bias, rows)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        activation: nn.Module | None = None,
        fast: bool = False,
    ) -> torch.Tensor:
        """``residual + dropout(activation(dense(x)))``, each part optional: (..., K) -> (..., N).
        ``fast`` runs it on the cached product (the caller checked :func:`inference_only`)."""
        if fast and self.packable():
            return self.packed()(x, residual, activation)
        y = self.dense(x)
        if activation is not None:
            y = activation(y)
        y = self.dropout(y)
        return y if residual is None else residual + y


class QKVProjection(CachedProduct):
    """The query, key and value projections (Linear layers under those names) of multi-head attention,
    and the attention-probability dropout.

    Args:
        hidden_size: D, the input and each projection's output width.
        num_heads: H; the head size Dh is D // H.
        bias: whether the projections have biases.
        dropout: attention-probability dropout.
    """

    def __init__(self, hidden_size: int, num_heads: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def projections(self) -> list[nn.Module]:
        return [self.query, self.key, self.value]

    def sources(self) -> list[torch.Tensor | None]:
        linears = cast(list[nn.Linear], self.projections())  # plain ones where the product is made
        return [p for linear in linears for p in (linear.weight, linear.bias)]

    def signature(self) -> list[tuple[int, int, int]]:
        projections = self.projections()
        if int8_linears(projections):  # their packed weights, replaced whole when changed
            return [(id(linear._packed_params._packed_params), 0, 0) for linear in projections]
        return super().signature()

    def packable(self) -> bool:
        """Plain Linears (a product on their concatenated weights), or int8 ones (one int8 product)."""
        return plain_linears(self.projections()) or int8_linears(self.projections())

    def build_product(self) -> PackedProduct | Int8Product:
        projections = self.projections()
        if int8_linears(projections):
            return Int8Product(projections)
        assert plain_linears(projections)  # packed() is only called where packable() said so
        weight, bias = concatenated_linear(projections)  # (3D, D), (3D,)
        return PackedProduct(weight.detach(), None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor, fast: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, D) -> query, key, value, each (B, H, L, Dh).

        One product on the concatenated weights when ``fast`` (cached; int8 weights too) or when a
        backward follows (one wide product, one autocast cast of ``x`` and one gradient for it instead of
        three); otherwise, or when another module took a projection's place (:meth:`packable`), three
        calls, as the reference.
        """
        b, length, _ = x.shape
        projections = self.projections()
        if fast and self.packable():
            fused = self.packed()(x)  # (B, L, 3D)
        elif plain_linears(projections) and torch.is_grad_enabled() and x.requires_grad:
            fused = F.linear(x, *concatenated_linear(projections))  # (B, L, 3D)
        else:
            return self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        fused = fused.view(b, length, 3, self.num_heads, self.head_dim)  # (B, L, 3, H, Dh)
        q, k, v = fused.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh), strided views
        return q, k, v

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)


class PatchProjection(CachedProduct, nn.Conv2d):
    """The (D, C, P, P) projection of non-overlapping P x P patches: a strided ``nn.Conv2d``, whose sum
    also runs as one matrix product over flattened patches (:meth:`product`), on a prepacked weight
    when fast."""

    def __init__(self, num_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def flat_weight(self) -> torch.Tensor:
        return self.weight.reshape(self.out_channels, -1)  # (D, C*P*P)

    def sources(self) -> list[torch.Tensor | None]:
        return [self.weight, self.bias]

    def build_product(self) -> PackedProduct:
        weight = self.flat_weight().detach()
        bias = None if self.bias is None else self.bias.detach()
        return PackedProduct(weight, bias, 1 if one_row_layout_pays(weight) else None)

    def product(self, patches: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """(..., C*P*P) flattened patches -> (..., D); ``fast`` runs it on the cached product."""
        if fast:
            return self.packed()(patches)
        return F.linear(patches, self.flat_weight(), self.bias)


# ----------------------------------------------------------------------------- does the fast path pay?

# A block's fast way runs a call (B, L) on (B x L) rows; its speed against the plain way depends on the row
# count, so each power-of-two range of rows is probed once (on the first call that falls in it).
FastCall = Callable[[torch.Tensor, bool], object]  # run(x, fast): the block on x, the fast way or the plain
# The whole fast path rests on these probes, so each takes three rounds at least and up to a second, and
# compares the two ways' fastest rounds: on a shared machine, bursts of other work can slow several
# rounds of one way (a median of three once kept ViLT-B/32 at batch 8 on the plain layers, 1.24x slower).
FAST_PROBE_BUDGET_S = 1.0


def rows_bucket(rows: int) -> int:
    """The power of two at or above ``rows``: calls within one bucket share a probe's answer."""
    return 1 << max(0, rows - 1).bit_length()


def fast_pays(kind: str, x: torch.Tensor, rows: int, run: FastCall, *sizes: int) -> bool:
    """Whether the fast way of a block beats its plain way on this machine for inputs like ``x``: probed
    once per process for each ``kind``, dtype, ``sizes`` (the block's) and bucket of ``rows``
    (:func:`rows_bucket`), by timing ``run(sample, False)`` against ``run(sample, True)`` on a random
    sample shaped like ``x``. Off the CPU (no probe: CUDA timing needs synchronising) the fast way is
    taken. The fast way changes outputs by rounding only, so either answer is correct."""
    if x.device.type != "cpu":
        return True

    def probe() -> dict[str, float]:
        sample = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x)
        contestants = {"plain": lambda: run(sample, False), "candidate": lambda: run(sample, True)}
        return tuning.median_seconds(contestants, budget_s=FAST_PROBE_BUDGET_S, least=3, statistic=min)

    return tuning.decide((kind, str(x.dtype), *sizes, rows_bucket(rows)), probe)


def fast_layer_pays(x: torch.Tensor, run: FastCall, *sizes: int) -> bool:
    """Whether a transformer layer (``run``: the encoder's first, sizes D, H, 4D) runs faster on its cached
    products than plainly on a (B, L, D) batch like ``x``: the whole layer is timed, both ways, at this
    batch's row count (:func:`fast_pays`). On some CPUs (AVX2 without AVX512) oneDNN's prepacked
    products are slower than PyTorch's plain ones; there the encoder runs the plain layers."""
    b, length, _ = x.shape
    return fast_pays("fast layer", x, b * length, run, *sizes)


def fast_patches_pay(pixel_values: torch.Tensor, patch_size: int, run: FastCall, *sizes: int) -> bool:
    """Whether the patch embedding runs faster on its prepacked product than plainly (the strided
    convolution in float32, the unpacked product otherwise) on (B, C, H, W) pixels like these."""
    b, _, h, w = pixel_values.shape
    return fast_pays("fast patches", pixel_values, b * (h // patch_size) * (w // patch_size), run, *sizes)


# ----------------------------------------------------------------------------- padding and pieces

LayerCall = Callable[[torch.Tensor, torch.Tensor | None], object]  # run(x, bias): a layer, fast, on x

# PyTorch's CPU flash attention runs its products in blocks, and on some CPUs a sequence whose length is
# a multiple of 32 runs markedly faster (ViLT-B/32's 185 rows for a 384x384 image and 40 tokens padded to
# 192: ~1.6x on one Intel CPU, ~1.15x on one AMD CPU; the attention table of benchmarks/bench_kernels.py).
ATTENTION_ROW_MULTIPLE = 32
# Every Linear pays for the padded rows too, so a sequence is a candidate only while they are few.
ATTENTION_MAX_EXTRA_FRACTION = 1 / 16


def padding_candidate(length: int) -> int:
    """The padded length a sequence of ``length`` tokens may run at: the next multiple of
    ``ATTENTION_ROW_MULTIPLE`` when that adds at most ``ATTENTION_MAX_EXTRA_FRACTION`` rows (185 -> 192,
    221 -> 224, 281 -> 288; not 257 -> 288), else ``length``."""
    padded = -(-length // ATTENTION_ROW_MULTIPLE) * ATTENTION_ROW_MULTIPLE
    return padded if padded - length <= length * ATTENTION_MAX_EXTRA_FRACTION else length


def padded_bias(bias: torch.Tensor | None, x: torch.Tensor, padded: int) -> torch.Tensor:
    """The (B, 1, 1, padded) additive key mask once ``x`` (B, L, D) is padded: ``bias`` (or zeros) for
    its L keys, the dtype's lowest value for the padded ones."""
    b, length, _ = x.shape
    full = torch.full((b, 1, 1, padded), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device)
    full[..., :length] = 0.0 if bias is None else bias
    return full


# oneDNN's products can lose speed past a few thousand rows on some CPUs (at 384x384, batch 32 ran up to
# ~1.25x faster as two pieces of 16 on one 2-core AMD machine, and even on one Intel machine); a batch
# with more rows than this is a candidate for running through the encoder in equal pieces.
MAX_ROWS_PER_PASS = 4096


def pieces_candidate(batch: int, length: int) -> int:
    """How many equal pieces a (batch, length) sequence batch may run in: enough to keep each piece
    within ``MAX_ROWS_PER_PASS`` rows (1 for a batch within it)."""
    return min(batch, -(-batch * length // MAX_ROWS_PER_PASS))


def attention_length(x: torch.Tensor, run: LayerCall, *sizes: int) -> int:
    """The length the fast path runs a (B, L, D) CPU sequence at: L, or :func:`padding_candidate` (the
    next multiple of 32 when that adds few rows) when a probe found a layer faster padded.

    The probe (once per process, dtype and layer ``sizes``) times ``run``, the first layer on the fast
    path with an additive key mask, at batch 1 on the first candidate length seen, plain and padded. The
    padded rows are masked as keys and dropped at the end, so outputs change only by rounding.
    """
    length = x.shape[1]
    padded = padding_candidate(length)
    if padded == length or x.device.type != "cpu":
        return length

    def probe() -> dict[str, float]:
        sample = torch.randn(1, length, x.shape[-1], generator=torch.Generator().manual_seed(0)).to(x)
        bias = padded_bias(None, sample, padded)
        wide = F.pad(sample, (0, 0, 0, padded - length))  # (1, padded, D)
        return tuning.median_seconds(
            {"plain": lambda: run(sample, None), "candidate": lambda: run(wide, bias)}
        )

    return padded if tuning.decide(("padded attention", str(x.dtype), *sizes), probe) else length


def batch_pieces(x: torch.Tensor, run: LayerCall, *sizes: int) -> int:
    """How many equal pieces the fast path runs a (B, L, D) CPU batch in: 1, or enough to keep each
    within :data:`MAX_ROWS_PER_PASS` rows when a probe found that faster. The probe (once per process,
    dtype and layer ``sizes``, at the first batch large enough) times ``run``, the first layer on the fast
    path, on this batch's row count whole and in those pieces."""
    b, length, d = x.shape
    passes = pieces_candidate(b, length)
    if passes == 1 or x.device.type != "cpu":
        return 1

    def probe() -> dict[str, float]:
        sample = torch.randn(b, length, d, generator=torch.Generator().manual_seed(0)).to(x)
        pieces = sample.tensor_split(passes)
        return tuning.median_seconds(
            {"plain": lambda: run(sample, None), "candidate": lambda: [run(piece, None) for piece in pieces]}
        )

    return passes if tuning.decide(("batch pieces", str(x.dtype), *sizes), probe) else 1


# ----------------------------------------------------------------------------- int8 weights


@contextlib.contextmanager
def quantized_engine() -> Iterator[str]:
    """PyTorch's quantized engine for int8 products on this CPU, set while int8 weights are packed (packed
    weights keep the engine they were packed for): fbgemm's x86 kernels where there is AVX2 (with VNNI
    where present), else QNNPACK (ARM, and x86 CPUs without AVX2, where oneDNN's int8 products stop on
    an illegal instruction)."""
    engines = torch.backends.quantized.supported_engines
    preferred = ("x86", "fbgemm") if cpu_features().avx2 else ("qnnpack",)
    engine = next((name for name in preferred if name in engines), torch.backends.quantized.engine)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield engine
    finally:
        torch.backends.quantized.engine = previous


_Model = TypeVar("_Model", bound=nn.Module)


def quantize_int8(model: _Model) -> _Model:
    """Give ``model``'s blocks (:class:`Dense`, :class:`QKVProjection`: every product of the encoder) int8
    weights, in place; returns the model.

    PyTorch's dynamic quantization with one scale per output channel: each Linear inside a block becomes
    a quantized one holding int8 weights (a quarter of float32's memory), and each call quantizes its
    input on the fly, multiplies in int8 and returns float32. The blocks call such Linears as they are
    (:meth:`CachedProduct.packable`). The embeddings, the patch projection and the heads stay float32:
    they are a few percent of the work and most of the sensitivity. The model must be float32.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {
        f"{block_name}.{child_name}"
        for block_name, block in model.named_modules()
        if isinstance(block, (Dense, QKVProjection))
        for child_name, child in block.named_children()
        if type(child) is nn.Linear
    }
    if not names:
        return model
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("int8 weights are made from a float32 model; cast it with .float() first")
    with quantized_engine(), warnings.catch_warnings():
        # torch.ao.quantization's notices (moving to torchao), not the caller's concern with torch pinned
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning
        )
        quantize_dynamic(
            model, dict.fromkeys(names, per_channel_dynamic_qconfig), dtype=torch.qint8, inplace=True
        )
    return model
