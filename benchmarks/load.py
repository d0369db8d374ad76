"""Load test of ``vilt serve`` on loopback: dynamic batching against one request per forward pass.

Three servers run in the same run, each a ``vilt serve`` subprocess on a free 127.0.0.1 port with the
same model:

1. ``batched``: ``--max-batch-size 32 --max-wait-ms 5`` (the defaults);
2. ``batch size 1``: ``--max-batch-size 1``, everything else equal;
3. ``overload``: batched, but a queue of only 8 and 4x the concurrency, so that some requests are
   refused on purpose with 503 + Retry-After (the client then waits as told); every other request
   must still succeed.

The first two take turns (an eighth of the requests each, eight times) so that both see the same
machine load; the third runs after them.

Each phase sends ``--requests`` POST /v1/vqa requests (multipart, easy-VQA test images and their
questions, cycled) from ``--concurrency`` concurrent clients (aiohttp, asyncio) after a warm-up, and
reports throughput, p50/p99 latency, the errors by status, and the mean batch size the server saw
(from its /metrics). The client shares the machine's CPUs with the server, in every phase alike.

Run as ``python benchmarks/load.py`` (the bundled easy-VQA model) or with ``--model DIR``; the report
is printed and written to ``benchmarks/results/load.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from common import machine_info
from easy_vqa import get_test_image_paths, get_test_questions

import vilt
from vilt.hub import BUNDLED_MODEL_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_process import serving  # noqa: E402  (tests/serve_process.py runs `vilt serve` in a subprocess)

RESULTS_FILE = Path(__file__).parent / "results" / "load.txt"
WARMUP_REQUESTS = 64
REQUEST_TIMEOUT_S = 60.0
OVERLOAD_QUEUE = 8
ROUNDS = 8  # the batched and batch-size-1 servers take turns, an eighth of the requests each time
SERVER_THREADS = 1  # one core for inference, the other for the client (on the 2-CPU machine this ran on)


@dataclass
class Phase:
    """One server configuration and what its clients measured."""

    name: str
    server_args: list[str]
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    mean_batch: float = 0.0
    round_throughputs: list[float] = field(default_factory=list)  # answered per second, per round

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def add(self, seconds: float, latencies_ms: list[float], statuses: Counter[int]) -> None:
        """Count one block of requests (one round)."""
        self.round_throughputs.append(statuses[200] / seconds)
        self.seconds += seconds
        self.latencies_ms += latencies_ms
        self.statuses += statuses

    def row(self) -> str:
        p50, p99 = percentile(self.latencies_ms, 50), percentile(self.latencies_ms, 99)
        errors = ", ".join(
            f"{status}: {count}" for status, count in sorted(self.statuses.items()) if status != 200
        )
        return (
            f"{self.name:<14} {self.concurrency:>5} {sum(self.statuses.values()):>6} "
            f"{self.ok / self.seconds:>9.1f} {p50:>8.1f} {p99:>8.1f} {self.mean_batch:>7.1f}   {errors or 'none'}"
        )


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def easy_vqa_requests(count: int) -> list[tuple[bytes, str]]:
    """(PNG bytes, question) pairs from the easy-VQA test set, each image read once."""
    questions, _, image_ids = get_test_questions()
    paths = get_test_image_paths()
    images = {image_id: Path(paths[image_id]).read_bytes() for image_id in set(image_ids[:count])}
    return [(images[image_ids[i]], questions[i]) for i in range(count)]


def batch_stats(url: str) -> tuple[float, float]:
    """(requests run, forward passes) of /v1/vqa so far, from the server's /metrics."""
    values = {}
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    for line in lines:
        for name in ("vilt_batch_size_sum", "vilt_batch_size_count"):
            if line.startswith(name + "{") and 'task="vqa"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["vilt_batch_size_sum"], values["vilt_batch_size_count"]


