"""Kernel-level measurements behind the choices of the inference fast path (CPU).

1. **Attention at ViLT's sequence lengths**: ``F.scaled_dot_product_attention`` (PyTorch's CPU flash
   kernel) at length L against the same attention padded to the next multiple of 32 with the padded keys
   masked, which the fast path does when the padding is small and its probe finds a layer faster padded
   (``vilt.layers.attention_length``).
2. **Patch embedding**: the reference's strided convolution against the same sum as one matrix product
   over flattened patches (``ViltPatchEmbeddings.patch_product``), plain and on the prepacked weight of
   the fast path (``vilt.layers.PatchProjection``).
3. **The MLP products' weight layout**: oneDNN's bfloat16 up-projection (with GELU) and down-projection
   (with the residual add) at 192..6144 rows, the weight prepacked in its default blocked layout against
   the layout chosen for 1 row, which the fast path uses for the down-projection and the patch
   projection where its probe finds it faster (``vilt.layers.one_row_layout_pays``).
4. **Batch-1 matrix products, weights in cache or not**: the encoder's three Linear shapes at 192 rows (185 padded)
   with one prepacked weight reused (it stays in cache) against 24 different weights in turn, as a
   forward reads 12 layers' weights once each. The gap is what streaming the weights costs at batch 1.
5. **Encoder passes**: the bfloat16 model at batch 16 and 32 (384x384) with its encoder in one pass over
   the batch or in two pieces (``vilt.layers.batch_pieces``). Sections 3 to 5 run in bfloat16 where the
   CPU multiplies it natively, else in float32.

Then the choices the fast path's probes made in this process (``vilt.tuning.decisions``), which are
those a model makes on this machine. Contestants alternate within every repetition
(``common.alternate``); figures are medians.

Run: ``python benchmarks/bench_kernels.py [--quick]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import Section, alternate, forward_inputs, load_models, model_dir, set_threads, table

from vilt import ViltConfig, modeling, tuning
from vilt.devices import cpu_features
from vilt.layers import (
    ATTENTION_ROW_MULTIPLE,
    attention_length,
    batch_pieces,
    one_row_layout_pays,
    padded_bias,
)
from vilt.modeling import ViltEncoder, ViltPatchEmbeddings

# The precisions measured: bfloat16 only where oneDNN runs it (without AVX512 or ARM bf16 it has no
# bfloat16 products); the sections about the fast path's reduced precision (layouts, streaming, passes)
# use LOW: bfloat16 where the CPU multiplies it natively, else float32.
DTYPES = (torch.float32, torch.bfloat16) if cpu_features().supports(torch.bfloat16) else (torch.float32,)
LOW = torch.bfloat16 if cpu_features().native_bf16 else torch.float32
LOW_NAME = str(LOW).removeprefix("torch.")

HEADS, HEAD_DIM = 12, 64
HIDDEN = HEADS * HEAD_DIM
# 40 text tokens + 1 + Hp*Wp image tokens: 224x224, 320x320, 384x384, 384x480, 384x576, 384x640, 768x768
LENGTHS = (90, 141, 185, 221, 257, 281, 617)
CALLS = 5  # kernel calls per timed unit


def repeated(call: Callable[[], object]) -> Callable[[], None]:
    def unit() -> None:
        for _ in range(CALLS):
            call()

    return unit


def per_call_ms(contestants: dict[str, Callable[[], object]], repetitions: int) -> list[float]:
    """Median ms per call of each contestant, alternating, in the order given."""
    timings = alternate({name: repeated(call) for name, call in contestants.items()}, repetitions)
    return [1e3 * timings.median(name) / CALLS for name in contestants]


def attention_pair(dtype: torch.dtype, batch: int, length: int, padded: int, repetitions: int) -> list[float]:
    """ms per SDPA call at ``length``, then at ``padded`` with the padded keys masked."""
    qkv = torch.randn(batch, length, 3, HEADS, HEAD_DIM, dtype=dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh), as the fast path has them
    rows = qkv.view(batch, length, -1)  # (B, L, 3D)
    padded_qkv = F.pad(rows, (0, 0, 0, padded - length)).view(batch, padded, 3, HEADS, HEAD_DIM)
    pq, pk, pv = padded_qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, padded, Dh)
    bias = padded_bias(None, rows, padded)  # (B, 1, 1, padded)
    return per_call_ms(
        {
            "plain": lambda: F.scaled_dot_product_attention(q, k, v),
            "padded": lambda: F.scaled_dot_product_attention(pq, pk, pv, attn_mask=bias),
        },
        repetitions,
    )


def attention_rows(encoder: ViltEncoder, dtype: torch.dtype, batch: int, repetitions: int) -> list[list[str]]:
    """The attention pairs at every length, and the length the fast path of ``encoder`` (ViLT-B/32, in
    ``dtype``) runs each at."""
    rows = []
    for length in LENGTHS:
        padded = -(-length // ATTENTION_ROW_MULTIPLE) * ATTENTION_ROW_MULTIPLE
        plain, pad = attention_pair(dtype, batch, length, padded, repetitions)
        sequence = torch.empty(batch, length, HIDDEN, dtype=dtype)
        chosen = attention_length(sequence, encoder._probe_layer, *encoder.layer_sizes)
        rows.append(
            [
                str(dtype).removeprefix("torch."), str(batch), str(length), str(padded),
                f"{plain:.3f}", f"{pad:.3f}", f"{plain / pad:.2f}x", "padded" if chosen != length else "plain",
            ]
        )  # fmt: skip
    return rows


def patch_times(dtype: torch.dtype, batch: int, repetitions: int) -> list[float]:
    """ms per patch embedding of a 384x384 batch: the strided convolution, the matrix product, and the
    matrix product on the prepacked weight (what the fast path runs)."""
    embed = ViltPatchEmbeddings(ViltConfig()).to(dtype).eval().requires_grad_(False)  # 32x32 patches
    pixels = torch.randn(batch, 3, 384, 384, dtype=dtype)
    return per_call_ms(
        {
            "conv": lambda: embed.projection(pixels),
            "product": lambda: embed.patch_product(pixels),
            "packed": lambda: embed.patch_product(pixels, fast=True),
        },
        repetitions,
    )


def patch_rows(repetitions: int) -> list[list[str]]:
    rows = []
    for dtype in DTYPES:
        for batch in (1, 8):
            convolution, product, packed = patch_times(dtype, batch, repetitions)
            rows.append(
                [str(dtype).removeprefix("torch."), str(batch), f"{convolution:.2f}", f"{product:.2f}",
                 f"{packed:.2f}", f"{convolution / product:.2f}x", f"{convolution / packed:.2f}x"]
            )  # fmt: skip
    return rows


def layout_pair(k: int, n: int, post_op: str, rows: int, repetitions: int) -> list[float]:
    """ms per (rows x k) @ (k x n) product in LOW with its post-op ("gelu" or the residual "add"),
    the weight packed in oneDNN's default layout, then in its layout for 1 row."""
    linear = torch.ops.mkldnn._linear_pointwise
    weight = torch.randn(n, k, dtype=LOW) * 0.02
    bias = torch.zeros(n, dtype=LOW)
    x = torch.randn(rows, k, dtype=LOW)
    residual = torch.randn(rows, n, dtype=LOW)

    def product(packed: torch.Tensor) -> Callable[[], torch.Tensor]:
        if post_op == "gelu":
            return lambda: linear(x, packed, bias, "gelu", [], "none")
        return lambda: linear.binary(x, residual, packed, bias, "add")

    default = torch.ops.mkldnn._reorder_linear_weight(weight)
    one_row = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
    return per_call_ms({"default": product(default), "for 1 row": product(one_row)}, repetitions)


