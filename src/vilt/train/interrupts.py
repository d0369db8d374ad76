"""Ctrl-C (SIGINT) and SIGTERM during training: a request to stop at the next safe point.

While :class:`StopSignals` is open, the first SIGINT or SIGTERM only records the request. After the
current optimizer step (and its validation and checkpoint, when due) the loop asks every process
whether one of them got a signal, so all stop after the same step; it saves a checkpoint and raises
:class:`TrainingInterrupted`, and ``vilt train`` prints the command that resumes.

A further signal more than :data:`FORCE_AFTER_S` after the first stops at once, without saving.
Repeats within that second count as the same request: under ``torchrun`` a Ctrl-C reaches each worker
twice, from the terminal and forwarded by torchrun.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

FORCE_AFTER_S = 1.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NOTICE = (
    "\nvilt train: {} received: stopping after this step, once its checkpoint is saved "
    "(Ctrl-C again to stop at once, without saving)\n"
)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a resumable checkpoint.

    Attributes:
        signal_number: the signal (SIGINT or SIGTERM).
        step: the last optimizer step done, which the checkpoint holds.
        checkpoint: the checkpoint's path.
    """

    def __init__(self, signal_number: int, step: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signal_number).name} after step {step}")
        self.signal_number, self.step, self.checkpoint = signal_number, step, checkpoint


class StopSignals:
    """Catches SIGINT and SIGTERM while open (in the main thread; elsewhere signals keep their handlers).

    Args:
        announce: say on stderr, when the first signal arrives, that training stops after this step.

    Attributes:
        received: the first signal caught, None while there is none.
    """

    def __init__(self, announce: bool) -> None:
        self.announce = announce
        self.received: int | None = None
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received, self._at = signum, time.monotonic()
            if self.announce:  # os.write: print and logging must not run inside a signal handler
                os.write(2, _NOTICE.format(signal.Signals(signum).name).encode())
        elif time.monotonic() - self._at > FORCE_AFTER_S:
            raise KeyboardInterrupt


def ignore_interrupts(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: workers leave Ctrl-C to the training process, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
