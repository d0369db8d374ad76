"""The model forward of this source tree against another vilt source tree, side by side in one process.

For checking a change for speed: e.g. ``git archive main src | tar -x -C /tmp/main`` then
``python benchmarks/bench_revisions.py --other /tmp/main``. The other tree's package is copied to a
temporary directory as ``vilt_other`` (vilt imports its own modules relatively) and imported beside
this tree's ``vilt``, so both run in the same process, on the same random-weight ViLT-B/32 VQA model
(``common.model_dir``) and the same inputs (384x384, 40 tokens): two processes of identical code can
differ by several percent in speed, one process cannot. Contestants per tree: ``as loaded``
(``from_pretrained(...).eval()``) and ``optimized`` (after ``optimize_for_inference()``), in bfloat16 at
batch 8 and 1 and float32 at batch 8, under ``torch.inference_mode()``, alternating within every round
(the order rotates). Reported: median ms per example, the spread (min-max), and each median against
the other tree's optimized path.

Run: ``python benchmarks/bench_revisions.py --other DIR [--rounds N] [--threads N] [--config bfloat16:1 ...]``.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import alternate, forward_inputs, machine_info, model_dir, set_threads, table

HERE = Path(__file__).resolve().parent
CONFIGS = (("bfloat16", 8), ("bfloat16", 1), ("float32", 8))


def parse_config(text: str) -> tuple[str, int]:
    """``"bfloat16:1"`` -> ("bfloat16", 1)."""
    dtype, _, batch = text.partition(":")
    if dtype not in ("float32", "bfloat16") or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"expected float32:BATCH or bfloat16:BATCH, got {text!r}")
    return dtype, int(batch)


def import_other(tree: Path, into: Path) -> type[torch.nn.Module]:
    """The other tree's ``ViltForQuestionAnswering``, its package copied into ``into`` as ``vilt_other``."""
    shutil.copytree(tree / "src" / "vilt", into / "vilt_other")
    sys.path.insert(0, str(into))
    return importlib.import_module("vilt_other.heads").ViltForQuestionAnswering


def forward_call(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode():
            model(**inputs)

    return call


def compare(other: type[torch.nn.Module], rounds: int, configs: list[tuple[str, int]]) -> list[list[str]]:
    """One table row per contestant and configuration."""
    from vilt import ViltForQuestionAnswering

    classes = {"this tree": ViltForQuestionAnswering, "other tree": other}
    rows = []
    for dtype_name, batch in configs:
        dtype = getattr(torch, dtype_name)
        inputs = forward_inputs(batch, 384, 384, dtype)
        models = {}
        for tree, cls in classes.items():
            for variant in ("as loaded", "optimized"):
                model = cls.from_pretrained(model_dir(), torch_dtype=dtype).eval()
                models[(tree, variant)] = model.optimize_for_inference() if variant == "optimized" else model

        timings = alternate({key: forward_call(model, inputs) for key, model in models.items()}, rounds)
        baseline = timings.median(("other tree", "optimized"))
        for key in models:
            per_example = [1e3 * s / batch for s in timings.seconds[key]]
            median = 1e3 * timings.median(key) / batch
            rows.append(
                [dtype_name, str(batch), *key, f"{median:.1f}", f"{min(per_example):.1f}-{max(per_example):.1f}",
                 f"{timings.median(key) / baseline:.3f}"]
            )  # fmt: skip
        del models
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="another source tree (holding src/vilt)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: one per core)")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--config",
        type=parse_config,
        action="append",
        help="DTYPE:BATCH to run (repeatable; default: all three)",
    )
    args = parser.parse_args()
    if not (args.other / "src" / "vilt").is_dir():
        parser.error("--other must name a directory holding src/vilt")
    if args.threads is None:
        set_threads()
    else:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(info)
    with tempfile.TemporaryDirectory() as scratch:
        other = import_other(args.other.resolve(), Path(scratch))
        rows = compare(other, args.rounds, args.config or list(CONFIGS))
    header = ["dtype", "batch", "tree", "variant", "ms per example", "spread", "/ other tree optimized"]
    report = "\n".join(
        [
            f"{key}: {value}"
            for key, value in {
                **info,
                "load average after": machine_info()["load average (1, 5, 15 min)"],
            }.items()
        ]
        + [
            "",
            f"Medians of {args.rounds} alternating rounds after one warm-up; other tree: {args.other}. Ratios are "
            "against the other tree's optimized path.",
            "",
            table(header, rows),
        ]
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
