"""The CUDA comparison: ours against transformers on one GPU, side by side (run by ``gpu.sh``).

On the same random-weight ViLT-B/32 VQA model (3129 answers), 40 tokens, 384x384 images:

* forward, batch 1, 8 and 32, in float32 and bfloat16: ``reference`` (transformers, eager attention),
  ``ours`` (SDPA: flash / memory-efficient kernels), ``ours optimized`` (``optimize_for_inference()``:
  fused QKV, bias and residual) and ``ours compiled`` (``torch.compile(mode="max-autotune")`` of the
  optimized model, which captures CUDA graphs). Inputs carry no masks (all images full size), so no
  host sync breaks the graph;
* a fine-tuning step (forward + backward + AdamW), batch 32, bfloat16 autocast, reference vs ours.

Timings synchronise the GPU; medians of alternating repetitions; "% peak" divides by the measured
bf16 / fp32 ``torch.mm`` peak of this GPU. ``--device cpu --quick`` smoke-tests the script without a
GPU (tiny workload, no compile).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from common import alternate, count_flops, forward_inputs, model_dir, table

BATCHES = (1, 8, 32)
DTYPES = (torch.float32, torch.bfloat16)


def synchronized(device: torch.device, call: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return run


def gpu_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best median FLOP/s of an 8192^3 (CPU smoke test: 512^3) ``torch.mm``."""
    n = 8192 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    timings = alternate({"mm": synchronized(device, lambda: a @ b)}, 10, warmup=3)
    return 2 * n**3 / timings.median("mm")


def models(device: torch.device, dtype: torch.dtype, compile_model: bool) -> dict[str, torch.nn.Module]:
    from transformers import ViltForQuestionAnswering as ReferenceVQA

    from vilt import ViltForQuestionAnswering

    directory = model_dir()
    ours = ViltForQuestionAnswering.from_pretrained(directory, torch_dtype=dtype, device=device).eval()
    optimized = ViltForQuestionAnswering.from_pretrained(directory, torch_dtype=dtype, device=device)
    optimized.optimize_for_inference()
    contestants = {
        "reference": ReferenceVQA.from_pretrained(directory, dtype=dtype).to(device).eval(),
        "ours": ours,
        "ours optimized": optimized,
    }
    if compile_model:
        contestants["ours compiled"] = torch.compile(optimized, mode="max-autotune")
    return contestants


def unmasked_inputs(
    batch: int, size: int, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    inputs = forward_inputs(batch, size, size, dtype)
    return {k: v.to(device) for k, v in inputs.items() if k not in ("attention_mask", "pixel_mask")}


def forward_rows(device: torch.device, quick: bool) -> list[list[str]]:
    size, batches = (64, (1, 2)) if quick else (384, BATCHES)
    rows = []
    for dtype in DTYPES:
        peak = gpu_peak(device, dtype)
        contestants = models(device, dtype, compile_model=not quick)
        for batch in batches:
            inputs = unmasked_inputs(batch, size, dtype, device)
            flops = count_flops(contestants["reference"], inputs)
            calls = {}
            for name, model in contestants.items():
                calls[name] = synchronized(device, lambda m=model, x=inputs: _forward(m, x))
            for call in calls.values():  # compile and autotune outside the timing
                call()
            timings = alternate(calls, 3 if quick else 20, warmup=2)
            ref = timings.median("reference")
            for name in contestants:
                t = timings.median(name)
                rows.append([
                    str(dtype).removeprefix("torch."), str(batch), name, f"{1e3 * t:.2f}", f"{batch / t:.0f}",
                    f"{ref / t:.2f}x", f"{100 * flops / t / peak:.0f}%",
                ])  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
    return rows


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


def train_rows(device: torch.device, quick: bool) -> list[list[str]]:
    from transformers import ViltForQuestionAnswering as ReferenceVQA

    from vilt import ViltForQuestionAnswering

    batch, size = (2, 64) if quick else (32, 384)
    inputs = unmasked_inputs(batch, size, torch.float32, device)
    labels = torch.zeros(batch, 3129, device=device)
    labels[:, 0] = 1.0
    steps = {}
    for name, cls in (("reference", ReferenceVQA), ("ours", ViltForQuestionAnswering)):
        model = cls.from_pretrained(model_dir()).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

        def step(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(**inputs, labels=labels).loss
            loss.backward()
            optimizer.step()

        steps[name] = synchronized(device, step)
    timings = alternate(steps, 3 if quick else 10, warmup=2)
    ref = timings.median("reference")
    return [
        [
            name,
            f"{1e3 * timings.median(name):.1f}",
            f"{batch / timings.median(name):.0f}",
            f"{ref / timings.median(name):.2f}x",
        ]
        for name in steps
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny workload, no compile (smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.time()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    forward = forward_rows(device, args.quick)
    train = train_rows(device, args.quick)
    print(f"\n## GPU: {name}, CUDA {torch.version.cuda}, torch {torch.__version__}\n")
    print(
        table(["dtype", "batch", "contestant", "median ms", "examples/s", "vs reference", "% peak"], forward)
    )
    print("\nFine-tuning step, bfloat16 autocast:\n")
    print(table(["contestant", "median ms", "examples/s", "vs reference"], train))
    print(f"\nTotal {time.time() - started:.0f} s.")


if __name__ == "__main__":
    main()
