"""A real multi-node Ray cluster on this one machine, for the scale tests (pytest puts tests/ on sys.path).

Each node is ``ray start --block`` in its own process group, on ports free at start, so parallel test
runs do not collide; stopping a node ends exactly the processes of its group (never ``ray stop``, which
would stop every Ray on the machine). :meth:`LocalCluster.kill_raylet` kills one node's raylet, as a
machine failure does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_ports() -> list[str]:
    """Ports a node would otherwise take from fixed defaults (two nodes on one machine would clash)."""
    return [
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


class LocalCluster:
    """A head node and ``workers`` worker nodes, each with ``cpus`` CPUs."""

    def __init__(self, tmp: Path, workers: int = 1, cpus: int = 1) -> None:
        self.tmp = tmp
        self.ray_tmp = tempfile.mkdtemp(prefix="vilt-ray-", dir="/tmp")  # short: Ray's socket paths must fit
        self.cpus = cpus
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_raylet_start_wait_time_s": "180",
        }  # a loaded machine starts slowly
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []
        head = [RAY, "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}",
                "--include-dashboard=false", f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
                f"--temp-dir={self.ray_tmp}", *_node_ports()]  # fmt: skip
        self._start(head, "head")
        self.wait_for_nodes(1)
        for index in range(workers):
            self.add_worker(index)
        self.wait_for_nodes(1 + workers)

    def _start(self, command: list[str], name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the node's life)
        node = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.nodes.append(node)
        return node

    def add_worker(self, index: int) -> subprocess.Popen:
        command = [RAY, "start", "--block", f"--address={self.address}", f"--num-cpus={self.cpus}",
                   "--disable-usage-stats", *_node_ports()]  # fmt: skip
        return self._start(command, f"worker{index}")

    def alive_nodes(self) -> int:
        """Nodes the cluster counts as alive (asked in a subprocess: the test process stays out of Ray)."""
        code = (
            f"import ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=120
        )
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while self.alive_nodes() != count:
            for node in self.nodes:
                if node.poll() is not None:
                    raise RuntimeError(f"a Ray node exited ({node.args[1:4]}); see {self.tmp}/*.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the local Ray cluster did not reach {count} nodes; see {self.tmp}/*.log")
            time.sleep(1)

    def group_pids(self, node: subprocess.Popen) -> list[int]:
        """The processes of a node's process group (the ones this fixture started for it)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == node.pid:
                        pids.append(int(entry.name))
                except ProcessLookupError:
                    continue
        return pids

    def kill_raylet(self, node: subprocess.Popen) -> int:
        """SIGKILL the raylet of ``node`` (its workers die with it, as on a failed machine); its pid."""
        for pid in self.group_pids(node):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if command.endswith(b"raylet"):
                os.kill(pid, signal.SIGKILL)
                return pid
        raise RuntimeError("the node has no raylet process")

    def stop_node(self, node: subprocess.Popen) -> None:
        """End every process of a node's group: SIGTERM, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(node.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.group_pids(node):
                time.sleep(0.2)
        node.wait(timeout=10)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.stop_node(node)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
