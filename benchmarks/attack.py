"""Attack ``vilt serve`` on loopback while good clients use it, and report what each attack cost them.

One ``vilt serve`` subprocess (the bundled easy-VQA model, every limit at its default) on a free
127.0.0.1 port. Each phase runs one attack while four good clients send easy-VQA questions (64x64 PNG,
multipart) one after another; a good client that gets 503 waits the Retry-After it is told and tries
again, within 40 s. Phases, each bounded in count and time:

1. ``baseline``: the good clients alone, 5 s.
2. ``large-image burst``: 48 concurrent POSTs of a 4096x4096 RGBA PNG (75 KB, 64 MiB decoded), 3 times.
3. ``slow headers``: 300 connections that send their headers one byte a second, for at most 20 s.
4. ``connection flood``: 2,000 connections that send nothing, held for at most 15 s.
5. ``slow bodies``: 100 uploads that announce 100 KB and send one byte every 0.5 s, for at most 30 s.
6. ``malformed bodies``: 2,000 requests cycling through 20 kinds of broken body (JSON nested 100,000
   deep, a top_k of 5,000 digits, invalid UTF-8, a 16 MiB body, a PNG claiming 10^10 pixels, ...).
7. ``aborted uploads``: 300 uploads cut off at a random byte (half with a reset).
8. ``SIGTERM under load``: SIGTERM 2 s into a phase of good clients, 8 dripping uploads and 8 large images.

For each phase: the good requests (answered, success rate, how many were first told 503, p50/p99 of the
answered ones, from the first try); what the attack got; the server's 5xx answers by status from its
/metrics (503 with Retry-After is the deliberate overload answer, anything else is an error); the peak
resident memory of the server during the phase (VmHWM, reset at its start) and its memory 2 s after;
the most file descriptors it held; and whether /readyz still answered 200. After the last phase the
server log is searched for tracebacks.

Run as ``python benchmarks/attack.py`` (about 3 minutes); the report is printed and written to
``benchmarks/results/attack.txt``. The machine's load average and CPU are recorded in it: other work on
the machine shares the cores with the server and the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import socket
import statistics
import struct
import sys
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from common import machine_info
from easy_vqa import get_test_image_paths, get_test_questions
from PIL import Image

from vilt.hub import BUNDLED_MODEL_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_process import Served, server_process  # noqa: E402  (runs `vilt serve` in a subprocess)

RESULTS_FILE = Path(__file__).parent / "results" / "attack.txt"
GOOD_CLIENTS = 4
GOOD_TIMEOUT_S = 40.0
SETTLE_S = 2.0  # after a phase, before the memory is read
PEAK_TARGET_MB = 1500


# ----------------------------------------------------------------------------- the good clients


@dataclass
class Good:
    """What the good clients of one phase saw."""

    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    told_503: int = 0

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        answered = self.outcomes["200"]
        others = ", ".join(
            f"{name} {count}" for name, count in sorted(self.outcomes.items()) if name != "200"
        )
        rate = 100 * answered / self.sent if self.sent else float("nan")
        p50, p99 = (percentile(self.latencies_ms, q) for q in (50, 99))
        return (
            f"{answered}/{self.sent} answered ({rate:.1f}%), {self.told_503} first told 503, "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms" + (f"; not answered: {others}" if others else "")
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


async def good_client(url: str, requests: list[tuple[bytes, str]], stop: asyncio.Event, good: Good) -> None:
    """Ask questions one after another until ``stop``; on 503 wait as told and try again."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set():
            image, question = random.choice(requests)
            start = time.perf_counter()
            outcome = await _ask_until_answered(http, url, image, question, good)
            good.outcomes[outcome] += 1
            if outcome == "200":
                good.latencies_ms.append((time.perf_counter() - start) * 1000)
            elif outcome in ("connection refused", "disconnected"):
                await asyncio.sleep(0.5)


