"""``vilt serve`` in a subprocess on a free loopback port, for the socket, browser and schemathesis tests
and the benchmarks (pytest puts tests/ on sys.path; the benchmarks add it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Served:
    """A running ``vilt serve``: its URL, process and log."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: IO[str]

    def log(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        self.log_file.seek(0)
        return self.log_file.read()

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The server's resident memory (``VmRSS``), or its peak since the last :meth:`reset_peak` (``VmHWM``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"{field} is not in /proc/{self.process.pid}/status")

    def reset_peak(self) -> None:
        """Start the peak (``VmHWM``) over from the current resident memory."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def terminate(self) -> float:
        """Send SIGTERM; return the seconds until the process exited (at most 60, then it is killed)."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - start


@contextmanager
def server_process(model_dir: Path | str, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """Run ``vilt serve --model model_dir *args`` on 127.0.0.1 until ready; stop it at exit."""
    port = free_port()
    command = [sys.executable, "-m", "vilt.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    # a file, not a pipe (a full pipe would block the server); appended to, so reading it moves nothing
    with tempfile.TemporaryFile(mode="a+") as log:
        process = subprocess.Popen(
            [*command, *args], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        served = Served(f"http://127.0.0.1:{port}", port, process, log)
        try:
            wait_for(lambda: _ready(served.url) or process.poll() is not None, 120, "vilt serve to start")
            if process.poll() is not None:
                raise RuntimeError(f"vilt serve exited with code {process.returncode}:\n{served.log()}")
            yield served
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=60)
                except (
                    subprocess.TimeoutExpired
                ):  # a server that cannot stop (a bug) must not outlive the caller
                    process.kill()
                    process.wait()


@contextmanager
def serving(model_dir: Path | str, *args: str) -> Iterator[str]:
    """Run ``vilt serve --model model_dir *args`` on 127.0.0.1 until ready; yields its URL."""
    with server_process(model_dir, *args) as served:
        yield served.url
