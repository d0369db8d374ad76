"""Benchmark 5: peak memory of the end-to-end VQA run (2) and of the fine-tuning step (3).

Each contestant runs alone in a fresh Python process (``bench_e2e.py --only NAME --once`` answers the
64 photographs once; ``bench_train.py --only NAME --once`` takes one training step, optimizer state included) and reports its
peak resident set size (``common.peak_rss_mib``: VmHWM), which counts what PyTorch allocates
(``tracemalloc`` would not). Everything is included: interpreter, imports, model and activations.

Run: ``python benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import Section, machine_info, table

HERE = Path(__file__).resolve().parent
CASES = (
    ("2. end-to-end VQA, 64 photographs", "bench_e2e.py", ("ours", "reference processor + model")),
    ("3. fine-tuning step, batch 16", "bench_train.py", ("ours, fused AdamW", "reference")),
)


def child_peak_rss_mib(script: str, contestant: str) -> float:
    """Run one contestant in a fresh process and return its peak RSS in MiB."""
    done = subprocess.run(
        [sys.executable, str(HERE / script), "--only", contestant, "--once"],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("peak_rss_mib="))
    return float(line.split("=", 1)[1])


def run() -> Section:
    rows, figures = [], {}
    for case, script, (ours, reference) in CASES:
        ours_mib, reference_mib = child_peak_rss_mib(script, ours), child_peak_rss_mib(script, reference)
        figures[f"{case}: ours / reference"] = ours_mib / reference_mib
        rows.append(
            [
                case,
                ours,
                f"{ours_mib:.0f}",
                reference,
                f"{reference_mib:.0f}",
                f"{ours_mib / reference_mib:.2f}",
            ]
        )
    lines = [
        "## 5. Peak memory (resident set size, fresh process each)",
        "",
        table(["case", "ours", "ours MiB", "reference", "reference MiB", "ours / reference"], rows),
    ]
    return Section("\n".join(lines) + "\n", figures)


if __name__ == "__main__":
    print(machine_info())
    print(run().markdown)
