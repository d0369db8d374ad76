"""Benchmark 3: one fine-tuning step (forward + backward + AdamW), batch 16, bfloat16 autocast.

ViLT-B/32 VQA (3129 answers, random weights, float32 master weights), 40 tokens, 384x384 images,
soft VQA targets, ``torch.autocast("cpu", torch.bfloat16)`` around the forward and loss. Contestants,
alternating:

* ``reference``: transformers ``ViltForQuestionAnswering`` + ``torch.optim.AdamW`` (its default
  for-each implementation), what a transformers user writes;
* ``ours, same AdamW``: ``vilt.ViltForQuestionAnswering`` with the very same optimizer settings;
* ``ours, fused AdamW``: as ``vilt train`` steps it (``AdamW(fused=True)``).

With ``--only NAME --once`` one contestant runs a few steps and prints its peak resident memory.

Run: ``python benchmarks/bench_train.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from common import (
    Section,
    alternate,
    count_flops,
    forward_inputs,
    memory_bench_main,
    model_dir,
    peak_rss_mib,
    set_threads,
    table,
)

BATCH = 16
CONTESTANTS = ("reference", "ours, same AdamW", "ours, fused AdamW")


def training_inputs(num_labels: int) -> dict[str, torch.Tensor]:
    """A batch of 16 with soft VQA targets (three answers per question, scores 1.0 / 0.6 / 0.3)."""
    inputs = forward_inputs(BATCH, 384, 384, torch.float32)
    generator = torch.Generator().manual_seed(1)
    labels = torch.zeros(BATCH, num_labels)
    answers = torch.randint(0, num_labels, (BATCH, 3), generator=generator)
    labels.scatter_(1, answers, torch.tensor([1.0, 0.6, 0.3]).expand(BATCH, 3))
    return {**inputs, "labels": labels}


def make_step(name: str) -> Callable[[], float]:
    """A closure running one training step of contestant ``name``; returns the loss."""
    from transformers import ViltForQuestionAnswering as ReferenceVQA

    from vilt import ViltForQuestionAnswering

    directory = model_dir()
    model_class = ReferenceVQA if name == "reference" else ViltForQuestionAnswering
    model = model_class.from_pretrained(directory).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=name == "ours, fused AdamW")
    inputs = training_inputs(model.config.num_labels)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def run(repetitions: int = 3) -> Section:
    set_threads()
    steps = {name: make_step(name) for name in CONTESTANTS}
    timings = alternate(steps, repetitions, warmup=1)
    from vilt import ViltForQuestionAnswering

    forward_flops = count_flops(  # the plain layers: the flop counter does not see the fast path's kernels
        ViltForQuestionAnswering.from_pretrained(model_dir()).set_fast_path(False),
        forward_inputs(BATCH, 384, 384, torch.float32),
    )
    reference_s = timings.median("reference")
    rows = [
        [
            name,
            f"{1e3 * timings.median(name):.0f}",
            timings.spread(name),
            f"{BATCH / timings.median(name):.1f}",
            f"{3 * forward_flops / timings.median(name) / 1e12:.2f}",
            f"{reference_s / timings.median(name):.2f}x",
        ]
        for name in CONTESTANTS
    ]
    lines = [
        f"## 3. Fine-tuning step (forward + backward + AdamW), batch {BATCH}, 384x384, bfloat16 autocast",
        "",
        table(
            [
                "contestant",
                "median ms",
                "spread ms",
                "examples/s",
                "TFLOP/s (3x forward)",
                "speed vs reference",
            ],
            rows,
        ),
        "",
        f"Medians of {repetitions} alternating steps after one warm-up step. The forward is "
        f"{forward_flops / BATCH / 1e9:.1f} GFLOP per example; a step counts as three forwards.",
    ]
    figures = {name + " / reference": reference_s / timings.median(name) for name in CONTESTANTS[1:]}
    return Section("\n".join(lines) + "\n", figures)


def run_once(name: str, steps: int = 1) -> float:
    """A few training steps of one contestant in this process; peak resident memory in MiB."""
    set_threads()
    step = make_step(name)
    for _ in range(steps):
        step()
    return peak_rss_mib()


def main() -> None:
    memory_bench_main(__doc__, CONTESTANTS, run, run_once)


if __name__ == "__main__":
    main()
