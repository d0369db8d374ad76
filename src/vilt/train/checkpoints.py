"""What a run saves: the resumable training state (``output_dir/last.pt``) and the best model
(``output_dir/best``).

The training state is data, not code. It holds only tensors, numbers, strings, lists, tuples and dicts
(the model, optimizer and scheduler state dicts, the progress, every process's RNG states, the options),
so it loads with ``torch.load(weights_only=True)``: a file that would run code when unpickled is refused.

Three files in the output directory:

* ``last.pt``: the latest state; ``previous.pt``: the one before it;
* ``checksums.json``: the sha256 (and step) of the states this run wrote. A state file is used only when
  its sha256 is listed there: a file damaged on disk, cut short, emptied or replaced is never loaded.

Saving is ordered so that whenever the process is killed, every state file in place is listed: (1)
``previous.pt`` becomes a hard link to the current ``last.pt`` (written atomically; the list vouches for
it under ``last.pt``'s checksum); (2) the new state is written to a temporary file and its checksum
added to ``checksums.json`` (rewritten atomically); (3) the temporary file is renamed to ``last.pt``.

Loading tries ``last.pt``, then ``previous.pt`` with a warning naming the bad file and why; when
neither is usable it stops with one line saying so (never a traceback, never silently from scratch).
The checksum guards against damage, not against someone who can write the directory: loading as data
is what keeps such a person from running code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import parse_dtype
from ..errors import ViltInputError
from ..files import atomic_directory, atomic_write
from ..modeling import ViltPreTrainedModel
from ..processing import ViltProcessor
from .distributed import Dist, from_main
from .settings import TRAINING_DATA_FILE

log = logging.getLogger(__name__)

LAST, PREVIOUS, CHECKSUMS = "last.pt", "previous.pt", "checksums.json"
FORMAT = "vilt-training-state-1"
STATE_KEYS = ("format", "model", "optimizer", "scheduler", "progress", "rng", "args")


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint (as a plain dict)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    best: float = -math.inf
    elapsed: float = 0.0  # seconds of training so far, over all resumed runs
    skipped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best": self.best,
            "elapsed": self.elapsed,
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Progress:
        return cls(**{**values, "skipped": Counter(values["skipped"])})


# ----------------------------------------------------------------------------- RNG states as plain data


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, numpy, torch, CUDA) as tensors, numbers and tuples."""
    numpy_state = np.random.get_state()
    if isinstance(numpy_state, dict):  # np.random.set_bit_generator swapped out the legacy MT19937
        raise RuntimeError(
            f"numpy's global generator is a {numpy_state['bit_generator']}, but training checkpoints keep "
            "the legacy MT19937 state: leave np.random's generator as it is (use np.random.default_rng())"
        )
    kind, keys, position, has_gauss, cached_gaussian = numpy_state
    state = {
        "python": random.getstate(),  # (version, a tuple of 625 ints, None or a float)
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # (624,) the MT19937 key
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- the training state


class Unusable(Exception):
    """A state file that must not be resumed from; the message says why."""


def _is_training_state(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and state.get("format") == FORMAT
        and not set(STATE_KEYS) - set(state)
        and isinstance(state["progress"], dict)
        and isinstance(state["progress"].get("step"), int)
        and isinstance(state["rng"], list)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hard_link(source: Path, destination: str) -> None:
    """``destination`` becomes the same file as ``source`` (a copy where hard links are not supported)."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


class Checkpoints:
    """``last.pt`` and ``previous.pt`` of one output directory, and ``checksums.json`` that vouches for
    them (see the module docstring).

    Args:
        directory: the run's output directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.known: dict[str, dict[str, Any]] = {}  # file name -> {"sha256", "step"} of a good file

    def path(self, name: str) -> Path:
        return self.directory / name

    def save(self, state: dict[str, Any], step: int) -> None:
        """Write ``state`` as ``last.pt``, keeping the current ``last.pt`` as ``previous.pt``."""
        last = self.path(LAST)
        if LAST in self.known and last.exists():
            atomic_write(self.path(PREVIOUS), lambda tmp: _hard_link(last, tmp))
            self.known[PREVIOUS] = self.known[LAST]
        atomic_write(last, lambda tmp: self._write_listed(state, step, Path(tmp)))

    def _write_listed(self, state: dict[str, Any], step: int, tmp: Path) -> None:
        """Write ``state`` to ``tmp`` and list its checksum, before ``tmp`` is renamed to ``last.pt``."""
        torch.save(state, tmp)
        self.known[LAST] = {"sha256": _sha256(tmp), "step": step}
        listing = {"format": FORMAT, "files": list(self.known.values())}
        atomic_write(
            self.path(CHECKSUMS), lambda out: Path(out).write_text(json.dumps(listing, indent=2) + "\n")
        )

    def load_newest(self, map_location: torch.device) -> tuple[str, dict[str, Any]] | None:
        """The newest usable state, as (file name, state); None when the directory holds none.

        Warns, naming the file, when ``last.pt`` is unusable and ``previous.pt`` is used.

        Raises:
            ViltInputError: state files are there but none is usable.
        """
        if not any(self.path(name).exists() for name in (LAST, PREVIOUS)):
            return None
        trusted = self._trusted()
        problems = []
        for name in (LAST, PREVIOUS):
            try:
                state = self.read(name, map_location, trusted)
            except Unusable as err:
                problems.append(f"{self.path(name)} {err}")
                continue
            if problems:
                log.warning(
                    "%s; resuming from %s (step %d)",
                    "; ".join(problems),
                    self.path(name),
                    state["progress"]["step"],
                )
            return name, state
        raise ViltInputError(
            f"no usable training checkpoint in {self.directory}: {'; '.join(problems)}. Remove "
            f"{self.path(LAST)} and {self.path(PREVIOUS)} to start over, or pass another --output-dir"
        )

    def read(
        self, name: str, map_location: torch.device, trusted: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """The state in file ``name`` once it passes its checksum and loads as data.

        Raises:
            Unusable: the file is missing, empty, not listed in ``checksums.json``, or not a state.
        """
        path = self.path(name)
        trusted = self._trusted() if trusted is None else trusted
        if not path.exists():
            raise Unusable("does not exist")
        if path.stat().st_size == 0:
            raise Unusable("is empty")
        digest = _sha256(path)
        if digest not in trusted:
            if not trusted:
                raise Unusable(f"has no checksum ({self.path(CHECKSUMS)} is missing or unreadable)")
            raise Unusable(f"fails its checksum in {CHECKSUMS} (damaged, cut short or replaced)")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            raise Unusable(
                "holds more than data (tensors, numbers, strings, lists, dicts): it could run code"
            ) from None
        except Exception as err:  # any other failure to read it means: do not resume from it
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise Unusable(f"cannot be read ({first})") from None
        if not _is_training_state(state):
            raise Unusable(f"is not a vilt training state ({FORMAT})")
        self.known[name] = {"sha256": digest, "step": state["progress"]["step"]}
        return state

    def _trusted(self) -> dict[str, int]:
        """sha256 -> step of the states ``checksums.json`` vouches for (empty when it is unreadable)."""
        try:
            listing = json.loads(self.path(CHECKSUMS).read_text())
            return {entry["sha256"]: entry["step"] for entry in listing["files"]}
        except (OSError, ValueError, KeyError, TypeError):
            return {}


def load_training_state(checkpoints: Checkpoints, env: Dist) -> tuple[str, dict[str, Any]] | None:
    """The state to resume from, the same on every process: the main process picks the file.

    Returns:
        (the file's path, the state), or None for a fresh start.
    """
    cpu = torch.device("cpu")  # read before the model exists; restore() moves the tensors
    choice = checkpoints.load_newest(cpu) if env.main else None
    name = from_main(choice[0] if choice else None, env)
    if name is None:
        return None
    if env.main:
        return str(checkpoints.path(name)), choice[1]  # type: ignore[index]
    try:
        return str(checkpoints.path(name)), checkpoints.read(name, cpu)
    except Unusable as err:
        raise ViltInputError(f"process {env.rank}: {checkpoints.path(name)} {err}") from None


def training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    rng: list[dict[str, Any]],
    args: dict[str, Any],
) -> dict[str, Any]:
    """The resumable state, in the plain types ``torch.load(weights_only=True)`` reads back."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress.to_dict(),
        "rng": rng,  # one entry per process, in rank order
        "args": args,
    }


def restore(
    state: dict[str, Any],
    path: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    env: Dist,
) -> Progress:
    """Put ``state`` (read from ``path``) back into the model, optimizer, scheduler and this process's RNG.

    Raises:
        ViltInputError: the state was written by another number of processes or for another model.
    """
    if len(state["rng"]) != env.world:
        raise ViltInputError(
            f"{path} was written by {len(state['rng'])} process(es), this run has {env.world}: resume "
            f"with {len(state['rng'])} (torchrun --nproc_per_node), or pass another --output-dir"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ViltInputError(
            f"{path} holds another model than these options build ({first}); resume with the options "
            "it was written with, or pass another --output-dir"
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"][env.rank])
    return Progress.from_dict(state["progress"])


# ----------------------------------------------------------------------------- the best model


def save_model_dir(
    model: ViltPreTrainedModel,
    processor: ViltProcessor,
    directory: Path,
    metrics: dict[str, float],
    dtype: str,
    training_data: dict[str, Any],
) -> None:
    """Write a loadable model directory, all or nothing: weights in ``dtype``, config, processor,
    ``metrics.json`` and ``training_data.json`` (the data and validation split it was selected on)."""
    target = parse_dtype(dtype)
    with atomic_directory(directory, keep_old=lambda name: False) as staging:
        (copy.deepcopy(model).to(target) if target != torch.float32 else model).save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (staging / TRAINING_DATA_FILE).write_text(json.dumps(training_data, indent=2) + "\n")
