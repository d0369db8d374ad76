"""Shared pieces of the benchmarks: the model directory, inputs, alternating timing, FLOPs and peaks.

Every benchmark compares ours and ``transformers`` (the reference) in one process, on the same weights
and inputs: a random-weight ViLT-B/32 VQA model (3129 answers) saved once by ``transformers`` and loaded
by both. Timings alternate between the contestants inside each repetition (the order rotates), so a
shared machine's load falls on both alike; we report medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vilt.devices import cpu_features

NUM_LABELS = 3129
TEXT_LENGTH = 40
BENCH_DIR = Path(os.environ.get("VILT_BENCH_DIR", "/tmp/vilt-bench"))
BUNDLED_VOCAB = Path(__file__).resolve().parent.parent / "src" / "vilt" / "data" / "vocab.txt"


def set_threads() -> int:
    """Use one intra-op thread per core (the default on Linux too; made explicit for the record)."""
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def model_dir(architecture: str = "ViltForQuestionAnswering") -> Path:
    """A random-weight model of ``architecture`` (default config; 3129 labels for VQA) saved by
    transformers under BENCH_DIR, with a reference processor (``ViltImageProcessorPil`` and a BERT
    tokenizer on the bundled vocabulary). Made once, then reused."""
    path = BENCH_DIR / f"{architecture}-random"
    if (path / "model.safetensors").exists() and (path / "tokenizer.json").exists():
        return path
    import transformers
    from transformers import BertTokenizerFast, ViltConfig, ViltImageProcessorPil, ViltProcessor

    torch.manual_seed(0)
    config = ViltConfig()
    if architecture == "ViltForQuestionAnswering":
        labels = {i: f"answer {i}" for i in range(NUM_LABELS)}
        config = ViltConfig(
            num_labels=NUM_LABELS, id2label=labels, label2id={v: k for k, v in labels.items()}
        )
    getattr(transformers, architecture)(config).save_pretrained(path)
    tokenizer = BertTokenizerFast(
        vocab_file=str(BUNDLED_VOCAB), do_lower_case=True, model_max_length=TEXT_LENGTH
    )
    ViltProcessor(image_processor=ViltImageProcessorPil(), tokenizer=tokenizer).save_pretrained(path)
    return path


def load_models(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, reference) ViltForQuestionAnswering from the same directory, in ``dtype``, eval mode."""
    from transformers import ViltForQuestionAnswering as ReferenceVQA

    from vilt import ViltForQuestionAnswering

    ours = ViltForQuestionAnswering.from_pretrained(path, torch_dtype=dtype).eval()
    reference = ReferenceVQA.from_pretrained(path, dtype=dtype).eval()
    return ours, reference


def forward_inputs(
    batch: int, height: int, width: int, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """What the processor hands the model: 40 token ids, pixel values and all-ones masks."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, 30000, (batch, TEXT_LENGTH), generator=generator),
        "attention_mask": torch.ones(batch, TEXT_LENGTH, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, TEXT_LENGTH, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, height, width, generator=generator).to(dtype),
        "pixel_mask": torch.ones(batch, height, width, dtype=torch.long),
    }


@dataclass
class Timings:
    """Seconds per call of each contestant, one entry per repetition."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def spread(self, name: str) -> str:
        values = self.seconds[name]
        return f"min {1e3 * min(values):.1f} max {1e3 * max(values):.1f}"


def alternate(contestants: dict[str, Callable[[], Any]], repetitions: int, warmup: int = 1) -> Timings:
    """Time each callable ``repetitions`` times, interleaved; the order rotates every repetition.

    Args:
        contestants: name -> zero-argument callable running one measured unit of work.
        repetitions: timed rounds (after ``warmup`` untimed rounds).
    """
    names = list(contestants)
    timings = Timings({name: [] for name in names})
    for round_index in range(warmup + repetitions):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contestants[name]()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                timings.seconds[name].append(elapsed)
    return timings


def count_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Floating-point operations of one forward (matrix products, convolution, attention), counted by
    ``torch.utils.flop_counter`` (a multiply-add is 2)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**inputs)
    return counter.get_total_flops()


# (M, K, N): two large squares and the model's own widest products (B=8 x 185 tokens)
PEAK_SHAPES = ((2048, 2048, 2048), (4096, 4096, 4096), (1480, 768, 3072), (1480, 3072, 768))


class PeakProbe:
    """The fastest matrix product for a dtype, as a callable to time beside a workload: each shape of
    PEAK_SHAPES as ``torch.mm`` and as oneDNN's product on a prepacked weight (the kernel the optimized
    model runs), the fastest in isolation kept.

    Timing it in the same alternation as the workload gives the machine's matmul peak under the same
    load, so "% of peak" stays meaningful on a shared machine.
    """

    def __init__(self, dtype: torch.dtype, repetitions: int = 5) -> None:
        best = 0.0
        for m, k, n in PEAK_SHAPES:
            for kernel, call in self._candidates(m, k, n, dtype):
                rate = 2 * m * k * n / alternate({"mm": call}, repetitions, 2).median("mm")
                if rate > best:
                    best, self.call = rate, call
                    self.flops, self.shape = 2 * m * k * n, f"{kernel} {m}x{k}x{n}"

    @staticmethod
    def _candidates(m: int, k: int, n: int, dtype: torch.dtype) -> list[tuple[str, Callable[[], Any]]]:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        candidates: list[tuple[str, Callable[[], Any]]] = [("`torch.mm`", lambda: torch.mm(a, b))]
        if cpu_features().supports(dtype):  # oneDNN runs this dtype here
            packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous())  # (N, K) prepacked
            linear = torch.ops.mkldnn._linear_pointwise
            candidates.append(("oneDNN prepacked", lambda: linear(a, packed, None, "none", [], "")))
        return candidates

    def __call__(self) -> torch.Tensor:
        return self.call()


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at ``exec`` (``ru_maxrss`` would keep the
    peak of the process that forked us). Elsewhere: ``getrusage`` (kilobytes on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict[str, str]:
    """The facts a reader needs to reproduce a number."""
    import transformers

    import vilt

    features = cpu_features()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "cpu": f"{features.name}, {os.cpu_count()} cores ({features.describe().removeprefix(features.name + ' (')}",
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vilt": vilt.__version__,
        "load average (1, 5, 15 min)": load,
    }


@dataclass
class Section:
    """One benchmark's part of RESULTS.md, and its headline figures (name -> value) for the summary."""

    markdown: str
    figures: dict[str, float] = field(default_factory=dict)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def memory_bench_main(
    doc: str, contestants: Sequence[str], run: Callable[[int], Section], run_once: Callable[[str], float]
) -> None:
    """The command line of a benchmark that bench_memory.py also runs one contestant at a time.

    ``--repetitions N`` runs the side-by-side comparison; ``--only NAME --once`` runs contestant NAME once
    in this process and prints its peak resident memory as ``peak_rss_mib=...``.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--only", choices=list(contestants), help="with --once: run this contestant only")
    parser.add_argument("--once", action="store_true", help="run --only once and print peak RSS (MiB)")
    args = parser.parse_args()
    if args.once:
        if args.only is None:
            parser.error("--once needs --only NAME")
        print(f"peak_rss_mib={run_once(args.only):.0f}")
        return
    print(machine_info())
    print(run(args.repetitions).markdown)