async def _ask_until_answered(
    http: aiohttp.ClientSession, url: str, image: bytes, question: str, good: Good
) -> str:
    deadline = time.monotonic() + GOOD_TIMEOUT_S
    told_503 = False
    while True:
        form = aiohttp.FormData()
        form.add_field("image", image, filename="image.png", content_type="image/png")
        form.add_field("question", question)
        try:
            timeout = aiohttp.ClientTimeout(total=max(deadline - time.monotonic(), 0.1))
            async with http.post(url + "/v1/vqa", data=form, timeout=timeout) as response:
                body = await response.read()
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientConnectorError:
            return "connection refused"  # nothing listens (the server stopped)
        except (aiohttp.ClientError, ConnectionError):
            return "disconnected"
        except asyncio.TimeoutError:
            return "client timeout"
        if response.status == 200:
            assert json.loads(body)["answers"], body
            return "200"
        if response.status == 503 and retry_after and time.monotonic() < deadline:
            good.told_503 += not told_503
            told_503 = True
            await asyncio.sleep(float(retry_after))
            continue
        return str(response.status)


def easy_vqa_requests(count: int) -> list[tuple[bytes, str]]:
    questions, _, image_ids = get_test_questions()
    paths = get_test_image_paths()
    return [(Path(paths[image_ids[i]]).read_bytes(), questions[i]) for i in range(count)]


# ----------------------------------------------------------------------------- what the server says


