"""What a checkpoint's unused tensors cost a load: time and peak memory of ``from_pretrained``.

A small ViltModel is saved three ways: as it is; with one unused 2 GiB float32 tensor whose bytes are a
hole in a sparse file (it takes no disk); with 500,000 unused empty tensors (a 45 MB header). Each case
loads in a fresh process (``--runs`` times, the cases taking turns), which reports the seconds of the
``from_pretrained`` call and its peak RSS. Two floors put the figures in context: safetensors' own
reading of the 500,000-tensor header (``safe_open(...).keys()``), which any load must pay, and the
plain model's load. ``--baseline DIR`` adds a "before" column: the same cases with another checkout's
``src/`` (e.g. ``/work/main/src``), each limited to ``--limit`` seconds.

Run as ``python benchmarks/bench_weights.py [--baseline OTHER/src]``; the report is printed and written to
``benchmarks/results/weights.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = Path(__file__).parent / "results" / "weights.txt"
HUGE = 2**31  # bytes of the unused sparse tensor
EMPTY = 500_000  # unused empty tensors

# the process's peak RSS: VmHWM (ru_maxrss would include the parent's, which execve keeps)
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"
LOAD = f"""
import json, sys, time
from vilt.heads import MODEL_CLASSES
start = time.perf_counter()
MODEL_CLASSES["ViltModel"].from_pretrained(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({{"s": seconds, "rss": {PEAK}}}))
"""
HEADER = f"""
import json, sys, time
from safetensors import safe_open
start = time.perf_counter()
keys = safe_open(sys.argv[1] + "/model.safetensors", framework="pt").keys()
seconds = time.perf_counter() - start
print(json.dumps({{"s": seconds, "rss": {PEAK}}}))
"""


def add_unused(file: Path, tensors: dict[str, dict], hole: int) -> None:
    """Rewrite a safetensors file with more header entries, whose data (``hole`` bytes) is a hole at the end."""
    raw = file.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8 : 8 + size]), raw[8 + size :]
    for name, entry in tensors.items():
        start, end = entry["data_offsets"]
        header[name] = {**entry, "data_offsets": [start + len(data), end + len(data)]}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(file, "wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)) + encoded + data)
        fh.truncate(8 + len(encoded) + len(data) + hole)


def make_models(root: Path) -> dict[str, Path]:
    from vilt import ViltConfig
    from vilt.heads import MODEL_CLASSES

    config = ViltConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    model = MODEL_CLASSES["ViltModel"](config)
    paths = {name: root / name for name in ("plain", "sparse 2 GiB unused", f"{EMPTY:,} unused empty")}
    for path in paths.values():
        model.save_pretrained(path)
    add_unused(
        paths["sparse 2 GiB unused"] / "model.safetensors",
        {"unused.huge": {"dtype": "F32", "shape": [HUGE // 4], "data_offsets": [0, HUGE]}},
        HUGE,
    )
    empty = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    add_unused(
        paths[f"{EMPTY:,} unused empty"] / "model.safetensors",
        {f"unused.{i}": empty for i in range(EMPTY)},
        0,
    )
    return paths


def measure(code: str, path: Path, src: Path, limit: float) -> dict[str, float] | None:
    """One fresh process's figures, or None when it ran past ``limit`` seconds."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.splitlines()[-1])


def cpu_name() -> str:
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout's src/, measured as 'before'")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds a case may take (default 120)")
    args = parser.parse_args()
    sources = {"now": ROOT / "src", **({"before": args.baseline} if args.baseline else {})}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_models(Path(tmp))
        cases = [
            ("safetensors reads the header", HEADER, paths[f"{EMPTY:,} unused empty"], {"now": ROOT / "src"})
        ]
        cases += [(f"load: {name}", LOAD, path, sources) for name, path in paths.items()]
        figures: dict[tuple[str, str], list[dict[str, float] | None]] = {}
        for _ in range(args.runs):
            for label, code, path, srcs in cases:
                for column, src in srcs.items():
                    figures.setdefault((label, column), []).append(measure(code, path, src, args.limit))
    lines = [
        "from_pretrained with unused tensors: seconds of the call and peak RSS, each in a fresh process",
        f"cpu: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}",
        f"runs: {args.runs} per case (median); limit {args.limit:.0f} s per run",
        f"load average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"measured: {ROOT / 'src'}" + (f"; before: {args.baseline}" if args.baseline else ""),
        "",
        f"{'case':<44}" + "".join(f"{c + ' s':>12}{c + ' peak RSS':>18}" for c in sources),
    ]
    for label, _, _, _ in cases:
        row = f"{label:<44}"
        for column in sources:
            runs = figures.get((label, column))
            if runs is None:
                row += f"{'-':>12}{'-':>18}"
            elif any(r is None for r in runs):
                row += f"{'> ' + format(args.limit, '.0f'):>12}{'(stopped)':>18}"
            else:
                seconds = statistics.median(r["s"] for r in runs)  # type: ignore[index]
                rss = statistics.median(r["rss"] for r in runs) / 2**20  # type: ignore[index]
                row += f"{seconds:>12.2f}{rss:>14.0f} MiB"
        lines.append(row)

    def median(label: str, key: str) -> float:
        return statistics.median(r[key] for r in figures[(label, "now")])  # type: ignore[index]

    many, header = f"load: {EMPTY:,} unused empty", "safetensors reads the header"
    lines += [
        "",
        f"500,000 unused tensors: the load takes {median(many, 's') / median(header, 's'):.2f}x the time safetensors "
        f"takes to read their header, {median(many, 's') - median('load: plain', 's'):.2f} s more than the plain load",
        f"2 GiB unused tensor: peak RSS {(median('load: sparse 2 GiB unused', 'rss') - median('load: plain', 'rss')) / 2**20:+.0f} MiB "
        "against the plain load",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(report)


if __name__ == "__main__":
    main()