def layout_rows(repetitions: int) -> list[list[str]]:
    """Both layouts of both MLP products by row count; the down-projection's layout is the probe's choice
    (the up-projection always takes the default)."""
    rows = []
    down = one_row_layout_pays(torch.zeros(HIDDEN, 4 * HIDDEN, dtype=LOW))
    for name, k, n, post_op in (
        ("up + GELU", HIDDEN, 4 * HIDDEN, "gelu"),
        ("down + add", 4 * HIDDEN, HIDDEN, "add"),
    ):
        for batch in (1, 2, 4, 6, 8, 32):
            m = batch * 192  # 192 rows per 384x384 example (185 padded)
            default_ms, one_ms = layout_pair(k, n, post_op, m, repetitions)
            gflop = 2 * m * k * n / 1e9
            runs = "for 1 row" if name.startswith("down") and down else "default"
            rows.append(
                [name, str(batch), str(m), f"{default_ms:.3f}", f"{gflop / default_ms:.2f}",
                 f"{one_ms:.3f}", f"{gflop / one_ms:.2f}", f"{default_ms / one_ms:.2f}x", runs]
            )  # fmt: skip
    return rows


def streaming_pair(
    k: int, n: int, packed_rows: int | None, rows: int, weights: int, repetitions: int
) -> list[float]:
    """ms per (rows x k) @ (k x n) product: one weight reused, then ``weights`` different ones in turn."""
    linear = torch.ops.mkldnn._linear_pointwise
    x = torch.randn(rows, k, dtype=LOW)
    bias = torch.zeros(n, dtype=LOW)
    sources = [torch.randn(n, k, dtype=LOW) * 0.02 for _ in range(weights)]
    packed = [
        torch.ops.mkldnn._reorder_linear_weight(w)
        if packed_rows is None
        else torch.ops.mkldnn._reorder_linear_weight(w, packed_rows)
        for w in sources
    ]

    def cycle(count: int) -> Callable[[], None]:
        def unit() -> None:
            for i in range(2 * weights):
                linear(x, packed[i % count], bias, "none", [], "")

        return unit

    timings = alternate({"cached": cycle(1), "streamed": cycle(weights)}, repetitions)
    return [1e3 * timings.median(key) / (2 * weights) for key in ("cached", "streamed")]