def statuses(served: Served) -> Counter[str]:
    """The server's answers so far, by status, from its /metrics."""
    counts: Counter[str] = Counter()
    with urllib.request.urlopen(served.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("vilt_requests_total{"):
                status = line.split('status="')[1].split('"')[0]
                counts[status] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def ready(served: Served) -> bool:
    try:
        with urllib.request.urlopen(served.url + "/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def watch_fds(pid: int, stop: asyncio.Event, most: list[int]) -> None:
    while not stop.is_set():
        most[0] = max(most[0], open_fds(pid))
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------- raw connections


async def read_status(reader: asyncio.StreamReader, timeout_s: float) -> tuple[str, float]:
    """The status the server answers (or 'closed' / 'open'), and after how many seconds."""
    start = time.monotonic()
    try:
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    except asyncio.TimeoutError:
        return "open", time.monotonic() - start
    except (ConnectionError, OSError):
        return "reset", time.monotonic() - start
    seconds = time.monotonic() - start
    return (line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"), seconds


async def drip(port: int, head: bytes, step: bytes, every_s: float, limit_s: float) -> tuple[str, float]:
    """Send ``head``, then ``step`` every ``every_s`` until the server answers or closes, or ``limit_s``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    answer = asyncio.ensure_future(read_status(reader, limit_s))
    try:
        writer.write(head)
        while not answer.done() and time.monotonic() - start < limit_s:
            await asyncio.sleep(every_s)
            if answer.done():
                break
            writer.write(step)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    status, _ = await answer
    writer.close()
    return status, time.monotonic() - start


def tally(results: list[tuple[str, float]]) -> str:
    by_status = Counter(status for status, _ in results)
    seconds = [s for _, s in results]
    return (
        ", ".join(f"{status}: {count}" for status, count in sorted(by_status.items()))
        + f"; answered or closed after median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s"
    )


def multipart(image: bytes, question: str = "what color is the shape?") -> tuple[bytes, str]:
    boundary = "vilt-attack"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="question"\r\n\r\n{question}\r\n--{boundary}--\r\n'.encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post_head(length: int, content_type: str, path: str = "/v1/vqa") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


# ----------------------------------------------------------------------------- the attacks

# an upload of a 100 KB image announced, the start of its multipart body sent, the rest to be dripped
SLOW_BODY_HEAD = (
    post_head(100_000, "multipart/form-data; boundary=vilt-attack")
    + b'--vilt-attack\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
)


def huge_transparent_png() -> bytes:
    """A 4096x4096 RGBA PNG of about 75 KB: 64 MiB once decoded."""
    pixels = np.zeros((4096, 4096, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 255
    pixels[1000:3000, 1000:3000, 1] = 180
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


async def large_image_burst(served: Served, huge: bytes, rounds: int = 3, burst: int = 48) -> str:
    found: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> str:
            form = aiohttp.FormData()
            form.add_field("image", huge, filename="huge.png", content_type="image/png")
            form.add_field("question", "what color is the shape?")
            async with http.post(
                served.url + "/v1/vqa", data=form, timeout=aiohttp.ClientTimeout(60)
            ) as response:
                await response.read()
                retry = " (Retry-After)" if response.headers.get("Retry-After") else ""
                return f"{response.status}{retry}"

        for _ in range(rounds):
            found.update(await asyncio.gather(*(one() for _ in range(burst))))
    return f"{rounds} x {burst} huge images: " + ", ".join(f"{k}: {v}" for k, v in sorted(found.items()))


async def slow_headers(served: Served, count: int = 300) -> str:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    results = await asyncio.gather(*(drip(served.port, head[:5], b"a", 1.0, 20) for _ in range(count)))
    return f"{count} connections: " + tally(list(results))


async def connection_flood(served: Served, count: int = 2000) -> str:
    async def idle() -> tuple[str, float]:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        except OSError as err:
            return type(err).__name__, 0.0
        result = await read_status(reader, 15)
        writer.close()
        return result

    results = await asyncio.gather(*(idle() for _ in range(count)))
    return f"{count} idle connections: " + tally(list(results))


async def slow_bodies(served: Served, count: int = 100) -> str:
    results = await asyncio.gather(*(drip(served.port, SLOW_BODY_HEAD, b"x", 0.5, 30) for _ in range(count)))
    return f"{count} uploads: " + tally(list(results))


def png_header(width: int, height: int) -> bytes:
    """A PNG of only its header (claims width x height pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def malformed_bodies(good_png: bytes) -> list[tuple[str, bytes, str]]:
    """(kind, body, content type) of 20 kinds of broken request."""
    import base64

    json_type = "application/json"
    image64 = base64.b64encode(good_png).decode()

    def form(image: bytes, question: str = "what?") -> tuple[bytes, str]:
        return multipart(image, question)

    return [
        ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, json_type),
        (
            "top_k of 5,000 digits",
            f'{{"image": "{image64}", "question": "q", "top_k": {"9" * 5000}}}'.encode(),
            json_type,
        ),
        ("top_k NaN", f'{{"image": "{image64}", "question": "q", "top_k": NaN}}'.encode(), json_type),
        ("truncated JSON", b'{"image": "' + image64[:100].encode(), json_type),
        ("invalid UTF-8", b'{"question": "\xc3\x28", "image": ""}', json_type),
        (
            "UTF-16 JSON (valid, so answered)",
            json.dumps({"question": "q", "image": image64}).encode("utf-16"),
            json_type,
        ),
        ("a JSON list", b"[1, 2, 3]", json_type),
        (
            "question of 400,000 characters",
            json.dumps({"image": image64, "question": "why " * 100_000}).encode(),
            json_type,
        ),
        ("wrong types", json.dumps({"image": 7, "question": ["a"], "top_k": "many"}).encode(), json_type),
        ("image not base64", json.dumps({"image": "%%%not base64%%%", "question": "q"}).encode(), json_type),
        (
            "base64 of text",
            json.dumps({"image": base64.b64encode(b"hello").decode(), "question": "q"}).encode(),
            json_type,
        ),
        ("lone surrogate", b'{"image": "", "question": "\\ud800"}', json_type),
        ("empty body", b"", json_type),
        ("no content type", b"question=what", ""),
        ("multipart without boundary", b"--x\r\n\r\n", "multipart/form-data"),
        ("truncated multipart", form(good_png)[0][:300], form(good_png)[1]),
        ("body over 16 MiB", b"0" * (16 * 2**20 + 1), json_type),
        ("PNG claiming 10^10 pixels", *form(png_header(100_000, 100_000))),
        ("truncated PNG", *form(good_png[: len(good_png) // 2])),
        ("EPS instead of an image", *form(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")),
    ]


async def malformed(served: Served, good_png: bytes, total: int = 2000, concurrency: int = 16) -> str:
    kinds = malformed_bodies(good_png)
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind, _, _ in kinds}
    pending = iter(range(total))
    async with aiohttp.ClientSession() as http:

        async def sender() -> None:
            for index in pending:
                kind, body, content_type = kinds[index % len(kinds)]
                headers = {"Content-Type": content_type} if content_type else {}
                try:
                    async with http.post(served.url + "/v1/vqa", data=body, headers=headers) as response:
                        await response.read()
                        by_kind[kind][str(response.status)] += 1
                except aiohttp.ClientError:  # answered before the whole body was sent, then closed
                    by_kind[kind]["closed while sending"] += 1

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    overall = sum(by_kind.values(), Counter())
    lines = [
        f"{total} requests: " + ", ".join(f"{status}: {count}" for status, count in sorted(overall.items()))
    ]
    lines += [
        f"      {kind}: " + ", ".join(f"{s}" for s in sorted(counts)) for kind, counts in by_kind.items()
    ]
    return "\n".join(lines)


async def aborted_uploads(served: Served, images: list[bytes], count: int = 300) -> str:
    rng = random.Random(0)
    cut_at: list[float] = []

    async def one(index: int) -> None:
        body, content_type = multipart(images[index % len(images)])
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        fraction = rng.random()
        cut_at.append(fraction)
        writer.write(post_head(len(body), content_type) + body[: int(len(body) * fraction)])
        await writer.drain()
        await asyncio.sleep(rng.random() * 0.2)
        if index % 2:  # a reset instead of a clean close
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        writer.close()

    for start in range(0, count, 50):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 50, count))))
    return f"{count} uploads cut off between 0% and 100% of their body (half with a TCP reset)"


# ----------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    good: Good
    attack: str
    server_5xx: Counter[str]
    peak_mb: float
    after_mb: float
    most_fds: int
    ready_after: str

    def report(self) -> list[str]:
        errors = ", ".join(f"{s}: {n}" for s, n in sorted(self.server_5xx.items())) or "none"
        after = "n/a" if math.isnan(self.after_mb) else f"{self.after_mb:.0f} MB"  # NaN: the server stopped
        return [
            f"{self.name}",
            f"  good requests: {self.good.summary()}",
            f"  attack: {self.attack}",
            f"  server 5xx answers: {errors}",
            f"  server memory: peak {self.peak_mb:.0f} MB, {SETTLE_S:g} s after {after}; "
            f"most open file descriptors {self.most_fds if self.most_fds >= 0 else 'n/a'}; "
            f"/readyz after: {self.ready_after}",
        ]


async def run_phase(
    served: Served,
    name: str,
    attack: Callable[[], Awaitable[str]],
    requests: list[tuple[bytes, str]],
    minimum_s: float = 0.0,
) -> Phase:
    """Run ``attack`` (for at least ``minimum_s``) while the good clients ask questions."""
    before = statuses(served)
    served.reset_peak()
    stop, watching = asyncio.Event(), asyncio.Event()
    good = Good()
    most_fds = [0]
    watcher = asyncio.ensure_future(watch_fds(served.process.pid, watching, most_fds))
    clients = [
        asyncio.ensure_future(good_client(served.url, requests, stop, good)) for _ in range(GOOD_CLIENTS)
    ]
    start = time.monotonic()
    outcome = await attack()
    await asyncio.sleep(max(minimum_s - (time.monotonic() - start), 0))
    stop.set()
    await asyncio.gather(*clients)
    watching.set()
    await watcher
    await asyncio.sleep(SETTLE_S)
    peak, after = served.rss_mb("VmHWM"), served.rss_mb()
    changed = statuses(served) - before
    server_5xx = Counter({status: count for status, count in changed.items() if status.startswith("5")})
    return Phase(
        name, good, outcome, server_5xx, peak, after, most_fds[0], "200" if ready(served) else "NOT READY"
    )


async def sigterm_under_load(served: Served, requests: list[tuple[bytes, str]], huge: bytes) -> Phase:
    """Good clients, 8 dripping uploads and 8 huge images in flight; SIGTERM after 2 s."""
    good = Good()
    stop = asyncio.Event()
    served.reset_peak()
    clients = [
        asyncio.ensure_future(good_client(served.url, requests, stop, good)) for _ in range(GOOD_CLIENTS)
    ]
    drips = [asyncio.ensure_future(drip(served.port, SLOW_BODY_HEAD, b"x", 0.5, 30)) for _ in range(8)]
    burst = asyncio.ensure_future(large_image_burst(served, huge, rounds=1, burst=8))
    await asyncio.sleep(2)
    peak = served.rss_mb("VmHWM")
    seconds = await asyncio.get_running_loop().run_in_executor(None, served.terminate)
    stop.set()
    await asyncio.gather(*clients)
    dripped = await asyncio.gather(*drips)
    try:
        burst_outcome = await burst
    except aiohttp.ClientError as err:
        burst_outcome = f"8 huge images: {type(err).__name__}"
    exit_code = served.process.returncode
    log = served.log()
    server_5xx = Counter(
        {
            status: log.count(f'" {status} ')
            for status in ("500", "502", "503", "504")
            if log.count(f'" {status} ')  # uvicorn's access log: the metrics died with the process
        }
    )
    attack = (
        f"SIGTERM 2 s in: the process exited after {seconds:.1f} s with code {exit_code}; "
        f"8 dripping uploads: {tally(list(dripped))}; {burst_outcome}; good requests sent after the "
        "server stopped listening are refused"
    )
    return Phase("8. SIGTERM under load", good, attack, server_5xx, peak, float("nan"), -1, "(stopped)")


async def attack_all(model: str, out: Path) -> None:
    requests = easy_vqa_requests(200)
    huge = huge_transparent_png()
    small_images = [image for image, _ in requests[:10]]
    good_png = requests[0][0]
    header = [
        "vilt serve under attack: one server (every limit at its default), loopback only; four good clients ask",
        "easy-VQA questions (64x64 PNG) during each attack and wait as told on 503 (Retry-After), 40 s at most.",
        f"model: {'the bundled easy-VQA model' if Path(model) == BUNDLED_MODEL_DIR else model}",
        "The machine is shared: other work (other sessions' builds and tests) runs on the same cores as the",
        "server and the clients during the run; the load average before and after records how much.",
        *(f"  {key}: {value}" for key, value in machine_info().items()),
        "",
    ]
    print("\n".join(header), flush=True)
    lines = list(header)
    with server_process(model, "--log-level", "warning") as served:
        for _ in range(3):  # warm up: the first forward passes allocate what later ones reuse
            await run_phase(served, "warm-up", lambda: _quiet(1), requests)
        idle = served.rss_mb()
        with urllib.request.urlopen(served.url + "/readyz", timeout=10) as response:
            threads = json.load(response)["threads"]
        lines.append(
            f"server threads: model {threads['model']}, decode {threads['decode']}, OpenMP wait policy "
            f"{threads['omp_wait_policy']}; resident memory after warm-up (idle): {idle:.0f} MB"
        )
        print(lines[-1], flush=True)
        phases = [
            ("1. baseline (no attack)", lambda: _quiet(5), 0.0),
            ("2. large-image burst", lambda: large_image_burst(served, huge), 0.0),
            ("3. slow headers", lambda: slow_headers(served), 0.0),
            ("4. connection flood", lambda: connection_flood(served), 0.0),
            ("5. slow bodies", lambda: slow_bodies(served), 0.0),
            ("6. malformed bodies", lambda: malformed(served, good_png), 3.0),
            ("7. aborted uploads", lambda: aborted_uploads(served, [*small_images, huge]), 3.0),
        ]
        results = []
        for name, attack, minimum_s in phases:
            phase = await run_phase(served, name, attack, requests, minimum_s)
            results.append(phase)
            print("\n".join(phase.report()), flush=True)
        log = served.log()
        tracebacks = log.count("Traceback")
        lines += ["", *(line for phase in results for line in phase.report())]
    with server_process(model, "--log-level", "info") as served:
        await run_phase(served, "warm-up", lambda: _quiet(1), requests)
        stopped = await sigterm_under_load(served, requests, huge)
        print("\n".join(stopped.report()), flush=True)
        lines += stopped.report()
        tracebacks += served.log().count("Traceback")
    burst = results[1]
    errors = sum(
        count
        for phase in [*results, stopped]
        for status, count in phase.server_5xx.items()
        if status != "503"
    )
    footer = [
        "",
        f"peak server memory during the large-image burst: {burst.peak_mb:.0f} MB (target below {PEAK_TARGET_MB} MB); "
        f"{SETTLE_S:g} s after it {burst.after_mb:.0f} MB against {idle:.0f} MB idle",
        f"server errors (5xx other than the deliberate 503 with Retry-After), all phases: {errors}",
        f"tracebacks in the server logs: {tracebacks}",
        f"server ready after every attack: {'yes' if all(p.ready_after == '200' for p in results) else 'NO'}",
        "load average (1, 5, 15 min) after the run: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
    print("\n".join(footer), flush=True)
    lines += footer
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


async def _quiet(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"none ({seconds:g} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(BUNDLED_MODEL_DIR), help="model directory (default: the bundled one)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_FILE, help="report file (default: %(default)s)")
    args = parser.parse_args()
    asyncio.run(asyncio.wait_for(attack_all(args.model, args.out), 900))


if __name__ == "__main__":
    main()
