"""Benchmark 8: speed under contention, the same comparisons with the cores busy with other work.

A server shares its cores with image decoding, other processes and noisy neighbours. This runs two cases
twice, first on the quiet machine and then while a background process multiplies float32 matrices on
every core (one thread per core, for as long as the loaded phase lasts, stopped after it):

* the bfloat16 batch-1 forward of ViLT-B/32 VQA (384x384, 40 tokens): the reference, vilt as loaded and
  OpenVINO (the same model exported, computing in bfloat16), alternating;
* end-to-end VQA on 64 photographs (bench_e2e.py): vilt's pipeline with its defaults against the
  reference processor + model.

Each contestant's ratio to the reference is reported quiet and loaded; "kept" is the loaded ratio over
the quiet one (1.00 = contention costs us as much as it costs the reference). Each contestant's own
slowdown (loaded time / quiet time) is reported too.

Run: ``python benchmarks/bench_contention.py [--repetitions N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from bench_e2e import ours_runner, questions_for, reference_runner
from bench_preprocess import make_paths
from common import (
    Section,
    Timings,
    alternate,
    forward_inputs,
    load_models,
    machine_info,
    model_dir,
    set_threads,
    table,
)

from vilt.export import OpenVinoModel, export_model

BACKGROUND_LIMIT_S = 900  # the background load stops by itself after this, whatever happens here


def _multiply_forever(stop: Any, threads: int, limit_s: float) -> None:
    """The background load: float32 matrix products on ``threads`` threads until ``stop`` is set."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline:
        torch.mm(a, b)


@contextmanager
def background_load(threads: int) -> Iterator[None]:
    """A process multiplying matrices on ``threads`` threads while the block runs (and never longer than
    BACKGROUND_LIMIT_S)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    process = context.Process(target=_multiply_forever, args=(stop, threads, BACKGROUND_LIMIT_S), daemon=True)
    process.start()
    time.sleep(2.0)  # let it start multiplying
    try:
        yield
    finally:
        stop.set()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()


def forward_contestants(directory: Path, scratch: Path, threads: int) -> dict[str, Callable[[], Any]]:
    ours, reference = load_models(directory, torch.bfloat16)
    exported = export_model(directory, scratch / "openvino", "openvino").path.parent
    openvino = OpenVinoModel.from_pretrained(exported, dtype=torch.bfloat16, threads=threads)
    inputs = forward_inputs(1, 384, 384, torch.bfloat16)

    def on(model: Any) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return model(**inputs).logits

        return call

    return {"reference": on(reference), "vilt (as loaded)": on(ours), "OpenVINO": on(openvino)}


def phases(calls: dict[str, Callable[[], Any]], repetitions: int, threads: int) -> dict[str, Timings]:
    """The contestants timed quiet, then with the background load."""
    for call in calls.values():
        call()  # warm-up: caches, probes and compilation happen before any phase
    quiet = alternate(calls, repetitions, warmup=0)
    with background_load(threads):
        loaded = alternate(calls, repetitions, warmup=1)
    return {"quiet": quiet, "loaded": loaded}


def rows_for(case: str, timed: dict[str, Timings], figures: dict[str, float]) -> list[list[str]]:
    rows = []
    names = [name for name in timed["quiet"].seconds if name != "reference"]
    for name in ["reference", *names]:
        quiet, loaded = timed["quiet"].median(name), timed["loaded"].median(name)
        quiet_ratio = timed["quiet"].median("reference") / quiet
        loaded_ratio = timed["loaded"].median("reference") / loaded
        rows.append(
            [case, name, f"{1e3 * quiet:.0f}", f"{1e3 * loaded:.0f}", f"{loaded / quiet:.2f}x",
             timed["loaded"].spread(name), f"{quiet_ratio:.2f}x", f"{loaded_ratio:.2f}x",
             f"{loaded_ratio / quiet_ratio:.2f}"]
        )  # fmt: skip
        if name != "reference":
            figures[f"{case}: {name} loaded / quiet ratio"] = loaded_ratio / quiet_ratio
    return rows


def run(repetitions: int = 5) -> Section:
    threads = set_threads()
    directory = model_dir()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        forward_repetitions = 3 * repetitions  # short calls whose loaded times spread widely: more of them
        forward = phases(forward_contestants(directory, Path(scratch), threads), forward_repetitions, threads)
        rows = rows_for("bf16 forward, batch 1", forward, figures)
        (Path(scratch) / "photos").mkdir()
        paths = make_paths(str(Path(scratch) / "photos"))
        questions = questions_for(paths)
        ours, reference = ours_runner(str(directory)), reference_runner(str(directory))
        e2e = phases(
            {
                "reference": lambda: reference(paths, questions),
                "vilt pipeline": lambda: ours(paths, questions),
            },
            max(2, repetitions // 2),
            threads,
        )
        rows += rows_for(f"end-to-end VQA, {len(paths)} photographs", e2e, figures)
    header = [
        "case", "contestant", "quiet ms", "loaded ms", "slowdown", "loaded spread ms", "vs reference, quiet",
        "vs reference, loaded", "kept (loaded / quiet ratio)",
    ]  # fmt: skip
    lines = [
        "## 8. Under contention: the cores shared with a background matrix product",
        "",
        table(header, rows),
        "",
        f"The background process multiplies 1024x1024 float32 matrices on {threads} threads (one per core) "
        f"during the loaded phase only. Medians of alternating repetitions per phase: {forward_repetitions} for "
        f"the forward, {max(2, repetitions // 2)} end to end. Loaded times spread widely (the operating "
        'system shares the cores between two sets of spinning OpenMP threads), so "kept" moves between runs; '
        "the spread column shows by how much.",
        "",
    ]
    return Section("\n".join(lines), figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    print(machine_info())
    print(run(args.repetitions).markdown)


if __name__ == "__main__":
    main()