def streaming_rows(repetitions: int, rows: int = 192, weights: int = 24) -> list[list[str]]:
    """The encoder's products at batch 1 (192 rows: 185 padded), with the layouts the encoder packs."""
    table_rows = []
    down = 1 if one_row_layout_pays(torch.zeros(HIDDEN, 4 * HIDDEN, dtype=LOW)) else None
    for name, k, n, packed_rows in (
        ("QKV", HIDDEN, 3 * HIDDEN, None),
        ("MLP up", HIDDEN, 4 * HIDDEN, None),
        ("MLP down", 4 * HIDDEN, HIDDEN, down),
    ):
        cached, streamed = streaming_pair(k, n, packed_rows, rows, weights, repetitions)
        gflop, weight_mb = 2 * rows * k * n / 1e9, 2 * k * n / 1e6
        table_rows.append(
            [name, f"{rows}x{k}x{n}", f"{cached:.3f}", f"{gflop / cached:.2f}",
             f"{streamed:.3f}", f"{gflop / streamed:.2f}", f"{weight_mb / streamed:.1f}",
             f"{streamed / cached:.2f}x"]
        )  # fmt: skip
    return table_rows


def passes_rows(model: torch.nn.Module, repetitions: int) -> list[list[str]]:
    """ms per forward of the LOW model with its encoder in one pass or two."""
    encoder = model.vilt.encoder

    def forward(inputs: dict[str, torch.Tensor], passes: int) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            chosen = modeling.batch_pieces
            modeling.batch_pieces = lambda *_: passes
            try:
                return model(**inputs).logits
            finally:
                modeling.batch_pieces = chosen

        return call

    rows = []
    for batch in (16, 32):
        inputs = forward_inputs(batch, 384, 384, LOW)
        sequence = torch.empty(batch, 185, HIDDEN, dtype=LOW)
        picked = batch_pieces(sequence, encoder._probe_layer, *encoder.layer_sizes)  # probes at batch 32
        timings = alternate({"one": forward(inputs, 1), "two": forward(inputs, 2)}, max(3, repetitions // 3))
        one, two = (1e3 * timings.median(name) for name in ("one", "two"))
        rows.append([str(batch), f"{one:.0f}", f"{two:.0f}", f"{one / two:.2f}x", str(picked)])
    return rows


def decision_rows() -> list[list[str]]:
    """Each choice the probes made in this process: its key and whether the candidate way won."""
    return [
        [str(key[0]), ", ".join(str(part) for part in key[1:]), "yes" if taken else "no"]
        for key, taken in sorted(tuning.decisions().items(), key=str)
    ]


def run(quick: bool = False) -> Section:
    """The five measurements and the probes' choices as one Markdown section."""
    set_threads()
    repetitions = 5 if quick else 15
    models = {dtype: load_models(model_dir(), dtype)[0] for dtype in DTYPES}
    with torch.inference_mode():
        attention = [row for dtype in DTYPES for batch in (1, 8)
                     for row in attention_rows(models[dtype].vilt.encoder, dtype, batch, repetitions)]  # fmt: skip
        patches = patch_rows(repetitions)
        layouts = layout_rows(repetitions)
        streaming = streaming_rows(repetitions)
        passes = passes_rows(models[LOW], repetitions)
    lines = [
        "## Kernel measurements behind the fast path (`python benchmarks/bench_kernels.py`)",
        "",
        f"Medians of {repetitions} alternating repetitions of {CALLS} calls (streaming: 48 calls).",
        "",
        "### Attention: plain length against padded to a multiple of 32 (padded keys masked)",
        "",
        "The last column is the length ViLT-B/32's fast path runs at (`vilt.layers.attention_length`).",
        "",
        table(
            ["dtype", "batch", "L", "padded", "plain ms", "padded ms", "plain / padded", "vilt runs"],
            attention,
        ),
        "",
        "### Patch embedding, 384x384: strided convolution against the matrix product",
        "",
        table(
            [
                "dtype",
                "batch",
                "convolution ms",
                "product ms",
                "packed product ms",
                "product speed-up",
                "packed speed-up",
            ],
            patches,
        ),  # fmt: skip
        "",
        f"### MLP products ({LOW_NAME}, with their fused post-ops): oneDNN weight layout by row count",
        "",
        table(
            [
                "product",
                "batch",
                "rows",
                "default layout ms",
                "TFLOP/s",
                "layout for 1 row ms",
                "TFLOP/s",
                "speed-up",
                "vilt runs",
            ],
            layouts,
        ),  # fmt: skip
        "",
        f"### Batch 1: {LOW_NAME} matrix products with the weight in cache, or streamed like a forward's",
        "",
        table(
            [
                "product",
                "MxKxN",
                "cached ms",
                "cached TFLOP/s",
                "streamed ms",
                "streamed TFLOP/s",
                "weight GB/s streamed",
                "streamed / cached",
            ],
            streaming,
        ),
        "",
        f"### Encoder passes: the {LOW_NAME} model, 384x384, the batch in one pass or two pieces",
        "",
        table(
            ["batch", "one pass ms", "two pieces ms", "speed-up of two pieces", "passes vilt runs"], passes
        ),
        "",
        "### The choices the fast path's probes made on this machine",
        "",
        "Each was probed once in this process (`vilt.tuning`): the candidate way is taken only when it "
        f"beat the plain way by more than {tuning.MARGIN:.0%}.",
        "",
        table(["choice", "dtype and sizes", "candidate taken"], decision_rows()),
        "",
    ]
    return Section("\n".join(lines), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    print(run(parser.parse_args().quick).markdown)


if __name__ == "__main__":
    main()
