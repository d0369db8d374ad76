"""Start-up time of the ``vilt`` command: ``vilt --help`` and ``vilt COMMAND --help`` for every command.

Issue 16's target: each under 1 s on a quiet machine, so no heavy library (torch, numpy, PIL...) may be
imported before a command's handler runs.

Each case runs ``python -m vilt.cli [COMMAND] --help`` in a fresh subprocess, ``--runs`` times, the
cases taking turns (so that a drift in the machine's load falls on all of them alike); the table gives
the median and the minimum wall time. Three floors put them in context: ``python -c pass`` (the
interpreter), ``import vilt`` and ``import torch`` (what a command that imported torch would pay).
One more run of each case under ``python -X importtime`` lists the heavy modules it imported, with
their cumulative import time and the vilt module that imported them: what makes a slow case slow.

The code measured is ``src/`` of this checkout (``--src`` picks another, ``--baseline`` adds a second
checkout's ``src/`` as a "before" column, timed in the same turns). The machine is shared, so the CPU
and the load average before and after the run are printed with the table. Run as
``python benchmarks/bench_cli.py``; the report is printed and written to ``benchmarks/results/cli.txt``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = Path(__file__).parent / "results" / "cli.txt"
TARGET_S = 1.0
# third-party packages a --help must not import (each costs from tens of ms to seconds)
HEAVY = (
    "torch", "numpy", "PIL", "tokenizers", "safetensors", "huggingface_hub", "httpx", "tqdm", "transformers",
    "fastapi", "uvicorn", "pydantic", "yaml", "matplotlib", "onnx", "onnxruntime", "openvino", "easy_vqa",
)  # fmt: skip


@dataclass
class Case:
    """One command line, timed in fresh processes."""

    label: str
    argv: list[str]  # after `python`
    times: dict[str, list[float]] = field(default_factory=dict)  # source label -> seconds per run


def cases(src: Path) -> list[Case]:
    """The floors, ``vilt --help`` and ``vilt COMMAND --help`` for every command of ``src``'s ``vilt.cli.COMMANDS``."""
    listing = "from vilt.cli import COMMANDS; print(*COMMANDS)"
    names = run_once(["-c", listing], src, stdout=True)[1].split()
    floors = [
        Case("python -c pass", ["-c", "pass"]),
        Case("python -c 'import vilt'", ["-c", "import vilt"]),
        Case("python -c 'import torch'", ["-c", "import torch"]),
    ]
    commands = [Case("vilt --help", ["-m", "vilt.cli", "--help"])]
    commands += [Case(f"vilt {name} --help", ["-m", "vilt.cli", name, "--help"]) for name in names]
    return floors + commands


def run_once(argv: list[str], src: Path, importtime: bool = False, stdout: bool = False) -> tuple[float, str]:
    """Wall time of one ``python ARGV`` with ``src`` first on the path, and its stderr (or its stdout)."""
    flags = ["-X", "importtime"] if importtime else []
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *flags, *argv],
        env=env,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"python {' '.join(argv)} exited with {result.returncode}: {result.stderr[-2000:]}"
        )
    return elapsed, result.stdout if stdout else result.stderr


def heavy_imports(importtime_log: str) -> list[str]:
    """``name ms (via vilt.x)`` for each heavy top-level module in a ``-X importtime`` log."""
    rows = []  # (cumulative us, depth, name), children before their parents as the log prints them
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit():
            rows.append((int(cumulative), len(name) - len(name.lstrip()), name.strip()))
    found = []
    for index, (cumulative, depth, name) in enumerate(rows):
        if name not in HEAVY:
            continue
        via = ""
        for _, parent_depth, parent in rows[index + 1 :]:  # the first shallower line is the importer
            if parent_depth < depth:
                depth = parent_depth
                if parent.startswith("vilt"):
                    via = f" via {parent}"
                    break
        found.append(f"{name} {cumulative / 1000:.0f} ms{via}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case (default 7)")
    parser.add_argument(
        "--src", type=Path, default=ROOT / "src", help="the src/ to measure (default: this one)"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout's src/, timed alongside as 'before'")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="where to write the report")
    args = parser.parse_args()
    sources = {"after" if args.baseline else "measured": args.src.resolve()}
    if args.baseline:
        sources = {"before": args.baseline.resolve(), **sources}

    info = machine_info()
    load_before = info.pop("load average (1, 5, 15 min)")
    all_cases = cases(args.src)
    for repetition in range(args.runs):
        for case in all_cases if repetition % 2 == 0 else reversed(all_cases):  # alternate the order too
            for label, src in sources.items():
                case.times.setdefault(label, []).append(run_once(case.argv, src)[0])
    imports = {
        case.label: heavy_imports(run_once(case.argv, args.src, importtime=True)[1]) for case in all_cases
    }
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    header = "".join(f"{label + ' median':>14}{'min':>7}" for label in sources)
    lines = [
        f"vilt start-up: `python -m vilt.cli ... --help` in a fresh process, {args.runs} runs per case taking turns; "
        "seconds of wall time",
        *(f"{key}: {value}" for key, value in info.items()),
        f"load average (1, 5, 15 min) before: {load_before}; after: {load_after}",
        *(f"{label}: {src}" for label, src in sources.items()),
        f"target (issue 16): `vilt --help` and every `vilt COMMAND --help` under {TARGET_S:g} s on a quiet machine",
        "",
        f"{'case':<30}{header}  {'< 1 s':>5}  heavy modules imported (cumulative import time, importer)",
    ]
    for case in all_cases:
        columns = "".join(
            f"{statistics.median(times):14.3f}{min(times):7.3f}" for times in case.times.values()
        )
        measured = statistics.median(case.times[list(sources)[-1]])
        verdict = "" if case.label.startswith("python") else ("yes" if measured < TARGET_S else "NO")
        lines.append(f"{case.label:<30}{columns}  {verdict:>5}  {', '.join(imports[case.label]) or '-'}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
