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
8. ``JSON of unknown keys``: 4 bodies of 1.6 million keys (16 MB, over the JSON limit) at once, twice,
   then 4 of 750,000 keys (7.5 MB, under it) at once, twice.
9. ``keep-alive pollers``: 300 kept-alive connections from 10 other addresses, each asking GET /healthz
   every 4 s (and reconnecting when closed), for 40 s; the good clients open a new connection per request.
10. ``reconnecting slowloris``: 300 connections from 5 other addresses that send their headers a byte a
    second and reconnect at once when answered or closed, for 40 s; good clients as in 9.
11. ``progressive JPEGs``: 4 progressive JPEGs of 4096 x 4096 pixels and 100,000 tiny scans (3.4 MB,
    hours of decoding each) at once, while two more good clients send 1024 x 1024 PNG photographs.
12. ``SIGTERM under load``: SIGTERM 2 s into a phase of good clients, 8 dripping uploads and 8 large images.

Attackers of phases 9 and 10 connect from other loopback addresses (127.0.0.2 and up), as other
clients would: the server shares its connections between client addresses.

For each phase: the good requests (answered, success rate, how many were first told 503, p50/p99/max of
the answered ones, from the first try); what the attack got; the server's 5xx answers by status from its
/metrics (503 with Retry-After is the deliberate overload answer, 504 the answer to a request past its
deadline; the good clients' own statuses say whether they got any); the peak resident memory of the
server during the phase (VmHWM, reset at its start), its memory and the processor time it used in the
2 s after; the most file descriptors it held; and whether /readyz still answered 200. After the last
phase the server log is searched for tracebacks.

Run as ``python benchmarks/attack.py`` (about 7 minutes; ``--phases 8,9,10,11`` runs some); the report is
printed and written to ``benchmarks/results/attack.txt``. The machine's load average and CPU are recorded
in it: other work on the machine shares the cores with the server and the clients.
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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import machine_info
from easy_vqa import get_test_image_paths, get_test_questions
from PIL import Image

from vilt.hub import BUNDLED_MODEL_DIR, SAMPLES_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile_images import huge_transparent_png, png_header, progressive_jpeg_bomb  # noqa: E402
from serve_process import Served, server_process  # noqa: E402  (runs `vilt serve` in a subprocess)

RESULTS_FILE = Path(__file__).parent / "results" / "attack.txt"
GOOD_CLIENTS = 4
GOOD_TIMEOUT_S = 40.0
SETTLE_S = 2.0  # after a phase, before the memory is read
PEAK_TARGET_MB = 1500
GOOD_TARGET_MS = 2000


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
        most = max(self.latencies_ms, default=float("nan"))
        return (
            f"{answered}/{self.sent} answered ({rate:.1f}%), {self.told_503} first told 503, "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {most:.0f} ms"
            + (f"; not answered: {others}" if others else "")
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


async def good_client(
    url: str, requests: list[tuple[bytes, str]], stop: asyncio.Event, good: Good, fresh: bool = False
) -> None:
    """Ask questions one after another until ``stop``; on 503 wait as told and try again. With ``fresh``,
    each request opens a new connection (as a new client would), else one connection is kept alive."""
    connector = aiohttp.TCPConnector(limit=1, force_close=fresh)
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


async def drip(
    port: int, head: bytes, step: bytes, every_s: float, limit_s: float, source: str | None = None
) -> tuple[str, float]:
    """Send ``head``, then ``step`` every ``every_s`` until the server answers or closes, or ``limit_s``
    (from the address ``source``, by default the system's choice)."""
    local = (source, 0) if source else None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    except OSError as err:
        return type(err).__name__, 0.0
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


async def post_image(
    http: aiohttp.ClientSession, served: Served, image: bytes, content_type: str, timeout_s: float
) -> tuple[int, bool]:
    """POST ``image`` and a question to /v1/vqa: the status, and whether it came with Retry-After."""
    form = aiohttp.FormData()
    form.add_field("image", image, filename="image", content_type=content_type)
    form.add_field("question", "what color is the shape?")
    async with http.post(
        served.url + "/v1/vqa", data=form, timeout=aiohttp.ClientTimeout(timeout_s)
    ) as response:
        await response.read()
        return response.status, response.headers.get("Retry-After") is not None


async def large_image_burst(served: Served, huge: bytes, rounds: int = 3, burst: int = 48) -> str:
    found: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> str:
            status, retry_after = await post_image(http, served, huge, "image/png", 60)
            return f"{status}{' (Retry-After)' if retry_after else ''}"

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


def keys_json(count: int) -> bytes:
    """A JSON object of ``count`` unknown keys: ``{"0":0,"1":0,...}``."""
    return b"{" + b",".join(b'"%d":0' % i for i in range(count)) + b"}"


async def json_keys(served: Served) -> str:
    found: dict[str, Counter[str]] = {}
    seconds: list[float] = []
    async with aiohttp.ClientSession() as http:

        async def one(body: bytes) -> str:
            start = time.monotonic()
            try:
                async with http.post(
                    served.url + "/v1/vqa",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(120),
                ) as response:
                    answer = await response.read()
                    status = f"{response.status} ({len(answer)} bytes)"
            except aiohttp.ClientError:  # answered before the whole body was sent, then closed
                status = "closed while sending"
            seconds.append(time.monotonic() - start)
            return status

        for name, body in (
            ("1.6M keys, 16 MB", keys_json(1_600_000)),
            ("750,000 keys, 7.5 MB", keys_json(750_000)),
        ):
            found[name] = Counter()
            for _ in range(2):
                found[name].update(await asyncio.gather(*(one(body) for _ in range(4))))
    answers = "; ".join(
        f"{name}: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) for name, c in found.items()
    )
    return f"2 x 4 bodies of each size, 4 at once: {answers}; answered after median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s"


async def keep_alive_pollers(
    served: Served, count: int = 300, every_s: float = 4.0, seconds: float = 40.0, addresses: int = 10
) -> str:
    polls: Counter[str] = Counter()
    connections = [0]
    stop_at = time.monotonic() + seconds

    async def poller(index: int) -> None:
        source = f"127.0.0.{2 + index % addresses}"
        reader = writer = None
        await asyncio.sleep(every_s * index / count)  # spread over one period
        while time.monotonic() < stop_at:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", served.port, local_addr=(source, 0)
                    )
                except OSError as err:
                    polls[type(err).__name__] += 1
                    await asyncio.sleep(every_s)
                    continue
                connections[0] += 1
            assert reader is not None
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                polls[head.split()[1].decode()] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.TimeoutError):
                polls["closed, reconnected"] += 1  # the server closed the idle connection
                writer.close()
                writer = None
                continue
            await asyncio.sleep(every_s)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(poller(i) for i in range(count)))
    return (
        f"{count} pollers from {addresses} addresses, GET /healthz every {every_s:g} s for {seconds:g} s: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(polls.items()))
        + f"; {connections[0]} connections opened"
    )


