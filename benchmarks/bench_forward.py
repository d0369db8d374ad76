"""Benchmark 1: the VQA model forward, ours against transformers, side by side.

ViLT-B/32 (default config, random weights, 3129 answers), 40 text tokens, batch 1, 8 and 32, images
384x384 and 384x576, float32 and bfloat16 (the reference's best: its weights cast to bfloat16).
Contestants, alternating within every repetition:

* ``reference``: ``transformers.ViltForQuestionAnswering``;
* ``ours``: ``vilt.ViltForQuestionAnswering`` as loaded (eval), which takes the fast path by default;
* ``ours optimized``: the same after ``model.optimize_for_inference()`` (the explicit form: its caches
  are built before the first call);
* ``ours plain``: the same with ``set_fast_path(False)``, the plain layers (the fast path keeps a piece
  only where its probe finds the layer faster than this).

All run under ``torch.inference_mode()``. FLOPs per example are counted on the reference forward;
"% of peak" divides the achieved FLOP/s by the measured ``torch.mm`` peak for the dtype, timed as one
more contestant in the same alternation (``common.PeakProbe``), so under the same load. The
configurations of issue 7's targets then run again in independent alternations spread over minutes
(``headline_runs``); the summary of RESULTS.md takes their median run.

Run: ``python benchmarks/bench_forward.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    PEAK_SHAPES,
    PeakProbe,
    Section,
    alternate,
    count_flops,
    forward_inputs,
    load_models,
    machine_info,
    model_dir,
    set_threads,
    table,
)

BATCHES = (1, 8, 32)
# The configurations (dtype, batch; 384x384) of issue 7's targets. A shared machine's load drifts over
# minutes, so their ratio is measured again in HEADLINE_RUNS independent alternations, interleaved over
# a few minutes, and the summary reports the median run.
HEADLINES = ((torch.bfloat16, 8), (torch.bfloat16, 1), (torch.float32, 8))
HEADLINE_RUNS = 5
IMAGE_SIZES = ((384, 384), (384, 576))
DTYPES = (torch.float32, torch.bfloat16)


def repetitions_for(batch: int, quick: bool) -> int:
    """Fewer repetitions for the long calls: about the same wall time per configuration."""
    return ({1: 5, 8: 3, 32: 1} if quick else {1: 15, 8: 9, 32: 3})[batch]


def forward_call(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return model(**inputs).logits

    return call


def headline_runs(directory: Path, runs: int, quick: bool) -> tuple[list[str], dict[str, float]]:
    """Optimized / reference of each HEADLINES configuration in ``runs`` independent alternations."""
    models = {}
    for dtype in dict.fromkeys(dtype for dtype, _ in HEADLINES):
        optimized, reference = load_models(directory, dtype)
        models[dtype] = (optimized.optimize_for_inference(), reference)
    ratios: dict[tuple[torch.dtype, int], list[float]] = {config: [] for config in HEADLINES}
    for _ in range(runs):
        for dtype, batch in HEADLINES:
            optimized, reference = models[dtype]
            inputs = forward_inputs(batch, 384, 384, dtype)
            calls = {
                "reference": forward_call(reference, inputs),
                "optimized": forward_call(optimized, inputs),
            }
            timings = alternate(calls, repetitions_for(batch, quick))
            ratios[(dtype, batch)].append(timings.median("reference") / timings.median("optimized"))
    rows, figures = [], {}
    for (dtype, batch), values in ratios.items():
        name = str(dtype).removeprefix("torch.")
        median = statistics.median(values)
        figures[f"{name} batch {batch} 384x384: optimized / reference, median run"] = median
        rows.append(
            [name, str(batch), " ".join(f"{v:.2f}x" for v in values), f"{median:.2f}x",
             f"{min(values):.2f}x", f"{max(values):.2f}x"]
        )  # fmt: skip
    lines = [
        "",
        f"### The targets' configurations again: {runs} independent runs (384x384, ours optimized)",
        "",
        "Each run is its own alternation (one warm-up, then the repetitions above); the runs of the three "
        "configurations interleave, so they spread over minutes of the machine's changing load.",
        "",
        table(["dtype", "batch", "optimized / reference, run by run", "median", "min", "max"], rows),
    ]
    return lines, figures


def run(quick: bool = False) -> Section:
    """Run every configuration; the rows are also printed as they come."""
    set_threads()
    directory = model_dir()
    probes = {dtype: PeakProbe(dtype) for dtype in DTYPES}
    lines = ["## 1. Model forward (VQA head, ViLT-B/32, 40 tokens)", ""]
    for dtype, probe in probes.items():
        lines.append(
            f"- matmul peak probe, {dtype}: {probe.shape}, the fastest of {len(PEAK_SHAPES)} shapes as "
            "`torch.mm` or oneDNN's product on a prepacked weight"
        )
    lines.append("")
    header = [
        "dtype", "batch", "image", "GFLOP/example", "reference ms", "ours ms", "ours optimized ms", "ours plain ms",
        "ours / ref", "optimized / ref", "ours / plain", "optimized TFLOP/s", "peak TFLOP/s", "% of peak",
        "max abs logit diff vs ref",
    ]  # fmt: skip
    rows, figures = [], {}
    for dtype in DTYPES:
        ours, reference = load_models(directory, dtype)
        optimized, _ = load_models(directory, dtype)
        optimized.optimize_for_inference()
        plain = load_models(directory, dtype)[0].set_fast_path(False)
        for height, width in IMAGE_SIZES:
            flops = count_flops(reference, forward_inputs(1, height, width, dtype))
            for batch in BATCHES:
                inputs = forward_inputs(batch, height, width, dtype)
                calls = {
                    "reference": forward_call(reference, inputs),
                    "ours": forward_call(ours, inputs),
                    "ours optimized": forward_call(optimized, inputs),
                    "ours plain": forward_call(plain, inputs),
                    "matmul peak": probes[dtype],
                }
                expected = calls["reference"]().float()
                diff = max(
                    (calls[name]().float() - expected).abs().max().item()
                    for name in ("ours", "ours optimized", "ours plain")
                )
                timings = alternate(calls, repetitions_for(batch, quick), warmup=0)  # warmed up above
                ref_s, ours_s, opt_s, plain_s = (
                    timings.median(n) for n in ("reference", "ours", "ours optimized", "ours plain")
                )
                achieved = flops * batch / opt_s
                peak = probes[dtype].flops / min(timings.seconds["matmul peak"])  # a peak: its best round
                row = [
                    str(dtype).removeprefix("torch."), str(batch), f"{height}x{width}", f"{flops / 1e9:.1f}",
                    f"{1e3 * ref_s:.1f}", f"{1e3 * ours_s:.1f}", f"{1e3 * opt_s:.1f}", f"{1e3 * plain_s:.1f}",
                    f"{ref_s / ours_s:.2f}x", f"{ref_s / opt_s:.2f}x", f"{plain_s / ours_s:.2f}x",
                    f"{achieved / 1e12:.2f}", f"{peak / 1e12:.2f}",
                    f"{100 * achieved / peak:.0f}%", f"{diff:.1e}",
                ]  # fmt: skip
                print(" | ".join(row), flush=True)
                rows.append(row)
                key = f"{row[0]} batch {batch} {height}x{width}"
                figures[f"{key}: ours / reference"] = ref_s / ours_s
                figures[f"{key}: optimized / reference"] = ref_s / opt_s
                figures[f"{key}: optimized % of peak"] = 100 * achieved / peak
                figures[f"{key}: as loaded / optimized"] = opt_s / ours_s
                figures[f"{key}: as loaded / plain"] = plain_s / ours_s
        del ours, reference, optimized, plain
    lines.append(table(header, rows))
    lines += [
        "",
        "Medians over alternating repetitions (batch 1, 8, 32: "
        + ", ".join(str(repetitions_for(b, quick)) for b in BATCHES)
        + "; the accuracy check before them is the warm-up).",
        "The logit difference is the largest of ours (as loaded, optimized, plain) against the reference, same dtype. "
        "The peak is the matmul probe's fastest round in the same alternation as the models (same load).",
    ]
    headline_lines, headline_figures = headline_runs(directory, 2 if quick else HEADLINE_RUNS, quick)
    lines += headline_lines
    figures.update(headline_figures)
    return Section("\n".join(lines) + "\n", figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="half the repetitions")
    args = parser.parse_args()
    print(machine_info())
    print(run(args.quick).markdown)


if __name__ == "__main__":
    main()
