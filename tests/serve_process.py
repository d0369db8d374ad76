"""``vilt serve`` in a subprocess on a free loopback port, for the browser and schemathesis tests and
benchmarks/load.py (pytest puts tests/ on sys.path; the benchmark adds it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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


@contextmanager
def serving(model_dir: Path | str, *args: str) -> Iterator[str]:
    """Run ``vilt serve --model model_dir *args`` on 127.0.0.1 until ready; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "vilt.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    with tempfile.TemporaryFile(mode="w+") as log:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _ready(url) or process.poll() is not None, 120, "vilt serve to start")
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"vilt serve exited with code {process.returncode}:\n{log.read()}")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)