async def reconnecting_slowloris(
    served: Served, count: int = 300, seconds: float = 40.0, addresses: int = 5
) -> str:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    answers: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds

    async def attacker(index: int) -> None:
        source = f"127.0.0.{20 + index % addresses}"
        while (left := stop_at - time.monotonic()) > 0:
            status, _ = await drip(served.port, head, b"a", 1.0, left, source)
            answers[status] += 1  # then reconnect at once

    await asyncio.gather(*(attacker(i) for i in range(count)))
    return (
        f"{count} connections from {addresses} addresses dripping headers, each reconnecting at once, for "
        f"{seconds:g} s: {sum(answers.values())} connections, answered "
        + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
    )


async def progressive_jpegs(served: Served, bomb: bytes, count: int = 4) -> str:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> tuple[str, float]:
            start = time.monotonic()
            status, _ = await post_image(http, served, bomb, "image/jpeg", 120)
            return str(status), time.monotonic() - start

        results = await asyncio.gather(*(one() for _ in range(count)))
    return (
        f"{count} progressive JPEGs ({len(bomb) / 1e6:.1f} MB, 4096x4096, 100,000 scans) at once: "
        + tally(list(results))
    )


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
    cpu_after_s: float = float("nan")
    large: Good | None = None  # good clients sending 1024 x 1024 photographs, when the phase has them

    def report(self) -> list[str]:
        errors = ", ".join(f"{s}: {n}" for s, n in sorted(self.server_5xx.items())) or "none"
        stopped = math.isnan(self.after_mb)  # the server stopped
        after = "n/a" if stopped else f"{self.after_mb:.0f} MB, processor {self.cpu_after_s:.2f} s"
        return [
            f"{self.name}",
            f"  good requests: {self.good.summary()}",
            *([f"  good 1024x1024 photographs: {self.large.summary()}"] if self.large else []),
            f"  attack: {self.attack}",
            f"  server 5xx answers: {errors}",
            f"  server memory: peak {self.peak_mb:.0f} MB, {SETTLE_S:g} s after {after}; "
            f"most open file descriptors {self.most_fds if self.most_fds >= 0 else 'n/a'}; "
            f"/readyz after: {self.ready_after}",
        ]

    @property
    def good_5xx(self) -> int:
        """Good requests whose last answer was a 5xx (a 503 they were told to retry is not last)."""
        return sum(
            count
            for good in (self.good, self.large)
            if good
            for status, count in good.outcomes.items()
            if status.startswith("5")
        )


