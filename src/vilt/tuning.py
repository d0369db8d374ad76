"""Speed choices of the fast path, made on the machine it runs on by short one-time probes.

Some kernels' speed depends on the CPU more than on anything the code can know in advance: oneDNN's
blocked weight layouts, PyTorch's CPU flash attention at lengths that are not multiples of 32, matrix
products over thousands of rows; even whether the fast path beats the plain layers at all. The fast path
makes each such choice (see :mod:`vilt.layers`) the first time it needs it, by timing the plain way
against the candidate way, and keeps the answer for the rest of the process under a key naming the
choice, dtype and shapes (:func:`decisions` lists them). A choice only changes how the same sums are
computed: outputs change by rounding at most, never otherwise.

A probe times the two ways in alternation, the order rotating every round, after one warm-up call of
each, and compares medians (:func:`median_seconds`). The candidate is chosen only when it is faster by
more than ``MARGIN`` (:func:`faster`): a close call keeps the plain way, so the noise of a shared machine
seldom flips a choice that matters. A probe stops repeating once its budget (``PROBE_BUDGET_S`` unless it
sets another) has passed, after two rounds at least (or the number it asks for). The decision is a pure
function of the measured times: tests replace :data:`timer` or :func:`median_seconds` to script them.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Hashable

# A candidate must beat the plain way by more than this fraction of the plain way's time.
MARGIN = 0.03
PROBE_REPETITIONS = 5
# Seconds of repetitions (after the warm-up) after which a probe stops, once it has two rounds.
PROBE_BUDGET_S = 0.1

# The clock the probes read (seconds); tests replace it.
timer: Callable[[], float] = time.perf_counter

_decisions: dict[Hashable, bool] = {}
_lock = threading.RLock()  # a probe may need another decision (the layout of a weight it packs)


def median_seconds(
    contestants: dict[str, Callable[[], object]],
    repetitions: int = PROBE_REPETITIONS,
    budget_s: float = PROBE_BUDGET_S,
    least: int = 2,
    statistic: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Median seconds per call of each contestant: one warm-up call each, then up to ``repetitions``
    alternating rounds (the order rotates), stopping early once ``budget_s`` has passed after ``least``
    rounds. ``statistic=min`` gives each contestant's fastest round instead: other work on the machine
    only ever adds time, so the fastest rounds compare the two ways even when bursts of it hit several
    rounds of one."""
    names = list(contestants)
    for call in contestants.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    start = timer()
    for round_index in range(repetitions):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            began = timer()
            contestants[name]()
            seconds[name].append(timer() - began)
        if round_index + 1 >= least and timer() - start > budget_s:
            break
    return {name: statistic(values) for name, values in seconds.items()}


def faster(plain_s: float, candidate_s: float) -> bool:
    """Whether the candidate's time beats the plain way's by more than ``MARGIN``."""
    return candidate_s < plain_s * (1.0 - MARGIN)


def decide(key: Hashable, probe: Callable[[], dict[str, float]]) -> bool:
    """Whether the candidate way is taken for ``key``: decided once per process from ``probe()``, which
    returns the median seconds of ``"plain"`` and ``"candidate"`` (see :func:`median_seconds`)."""
    with _lock:
        if key not in _decisions:
            times = probe()
            _decisions[key] = faster(times["plain"], times["candidate"])
        return _decisions[key]


def decisions() -> dict[Hashable, bool]:
    """Every choice decided so far in this process: key -> whether the candidate way was taken."""
    with _lock:
        return dict(_decisions)


def forget() -> None:
    """Drop every decision: the next use of each choice probes again."""
    with _lock:
        _decisions.clear()
