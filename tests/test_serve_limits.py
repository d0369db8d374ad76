"""``vilt serve`` in a real uvicorn process, attacked through real sockets: slow or huge headers, too
many connections, slow, unread and aborted bodies, SIGTERM while a client drips its body, a Host
header it does not answer to, and a burst of huge images against its memory budget.

Each test fails on a server without the guards (it waits forever, or the memory or the log shows it).
The models are tiny random-weight ones (tests/tiny_models.py).
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httptools")

from hostile_images import huge_transparent_png, progressive_jpeg_bomb  # noqa: E402
from serve_process import Served, server_process, wait_for  # noqa: E402
from tiny_models import png_bytes, random_image, save_tiny  # noqa: E402

IMAGE = png_bytes(random_image(48, 64, seed=0))
LIMITS = (
    "--decode-threads",
    "1",
    "--header-timeout",
    "1",
    "--body-timeout",
    "1",
    "--max-connections",
    "12",
    "--shutdown-timeout",
    "2",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("qa"), "ViltForQuestionAnswering")


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Served]:
    with server_process(model_dir, *LIMITS) as served:
        yield served


# ----------------------------------------------------------------------------- raw HTTP


def connect(served: Served, timeout_s: float = 10, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the server from ``source`` (any 127.x.y.z address: another client of the same host)."""
    return socket.create_connection(("127.0.0.1", served.port), timeout=timeout_s, source_address=(source, 0))


def read_response(sock: socket.socket, timeout_s: float = 10) -> tuple[int, bytes]:
    """One response on a connection that stays open: its status and body."""
    sock.settimeout(timeout_s)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {received!r}"
        received += chunk
    status, headers, body = parse(received)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, body


def multipart(question: str = "what color?", image: bytes = IMAGE) -> tuple[bytes, str]:
    boundary = "vilt-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + image
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="question"\r\n\r\n{question}'
        f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def request_head(
    path: str, length: int, content_type: str = "application/json", host: str = "127.0.0.1"
) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends within ``timeout_s``, and whether it closed the connection."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def ask(served: Served, image: bytes = IMAGE, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One POST /v1/vqa on its own connection (closed after the answer)."""
    body, content_type = multipart(image=image)
    with connect(served, timeout_s=60) as sock:
        sock.sendall(
            request_head("/v1/vqa", len(body), content_type, host).replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
            )
            + body
        )
        response, closed = read_until_closed(sock, 60)
    assert closed, "the server kept a Connection: close request open"
    return parse(response)


def metrics(served: Served) -> str:
    with urllib.request.urlopen(served.url + "/metrics", timeout=10) as response:
        return response.read().decode()


def no_server_errors(served: Served) -> None:
    """No 5xx but the deliberate 503 (overload, with Retry-After) in the metrics, no traceback in the log."""
    counted = [line for line in metrics(served).splitlines() if line.startswith("vilt_requests_total")]
    assert not any('status="5' in line and 'status="503"' not in line for line in counted), counted
    log = served.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# ----------------------------------------------------------------------------- headers and connections


def test_connections_that_never_finish_their_headers_are_answered_408_and_closed(server: Served) -> None:
    slow = [connect(server) for _ in range(8)]
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    assert ask(server)[0] == 200  # others are served meanwhile
    for sock in slow:
        response, closed = read_until_closed(sock, 5)
        assert closed, "a connection without complete headers stayed open"
        status, _, body = parse(response)
        assert status == 408 and "headers did not arrive within 1 s" in json.loads(body)["error"]
        sock.close()
    idle = connect(server)  # one that sends nothing at all
    assert read_until_closed(idle, 5)[1]
    idle.close()
    no_server_errors(server)