async def run_phase(
    served: Served,
    name: str,
    attack: Callable[[], Awaitable[str]],
    requests: list[tuple[bytes, str]],
    minimum_s: float = 0.0,
    fresh: bool = False,
    large: list[tuple[bytes, str]] | None = None,
) -> Phase:
    """Run ``attack`` (for at least ``minimum_s``) while the good clients ask questions (each on a new
    connection with ``fresh``; two more asking about the ``large`` images, when given)."""
    before = statuses(served)
    served.reset_peak()
    stop, watching = asyncio.Event(), asyncio.Event()
    good, large_good = Good(), Good() if large else None
    most_fds = [0]
    watcher = asyncio.ensure_future(watch_fds(served.process.pid, watching, most_fds))
    clients = [
        asyncio.ensure_future(good_client(served.url, requests, stop, good, fresh))
        for _ in range(GOOD_CLIENTS)
    ]
    if large and large_good:
        clients += [
            asyncio.ensure_future(good_client(served.url, large, stop, large_good, fresh)) for _ in range(2)
        ]
    start = time.monotonic()
    outcome = await attack()
    await asyncio.sleep(max(minimum_s - (time.monotonic() - start), 0))
    stop.set()
    await asyncio.gather(*clients)
    watching.set()
    await watcher
    cpu_before = cpu_seconds(served.process.pid)
    await asyncio.sleep(SETTLE_S)
    cpu_after = cpu_seconds(served.process.pid) - cpu_before
    peak, after = served.rss_mb("VmHWM"), served.rss_mb()
    changed = statuses(served) - before
    server_5xx = Counter({status: count for status, count in changed.items() if status.startswith("5")})
    return Phase(
        name,
        good,
        outcome,
        server_5xx,
        peak,
        after,
        most_fds[0],
        "200" if ready(served) else "NOT READY",
        cpu_after,
        large_good,
    )


