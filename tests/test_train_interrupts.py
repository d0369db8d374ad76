"""Ctrl-C (SIGINT) and SIGTERM during ``vilt train``: a checkpoint is saved after the current step, the
command that resumes is printed, and running it ends with the weights of an uninterrupted run. Log lines
go through the progress bar, never into it."""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_toy import pretrain_command

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
EPOCHS = 6  # 24 steps: long enough to interrupt after a few
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (step \d+|new best|data:|model:|training finished|resumed|skipped)")
BAR = re.compile(r"\d+%\|")


def _losses(output_dir: Path) -> dict[int, float]:
    with open(output_dir / "log.csv", newline="") as fh:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(fh) if r["metric"] == "loss"}


def _logged_steps(output_dir: Path) -> int:
    try:
        return len(_losses(output_dir))
    except (FileNotFoundError, KeyError, ValueError):
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("toy")
    output = root / "full"
    done = subprocess.run(
        pretrain_command(root, output, EPOCHS), env=ENV, capture_output=True, text=True, check=True
    )
    return output, done.stderr


def _visible_lines(console: str) -> list[str]:
    """The lines a terminal shows: each carriage return starts overwriting its line from the left."""
    lines = []
    for raw in re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", console).split("\n"):
        shown: list[str] = []
        for piece in raw.split("\r"):
            shown[: len(piece)] = piece
        lines.append("".join(shown).rstrip())
    return lines


def test_log_lines_never_print_into_the_progress_bar(uninterrupted):
    output, console = uninterrupted
    lines = _visible_lines(console)
    logged = [line for line in lines if LOG_LINE.search(line)]
    assert any("new best" in line for line in logged), console[-2000:]  # logged while the bar was shown
    assert any(BAR.search(line) for line in lines)  # and the bar was shown
    mixed = [line for line in logged if BAR.search(line) or not LOG_LINE.match(line)]
    assert not mixed, mixed
    assert not any(BAR.search(line) for line in (output / "train.log").read_text().splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_the_printed_command_resumes_exactly(tmp_path, uninterrupted, sig):
    full, _ = uninterrupted
    root = full.parent
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(
        pretrain_command(root, stopped, EPOCHS), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    while _logged_steps(stopped) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    stopped_at = int(re.search(r"stopped by \w+ after step (\d+)", err).group(1))
    total = max(_losses(full))
    assert 3 <= stopped_at < total, "the run was not interrupted in the middle"
    state = torch.load(stopped / "last.pt", weights_only=True)
    assert state["progress"]["step"] == stopped_at

    command = shlex.split(re.search(r"resume with: (.+)", err).group(1))
    assert command[:2] == ["vilt", "train"]
    resumed = subprocess.run(
        [sys.executable, "-m", "vilt.cli", *command[1:]], env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {stopped / 'last.pt'} at step {stopped_at}" in resumed.stderr

    # Same seed, data order and thread count: the runs match, but not to the bit: the resumed run
    # reads its tensors back from a file, so they sit at other memory alignments, and the vectorised
    # kernels can then round the last bit differently.
    final_full = torch.load(full / "last.pt", weights_only=True)
    final_resumed = torch.load(stopped / "last.pt", weights_only=True)
    assert final_resumed["progress"]["step"] == final_full["progress"]["step"] == total
    for name, value in final_full["model"].items():
        torch.testing.assert_close(final_resumed["model"][name], value, rtol=1e-6, atol=1e-7)
    assert _losses(stopped) == pytest.approx(_losses(full), rel=1e-6)  # every logged step, before and after