async def drive(
    url: str, requests: list[tuple[bytes, str]], concurrency: int
) -> tuple[float, list[float], Counter[int]]:
    """Send every request with ``concurrency`` clients; (wall seconds, latencies of 200s in ms, statuses)."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    pending = iter(requests)

    async def client(http: aiohttp.ClientSession) -> None:
        for image, question in pending:
            form = aiohttp.FormData()
            form.add_field("image", image, filename="image.png", content_type="image/png")
            form.add_field("question", question)
            start = time.perf_counter()
            async with http.post(url + "/v1/vqa", data=form) as response:
                body = await response.json()
            statuses[response.status] += 1
            if response.status == 200:
                latencies.append((time.perf_counter() - start) * 1000)
                assert body["answers"][0]["answer"], body
            elif response.status == 503:  # a well-behaved client waits as told
                await asyncio.sleep(float(response.headers["Retry-After"]))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, statuses


def run_interleaved(model: str, phases: list[Phase], requests: list[tuple[bytes, str]], rounds: int) -> None:
    """Start one server per phase, warm each up, then drive them in turn, one block of the requests
    each per round, so that a change in the (shared) machine's load hits every phase alike."""
    with contextlib.ExitStack() as stack:
        options = ["--log-level", "warning", "--threads", str(SERVER_THREADS)]
        urls = [stack.enter_context(serving(model, *options, *phase.server_args)) for phase in phases]
        for phase, url in zip(phases, urls):
            asyncio.run(drive(url, requests[:WARMUP_REQUESTS], phase.concurrency))
        before = [batch_stats(url) for url in urls]
        block = -(-len(requests) // rounds)
        for start in range(0, len(requests), block):
            for phase, url in zip(phases, urls):
                phase.add(*asyncio.run(drive(url, requests[start : start + block], phase.concurrency)))
        for phase, url, (run_before, passes_before) in zip(phases, urls, before):
            run, passes = batch_stats(url)
            phase.mean_batch = (run - run_before) / max(passes - passes_before, 1)
    for phase in phases:
        print(phase.row(), flush=True)


def model_description(model: str) -> str:
    vqa = vilt.pipeline("visual-question-answering", model=model)
    config = vqa.config
    params = sum(p.numel() for p in vqa.model.parameters())
    return (
        f"{type(vqa.model).__name__}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"{params / 1e6:.1f}M parameters, {config.num_labels} answers; runs as {vqa.dtype} on {vqa.device}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(BUNDLED_MODEL_DIR), help="model directory (default: the bundled one)"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per phase (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="concurrent clients (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_FILE, help="report file (default: %(default)s)")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be positive")

    requests = easy_vqa_requests(args.requests)
    phases = [
        Phase("batched", ["--max-batch-size", "32", "--max-wait-ms", "5"], args.concurrency),
        Phase("batch size 1", ["--max-batch-size", "1"], args.concurrency),
        Phase("overload", ["--max-queue", str(OVERLOAD_QUEUE)], 4 * args.concurrency),
    ]
    header = [
        f"vilt serve load test: {args.requests} POST /v1/vqa requests per phase (easy-VQA test images, 64x64 PNG),",
        f"after {WARMUP_REQUESTS} warm-up requests, aiohttp clients on loopback.",
        f"model: {model_description(args.model)}",
        f"server: --threads {SERVER_THREADS}; client and server share the machine:",
        *(f"  {key}: {value}" for key, value in machine_info().items() if key != "threads"),
        "overload: the batched server with --max-queue 8 and 4x the clients; its 503s are deliberate.",
        "",
        f"{'phase':<14} {'conc.':>5} {'sent':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch':>7}   errors",
    ]
    print("\n".join(header), flush=True)
    batched, single, overload = phases
    run_interleaved(args.model, [batched, single], requests, ROUNDS)
    run_interleaved(args.model, [overload], requests, 1)
    unexpected = sum(
        count for r in (batched, single) for status, count in r.statuses.items() if status != 200
    )
    unexpected += sum(count for status, count in overload.statuses.items() if status not in (200, 503))
    ratios = [fast / slow for fast, slow in zip(batched.round_throughputs, single.round_throughputs)]
    footer = [
        "",
        f"dynamic batching: {batched.ok / batched.seconds / (single.ok / single.seconds):.2f}x the throughput of "
        f"batch size 1; p99 {percentile(batched.latencies_ms, 99):.1f} ms against {percentile(single.latencies_ms, 99):.1f} ms",
        f"throughput ratio round by round: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, "
        f"max {max(ratios):.2f}x over {len(ratios)} rounds (the spread is the shared machine's noise)",
        f"overload: {overload.statuses[503]} requests refused with 503 (deliberate), {overload.ok} answered",
        f"errors other than the deliberate 503s: {unexpected}",
        "load average (1, 5, 15 min) after the run: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
    print("\n".join(footer))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + [phase.row() for phase in phases] + footer) + "\n")
    if unexpected:
        sys.exit(1)


if __name__ == "__main__":
    main()