def cpu_seconds(pid: int) -> float:
    """The processor time a process has used so far (user and system, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


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
    return Phase(
        f"{SIGTERM_PHASE}. SIGTERM under load", good, attack, server_5xx, peak, float("nan"), -1, "(stopped)"
    )


SERIOUS = (8, 9, 10, 11)  # the attacks that took the server down before (issue 25)
SIGTERM_PHASE = 12


def large_photos() -> list[tuple[bytes, str]]:
    """A 1024x1024 PNG photograph (the sample cat, scaled up) and a question about it."""
    buffer = io.BytesIO()
    Image.open(SAMPLES_DIR / "cat.jpg").resize((1024, 1024), Image.Resampling.BICUBIC).save(
        buffer, format="PNG"
    )
    return [(buffer.getvalue(), "what animal is this?")]


async def attack_all(model: str, out: Path, selected: set[int], server_src: Path | None = None) -> None:
    requests = easy_vqa_requests(200)
    huge = huge_transparent_png()
    small_images = [image for image, _ in requests[:10]]
    good_png = requests[0][0]
    bomb = progressive_jpeg_bomb(4096, 100_000)
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
    results: dict[int, Phase] = {}
    tracebacks = 0
    env = {"PYTHONPATH": str(server_src)} if server_src else None
    if server_src:
        lines.append(f"the server runs the vilt of {server_src}")
    with server_process(model, "--log-level", "warning", env=env) as served:
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
        phases: list[tuple[int, str, Callable[[], Awaitable[str]], dict[str, Any]]] = [
            (1, "baseline (no attack)", lambda: _quiet(5), {}),
            (2, "large-image burst", lambda: large_image_burst(served, huge), {}),
            (3, "slow headers", lambda: slow_headers(served), {}),
            (4, "connection flood", lambda: connection_flood(served), {}),
            (5, "slow bodies", lambda: slow_bodies(served), {}),
            (6, "malformed bodies", lambda: malformed(served, good_png), {"minimum_s": 3.0}),
            (
                7,
                "aborted uploads",
                lambda: aborted_uploads(served, [*small_images, huge]),
                {"minimum_s": 3.0},
            ),
            (8, "JSON of unknown keys", lambda: json_keys(served), {"minimum_s": 5.0}),
            (9, "keep-alive pollers", lambda: keep_alive_pollers(served), {"fresh": True}),
            (10, "reconnecting slowloris", lambda: reconnecting_slowloris(served), {"fresh": True}),
            (11, "progressive JPEGs", lambda: progressive_jpegs(served, bomb), {"large": large_photos()}),
        ]
        for number, name, attack, options in phases:
            if number in selected:
                results[number] = await run_phase(served, f"{number}. {name}", attack, requests, **options)
                print("\n".join(results[number].report()), flush=True)
        tracebacks += served.log().count("Traceback")
        lines += ["", *(line for phase in results.values() for line in phase.report())]
    if SIGTERM_PHASE in selected:
        with server_process(model, "--log-level", "info", env=env) as served:
            await run_phase(served, "warm-up", lambda: _quiet(1), requests)
            results[SIGTERM_PHASE] = await sigterm_under_load(served, requests, huge)
            print("\n".join(results[SIGTERM_PHASE].report()), flush=True)
            lines += results[SIGTERM_PHASE].report()
            tracebacks += served.log().count("Traceback")
    errors = sum(
        count
        for number, phase in results.items()
        for status, count in phase.server_5xx.items()
        if status != "503" and not (number == 11 and status == "504")  # the JPEGs' own deadline
    )
    footer = [""]
    if 2 in results:
        burst = results[2]
        footer.append(
            f"peak server memory during the large-image burst: {burst.peak_mb:.0f} MB (target below "
            f"{PEAK_TARGET_MB} MB); {SETTLE_S:g} s after it {burst.after_mb:.0f} MB against {idle:.0f} MB idle"
        )
    for number in SERIOUS:
        if number in results:
            phase = results[number]
            slowest = max(
                (max(good.latencies_ms, default=float("nan")) for good in (phase.good, phase.large) if good),
                default=float("nan"),
            )
            footer.append(
                f"{phase.name}: slowest good request {slowest:.0f} ms (target below {GOOD_TARGET_MS} ms), "
                f"peak memory {phase.peak_mb:.0f} MB (target below {PEAK_TARGET_MB} MB), good requests "
                f"answered 5xx: {phase.good_5xx}, server processor time in the {SETTLE_S:g} s after: "
                f"{phase.cpu_after_s:.2f} s"
            )
    footer += [
        f"server errors (5xx other than the deliberate 503 with Retry-After and the hostile JPEGs' 504), all "
        f"phases: {errors}",
        f"tracebacks in the server logs: {tracebacks}",
        "server ready after every attack: "
        + ("yes" if all(p.ready_after in ("200", "(stopped)") for p in results.values()) else "NO"),
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
    parser.add_argument(
        "--phases",
        default=",".join(str(number) for number in range(1, SIGTERM_PHASE + 1)),
        help="comma-separated phase numbers to run (default: all)",
    )
    parser.add_argument(
        "--server-src",
        type=Path,
        default=None,
        help="a src/ directory whose vilt the server runs (e.g. an export of main, to measure before a change)",
    )
    args = parser.parse_args()
    selected = {int(number) for number in args.phases.split(",")}
    asyncio.run(asyncio.wait_for(attack_all(args.model, args.out, selected, args.server_src), 1500))


if __name__ == "__main__":
    main()
