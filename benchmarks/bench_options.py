"""Optional speed features, measured against what the pipeline runs by default (kept only if faster).

The forward of ViLT-B/32 VQA, batch 8, 384x384, 40 tokens, on the CPU, alternating:

* ``optimized bf16``: ``optimize_for_inference()`` in bfloat16, what ``vilt.pipeline`` runs;
* ``torch.compile bf16``: the plain model in bfloat16 through ``torch.compile`` with Inductor's
  ``freezing`` (weights prepacked for oneDNN, pointwise operations fused); compile time reported;
* ``int8 dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every Linear (int8 weights,
  activations quantized per call), float32 elsewhere.

Accuracy: the largest logit difference of each against the float32 reference model (transformers).

Run: ``python benchmarks/bench_options.py``.
"""

from __future__ import annotations

import copy
import time

import torch
from common import (
    Section,
    alternate,
    forward_inputs,
    load_models,
    machine_info,
    model_dir,
    set_threads,
    table,
)

BATCH, SIZE = 8, 384


def run(repetitions: int = 5) -> Section:
    set_threads()
    directory = model_dir()
    plain32, reference32 = load_models(directory, torch.float32)
    optimized, _ = load_models(directory, torch.bfloat16)
    optimized.optimize_for_inference()
    quantized = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(plain32), {torch.nn.Linear}, dtype=torch.qint8
    )
    plain16, _ = load_models(directory, torch.bfloat16)

    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled = torch.compile(plain16)
    inputs32 = forward_inputs(BATCH, SIZE, SIZE, torch.float32)
    inputs16 = forward_inputs(BATCH, SIZE, SIZE, torch.bfloat16)
    contestants = {
        "optimized bf16": (optimized, inputs16),
        "torch.compile bf16": (compiled, inputs16),
        "int8 dynamic": (quantized, inputs32),
    }

    def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return model(**inputs).logits.float()

    expected = forward(reference32, inputs32)
    started = time.perf_counter()
    diffs = {name: (forward(m, x) - expected).abs().max().item() for name, (m, x) in contestants.items()}
    compile_s = time.perf_counter() - started  # dominated by the compilation
    timings = alternate({n: lambda m=m, x=x: forward(m, x) for n, (m, x) in contestants.items()}, repetitions)
    base = timings.median("optimized bf16")
    rows = [
        [
            name,
            f"{1e3 * timings.median(name):.0f}",
            f"{base / timings.median(name):.2f}x",
            f"{diffs[name]:.3f}",
        ]
        for name in contestants
    ]
    lines = [
        f"## 6. Optional speed features (forward, batch {BATCH}, {SIZE}x{SIZE})",
        "",
        table(
            ["variant", "median ms", "speed vs optimized bf16", "max abs logit diff vs reference float32"],
            rows,
        ),
        "",
        f"Medians of {repetitions} alternating repetitions after one warm-up; the first calls, including "
        f"compilation, took {compile_s:.0f} s. A variant is worth keeping only if it beats optimized bf16.",
    ]
    return Section("\n".join(lines) + "\n", {name: base / timings.median(name) for name in contestants})


if __name__ == "__main__":
    print(machine_info())
    print(run().markdown)
