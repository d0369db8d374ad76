"""Training checkpoints are data, not code: a malicious ``last.pt`` runs nothing, and a damaged one
(bytes flipped, truncated, empty, or failing its checksum) falls back to ``previous.pt`` with a warning
naming the bad file; with nothing usable left, ``vilt train`` stops with one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

import pytest
import torch
from train_toy import toy_train_flags

from vilt.cli import main


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True)["progress"]["step"]


def _train(root: Path, output: Path, steps: int) -> int:
    """Train the toy model up to ``steps`` optimizer steps, saving a checkpoint after each."""
    return main(
        toy_train_flags(root, output, "--max-steps", str(steps), "--save-every", "1", "--batch-size", "8")
    )


class _Payload:
    """Pickles into a call of ``os.system``: what a malicious checkpoint would run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _write_malicious(path: Path, marker: Path) -> None:
    torch.save({"model": _Payload(marker), "progress": {"step": 99}}, path)


def _trust(output: Path, name: str) -> None:
    """Do what an attacker who can write the directory would: make ``name`` pass its checksum."""
    manifest = output / "checksums.json"
    data = json.loads(manifest.read_text())
    digest = hashlib.sha256((output / name).read_bytes()).hexdigest()
    data["files"].append({"sha256": digest, "step": 99})
    manifest.write_text(json.dumps(data))


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(b ^ 0xFF for b in data[middle : middle + 200])
    path.write_bytes(bytes(data))


DAMAGE = {
    "bytes flipped": _flip_bytes,
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "empty": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert _train(tmp_path, out, 2) == 0
    assert _step(out / "last.pt") == 2 and _step(out / "previous.pt") == 1
    DAMAGE[damage](out / "last.pt")
    capsys.readouterr()
    assert _train(tmp_path, out, 3) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if str(out / "last.pt") in line)
    assert "previous.pt" in warning
    assert f"resumed from {out / 'previous.pt'} at step 1" in (out / "train.log").read_text()
    assert _step(out / "last.pt") == 3


@pytest.mark.parametrize("passes_checksum", [False, True], ids=["replaced", "replaced-and-trusted"])
def test_a_malicious_last_checkpoint_runs_nothing_and_falls_back(tmp_path, capsys, passes_checksum):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert _train(tmp_path, out, 2) == 0
    _write_malicious(out / "last.pt", marker)
    if passes_checksum:
        _trust(out, "last.pt")  # the checksum is for damage; loading as data is what stops code
    capsys.readouterr()
    assert _train(tmp_path, out, 3) == 0
    assert not marker.exists()
    assert str(out / "last.pt") in capsys.readouterr().err
    assert _step(out / "last.pt") == 3


def test_no_usable_checkpoint_is_one_clear_line(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert _train(tmp_path, out, 1) == 0
    assert not (out / "previous.pt").exists()
    _write_malicious(out / "last.pt", marker)
    _trust(out, "last.pt")
    capsys.readouterr()
    assert _train(tmp_path, out, 2) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("vilt train: error: no usable training checkpoint")
    assert str(out / "last.pt") in last_line and "--output-dir" in last_line


def test_rng_state_says_when_numpy_global_generator_is_not_mt19937():
    import numpy as np

    from vilt.train.checkpoints import rng_state

    previous = np.random.get_bit_generator()
    np.random.set_bit_generator(np.random.PCG64(0))
    try:
        with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="global generator is a PCG64"):
            rng_state()
    finally:
        np.random.set_bit_generator(previous)