def test_headers_larger_than_the_limit_are_refused_431(server: Served) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"a" * 100_000)
        response, closed = read_until_closed(sock, 5)
    assert closed and parse(response)[0] == 431


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Filler: " + b"a" * 65 * 1024 + b"\r\n",  # one header of 65 KiB
        b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 100) for i in range(1000)),  # 1,000 headers, 110 KB
        b"X-Filler: " + b"c" * 120 * 1024 + b"\r\n",
    ],
    ids=["65 KiB header", "1000 headers", "120 KiB header"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_complete_headers_over_the_limit_in_one_write_are_431(
    server: Served, extra: bytes, method: str
) -> None:
    """The limit holds however the bytes arrive: complete headers (and a body) in a single write too."""
    body, content_type = multipart()
    head = f"{method} /v1/vqa HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    if method == "POST":
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode()
    with connect(server) as sock:
        sock.sendall(head + extra + b"\r\n" + (body if method == "POST" else b""))
        response, closed = read_until_closed(sock, 5)
    status, _, answer = parse(response)
    assert closed and status == 431 and "larger than 65536 bytes" in json.loads(answer)["error"]
    no_server_errors(server)


def test_a_connection_past_the_cap_gets_503_and_the_server_recovers(server: Served) -> None:
    held = [connect(server) for _ in range(12)]  # --max-connections 12
    time.sleep(0.3)  # let the server accept them
    for sends_a_request in (False, True):
        with connect(server) as extra:
            if sends_a_request:
                extra.sendall(request_head("/v1/vqa", len(IMAGE), "image/png") + IMAGE)
            response, closed = read_until_closed(extra, 5)
        status, headers, body = parse(response)
        assert closed and status == 503 and headers["retry-after"] == "1"
        assert "12 connections open, its limit" in json.loads(body)["error"]
    for sock in held:
        sock.close()
    wait_for(lambda: _answers(server), 10, "the server to answer again")


FAIR = ("--max-connections", "12", "--max-connections-per-client", "6", "--keep-alive-timeout", "60",
        "--header-timeout", "60")  # fmt: skip
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def fair_server(model_dir: Path) -> Iterator[Served]:
    """12 connections, 6 per client, and timeouts long enough that no connection ends by itself."""
    with server_process(model_dir, *FAIR) as served:
        yield served


def test_idle_keep_alive_connections_make_room_for_new_clients(fair_server: Served) -> None:
    """Pollers that keep every connection open between requests do not shut out a new client: the
    connection idle longest is closed for it (as keep-alive allows), and the pollers may reconnect."""
    pollers = [connect(fair_server, source=f"127.0.0.{2 + i % 2}") for i in range(12)]  # 6 each: full
    for sock in pollers:
        sock.sendall(HEALTH)
        assert read_response(sock)[0] == 200
    assert ask(fair_server)[0] == 200
    closed = wait_for(
        lambda: [i for i, sock in enumerate(pollers) if read_until_closed(sock, 0.05)[1]], 30, "a close"
    )
    assert closed == [0], f"closed: {closed}; the connection idle longest is the first"
    for sock in pollers[1:]:
        sock.sendall(HEALTH)  # the others are still served on their kept-alive connections
        assert read_response(sock)[0] == 200
        sock.close()
    pollers[0].close()
    no_server_errors(fair_server)


def test_one_client_holds_at_most_its_share_of_the_connections(fair_server: Served) -> None:
    """A slowloris from one address gets 6 connections (its cap) however often it reconnects; the rest
    of the server stays open to others."""
    slow = []
    for _ in range(3):  # reconnecting: every refused connection is tried again at once
        for _ in range(8 - len(slow)):
            sock = connect(fair_server, source="127.0.0.4")
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
            slow.append(sock)
        time.sleep(0.3)
        refused = [sock for sock in slow if read_until_closed(sock, 0.2)[1]]
        slow = [sock for sock in slow if sock not in refused]
        for sock in refused:
            sock.close()
        assert len(slow) == 6
    assert ask(fair_server)[0] == 200
    for sock in slow:
        sock.close()


def test_a_full_server_drops_a_header_waiting_connection_of_the_greediest_client(fair_server: Served) -> None:
    """Three clients hold all 12 connections without sending their headers (6, 5 and 1); a fourth is let
    in, in place of the oldest connection of the client holding the most."""
    held = []
    for source in ["127.0.0.5"] * 6 + ["127.0.0.6"] * 5 + ["127.0.0.7"]:
        sock = connect(fair_server, source=source)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        held.append(sock)
        time.sleep(0.02)  # in order of age
    time.sleep(0.3)
    assert ask(fair_server)[0] == 200
    response, closed = read_until_closed(held[0], 5)
    status, headers, body = parse(response)
    assert closed and status == 503 and headers["retry-after"] == "1", response
    assert "had not sent its request" in json.loads(body)["error"]
    assert not any(read_until_closed(sock, 0.1)[1] for sock in held[1:])
    for sock in held:
        sock.close()
    no_server_errors(fair_server)


def _answers(served: Served) -> bool:
    try:
        return ask(served)[0] == 200
    except OSError:
        return False


# ----------------------------------------------------------------------------- bodies


def test_a_body_that_does_not_arrive_in_time_is_408(server: Served) -> None:
    """The body timeout (1 s here), not the request deadline (30 s), answers: its message names it."""
    with connect(server) as sock:
        sock.sendall(request_head("/v1/vqa", 1000) + b'{"question": ')  # and nothing more
        response, closed = read_until_closed(sock, 60)
    status, headers, body = parse(response)
    assert status == 408 and closed
    assert "did not arrive within the body timeout of 1 s" in json.loads(body)["error"]
    no_server_errors(server)


def test_the_request_deadline_covers_the_upload(model_dir: Path) -> None:
    """A body that keeps arriving, a byte at a time, is cut off by the request deadline (1 s), not by
    the body timeout (30 s): the message names the deadline."""
    with server_process(model_dir, "--timeout", "1", "--body-timeout", "30") as served:
        with connect(served) as sock:
            sock.sendall(request_head("/v1/vqa", 1000) + b"{")
            for _ in range(240):  # a byte every 0.25 s: never idle, never done (at most a minute)
                time.sleep(0.25)
                try:
                    sock.sendall(b" ")
                except OSError:  # the server answered and closed
                    break
            response, _ = read_until_closed(sock, 60)
        status, _, body = parse(response)
        assert status == 408 and "within the request deadline of 1 s" in json.loads(body)["error"]


def test_a_body_nobody_reads_does_not_keep_the_connection_open(server: Served) -> None:
    with connect(server) as sock:
        sock.sendall(request_head("/nowhere", 1_000_000) + b"x" * 100)
        response, closed = read_until_closed(sock, 1)
        for _ in range(10):  # keep dripping the body the server will never read
            if closed:
                break
            try:
                sock.sendall(b"x" * 100)
            except OSError:
                break
            more, closed = read_until_closed(sock, 0.3)
            response += more
    assert parse(response)[0] == 404
    assert closed, "the server kept reading a body it answered without"


def test_an_answer_before_a_small_body_waits_for_it_and_keeps_the_connection(server: Served) -> None:
    """An early answer (here a 404 of a task the model has no head for, given before the upload is read)
    first reads a small body that is still on its way: closing with it unread would reset the connection,
    and a client writing its body would see a write error instead of the answer."""
    body, content_type = multipart()
    with connect(server) as sock:
        for _ in range(2):  # the second request on the same connection
            sock.sendall(request_head("/v1/nlvr2", len(body), content_type))
            time.sleep(0.3)  # the answer is decided now, the body is not there yet
            sock.sendall(body)
            response, closed = read_until_closed(sock, 1.5)
            assert parse(response)[0] == 404, response[:200]
            assert not closed, "the server closed the connection of a request it could have kept"


def test_an_upload_the_client_aborts_is_not_an_error(server: Served) -> None:
    for _ in range(5):
        with connect(server) as sock:
            body, content_type = multipart()
            sock.sendall(request_head("/v1/vqa", len(body), content_type) + body[: len(body) // 2])
            time.sleep(0.1)
    wait_for(lambda: 'status="499"' in metrics(server), 10, "the aborted uploads to be counted")
    assert ask(server)[0] == 200
    no_server_errors(server)


# ----------------------------------------------------------------------------- decoding


def metric(served: Served, name: str) -> float:
    line = next(line for line in metrics(served).splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def test_a_hostile_jpeg_shares_the_decoding_core_and_stops_when_its_client_leaves(server: Served) -> None:
    """The attack: a progressive JPEG of 20,000 tiny scans, each a pass over 2048 x 2048 pixels (minutes
    of decoding). Meanwhile 1024 x 1024 PNGs are decoded on the same core (--decode-threads 1) and
    answered; once its client goes away, the JPEG's decoding stops (before: it ran to its deadline and
    kept the core busy after it, and the PNGs waited for the decoding thread)."""
    bomb = progressive_jpeg_bomb(2048, 20_000)
    body, content_type = multipart(image=bomb)
    stopped_before = metric(server, "vilt_decodes_stopped_total")
    with connect(server) as attacker:
        attacker.sendall(request_head("/v1/vqa", len(body), content_type) + body)
        wait_for(lambda: metric(server, "vilt_decodes_active") == 1, 30, "the JPEG's decoding to start")
        photo = png_bytes(random_image(1024, 1024, seed=1))
        for _ in range(3):
            assert ask(server, photo)[0] == 200
        assert metric(server, "vilt_decodes_active") == 1, "the JPEG was decoded before the photos"
    wait_for(lambda: metric(server, "vilt_decodes_active") == 0, 30, "the JPEG's decoding to stop")
    assert metric(server, "vilt_decodes_stopped_total") == stopped_before + 1
    wait_for(lambda: 'status="499"' in metrics(server), 10, "the request to be counted as abandoned")
    no_server_errors(server)


# ----------------------------------------------------------------------------- shutdown


def test_sigterm_answers_what_is_in_flight_and_exits_in_time_despite_a_dripping_client(
    model_dir: Path,
) -> None:
    with server_process(model_dir, "--shutdown-timeout", "2") as served:
        dripping = connect(served)
        dripping.sendall(request_head("/v1/vqa", 10_000) + b"{")
        body, content_type = multipart()
        in_flight = connect(served, timeout_s=30)
        in_flight.sendall(request_head("/v1/vqa", len(body), content_type) + body)
        served.terminate()  # sent at once, while the good request is being answered
        answer, _ = read_until_closed(in_flight, 60)
        dripped, _ = read_until_closed(dripping, 60)
        log = served.log()
    # it exited by itself (a server that waits for the dripping client would be killed after 60 s)
    assert served.process.returncode != -signal.SIGKILL, "the server did not stop after SIGTERM"
    assert parse(answer)[0] == 200
    status, headers, _ = parse(dripped)
    assert status == 503 and headers["retry-after"] == "1"
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# ----------------------------------------------------------------------------- hosts and threads


def test_a_host_header_other_than_localhost_is_refused_on_loopback(server: Served) -> None:
    status, _, body = ask(server, host="attacker.example")
    assert status == 400 and "attacker.example" in json.loads(body)["error"]
    assert ask(server, host=f"localhost:{server.port}")[0] == 200


def test_the_thread_budget_is_reported_as_it_is(server: Served) -> None:
    with urllib.request.urlopen(server.url + "/readyz", timeout=10) as response:
        threads = json.load(response)["threads"]
    assert threads["model"] >= 1 and threads["decode"] == 1  # --decode-threads 1
    if threads["omp_wait_policy"] != "PASSIVE":  # torch was loaded before vilt serve could set it
        assert (
            threads["omp_wait_policy"] == "default"
            and "OMP_WAIT_POLICY=PASSIVE in the environment" in server.log()
        )


# ----------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_a_burst_of_huge_images_stays_within_the_memory_budget_and_memory_returns(model_dir: Path) -> None:
    huge = huge_transparent_png()
    with server_process(model_dir) as served:
        for _ in range(3):
            assert ask(served)[0] == 200  # warm up
        idle = served.rss_mb()
        served.reset_peak()
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda _: ask(served, huge), range(48)))
        time.sleep(1)
        peak, after = served.rss_mb("VmHWM"), served.rss_mb()
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, statuses
        assert all(headers["retry-after"] == "1" for status, headers, _ in answers if status == 503)
        assert ask(served)[0] == 200
        no_server_errors(served)
    # 48 fully decoded images would take 48 x 64 MiB RGBA (and twice that while converted)
    assert peak - idle < 600, f"idle {idle:.0f} MB, peak {peak:.0f} MB"
    assert after - idle < 60, f"idle {idle:.0f} MB, after the burst {after:.0f} MB"
