"""The model forward of this source tree against another vilt source tree, side by side.

For checking a change for speed: e.g. ``git archive main src | tar -x -C /tmp/main`` then
``python benchmarks/bench_revisions.py --other /tmp/main``. Each tree runs in its own worker process
(``PYTHONPATH=<tree>/src``), on the same random-weight ViLT-B/32 VQA model (``common.model_dir``) and the
same inputs (384x384, 40 tokens). Contestants per tree: ``as loaded`` (``from_pretrained(...).eval()``)
and ``optimized`` (after ``optimize_for_inference()``), in bfloat16 at batch 8 and 1 and float32 at
batch 8, all under ``torch.inference_mode()``. The parent sends one forward to each contestant in turn,
the order rotating every round, so a shared machine's load falls on all alike; each worker reports the
forward's wall time and its process CPU time. Reported: median ms per example of each, the spread
(min-max), and each median against the other tree's optimized path. On a machine that other work
keeps busy, ``--threads 1`` makes the CPU time a steady measure of the work each path does (one thread
neither waits for nor spins on another that was descheduled).

Run: ``python benchmarks/bench_revisions.py --other DIR [--rounds N] [--threads N] [--config bfloat16:1 ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = (("bfloat16", 8), ("bfloat16", 1), ("float32", 8))
VARIANTS = ("as loaded", "optimized")


def parse_config(text: str) -> tuple[str, int]:
    """``"bfloat16:1"`` -> ("bfloat16", 1)."""
    dtype, batch = text.split(":")
    if dtype not in ("float32", "bfloat16"):
        raise argparse.ArgumentTypeError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    return dtype, int(batch)


def worker(threads: int | None, configs: list[tuple[str, int]]) -> None:
    """Load the models, then answer one line per request: ``{"dtype", "batch", "variant"}`` -> the
    forward's wall and CPU seconds."""
    from common import forward_inputs, model_dir, set_threads

    import vilt

    if threads is None:
        set_threads()
    else:
        torch.set_num_threads(threads)
    models = {}
    for dtype_name in dict.fromkeys(dtype for dtype, _ in configs):
        dtype = getattr(torch, dtype_name)
        for variant in VARIANTS:
            model = vilt.ViltForQuestionAnswering.from_pretrained(model_dir(), torch_dtype=dtype).eval()
            models[(dtype_name, variant)] = (
                model.optimize_for_inference() if variant == "optimized" else model
            )
    inputs = {
        (dtype, batch): forward_inputs(batch, 384, 384, getattr(torch, dtype)) for dtype, batch in configs
    }
    print(json.dumps({"ready": vilt.__file__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        model = models[(request["dtype"], request["variant"])]
        batch = inputs[(request["dtype"], request["batch"])]
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            model(**batch)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


class Worker:
    """A worker process running the vilt of one source tree."""

    def __init__(self, tree: Path, threads: int | None, configs: list[tuple[str, int]]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(HERE)])}
        command = [sys.executable, __file__, "--worker", *(f"--config={d}:{b}" for d, b in configs)]
        command += [] if threads is None else ["--threads", str(threads)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.source = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker exited with code {self.process.wait()}")
        return json.loads(line)

    def time(self, dtype: str, batch: int, variant: str) -> tuple[float, float]:
        """(wall, CPU) seconds of one forward."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"dtype": dtype, "batch": batch, "variant": variant}) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        return answer["wall"], answer["cpu"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def compare(other: Path, rounds: int, threads: int | None, configs: list[tuple[str, int]]) -> str:
    """Alternate every contestant ``rounds`` times (after one warm-up round); a Markdown table."""
    trees = (("this tree", HERE.parent), ("other tree", other))
    workers = {tree: Worker(path, threads, configs) for tree, path in trees}
    try:
        contestants = [(tree, variant) for tree in workers for variant in VARIANTS]
        rows = []
        for dtype, batch in configs:
            wall: dict[tuple[str, str], list[float]] = {c: [] for c in contestants}
            cpu: dict[tuple[str, str], list[float]] = {c: [] for c in contestants}
            for round_index in range(rounds + 1):
                shift = round_index % len(contestants)
                for tree, variant in contestants[shift:] + contestants[:shift]:
                    wall_s, cpu_s = workers[tree].time(dtype, batch, variant)
                    if round_index:
                        wall[(tree, variant)].append(1e3 * wall_s / batch)
                        cpu[(tree, variant)].append(1e3 * cpu_s / batch)
            baseline = {
                name: statistics.median(t[("other tree", "optimized")])
                for name, t in (("wall", wall), ("cpu", cpu))
            }
            for tree, variant in contestants:
                cells = []
                for name, times in (("wall", wall), ("cpu", cpu)):
                    values = times[(tree, variant)]
                    median = statistics.median(values)
                    cells += [
                        f"{median:.1f}",
                        f"{min(values):.1f}-{max(values):.1f}",
                        f"{median / baseline[name]:.3f}",
                    ]
                rows.append("| " + " | ".join([dtype, str(batch), tree, variant, *cells]) + " |")
        sources = "; ".join(f"{tree}: `{w.source}`" for tree, w in workers.items())
    finally:
        for w in workers.values():
            w.close()
    header = [
        f"Medians of {rounds} alternating rounds after one warm-up, {threads or 'all'} thread(s) per worker "
        f"({sources}). ms per example; each ratio is against the other tree's optimized path.",
        "",
        "| dtype | batch | tree | variant | wall ms | wall spread | wall ratio | CPU ms | CPU spread | CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", type=Path, help="another source tree (a directory holding src/vilt)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, help="intra-op threads per worker (default: one per core)")
    parser.add_argument(
        "--config",
        type=parse_config,
        action="append",
        help="DTYPE:BATCH to run (repeatable; default: all three)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.threads, args.config or list(CONFIGS))
        return
    if args.other is None or not (args.other / "src" / "vilt").is_dir():
        parser.error("--other must name a directory holding src/vilt")
    from common import machine_info

    print(machine_info())
    print(compare(args.other.resolve(), args.rounds, args.threads, args.config or list(CONFIGS)))


if __name__ == "__main__":
    main()
