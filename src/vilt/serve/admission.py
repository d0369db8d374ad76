"""Admission by memory: a byte budget for what requests hold, and a small pool that decodes images.

A request is admitted by what it will hold, not counted: its body is charged to the
:class:`MemoryBudget` before it is read, and each image the bytes its decoding will take before it is
decoded (the header says how many). Past the budget the server answers 503 with Retry-After; nothing is
read or decoded for it. The :class:`DecodePool` decodes on a fixed number of cores, shared in slices,
least-served job first, so ordinary requests do not wait behind a burst of huge or hostile images; it
stops a decode whose request stopped waiting, and returns freed memory to the system when it falls idle
after large decodes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .batching import settle

T = TypeVar("T")

SMALL_SHARE = 8  # 1/8 of the budget is kept for charges of at most that size
TRIM_AFTER_BYTES = 16 * 2**20  # decodes at least this large are followed by release_memory when idle
SLICE_S = 0.02  # a decode job that others wait for gives its core away after this much processor time
MAX_DECODE_JOBS = 32  # decode jobs started at once (the memory budget bounds the large ones first)


class MemoryBudget:
    """Bytes that requests may hold at once (thread-safe).

    A charge larger than ``limit // 8`` may fill only the budget minus that eighth, so huge images
    always leave room for ordinary requests.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.small = limit // SMALL_SHARE
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def ceiling(self, nbytes: int) -> int:
        """The most the budget may hold after a charge of ``nbytes``."""
        return self.limit if nbytes <= self.small else self.limit - self.small

    def fits_ever(self, nbytes: int) -> bool:
        """Whether a charge of ``nbytes`` can be admitted at all (on an idle server)."""
        return nbytes <= self.ceiling(nbytes)

    def try_take(self, nbytes: int) -> bool:
        """Charge ``nbytes`` if the budget allows it now; False (nothing charged) if not."""
        with self._lock:
            if self._held + nbytes > self.ceiling(nbytes):
                return False
            self._held += nbytes
            return True

    def charge(self, nbytes: int) -> None:
        """Charge ``nbytes`` that are held already, whatever the budget says."""
        with self._lock:
            self._held += nbytes

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes


class DecodeStopped(Exception):
    """Raised inside a decode job at its next step once nobody waits for it (its request's deadline
    passed, the client went away, or the server stops)."""


class DecodeStep:
    """What a decode job calls between small pieces of its work: it raises :class:`DecodeStopped` once
    the job's caller stopped waiting, and hands the cores to other jobs when this one has had its slice.

    A job also tells it, through :meth:`hold`, how many bytes its decoding holds (for trimming freed
    memory when the pool falls idle).
    """

    def __init__(self, pool: DecodePool, ticket: _Ticket) -> None:
        self._pool = pool
        self._ticket = ticket

    def __call__(self) -> None:
        self._pool._step(self._ticket)

    def hold(self, nbytes: int) -> None:
        self._ticket.held = max(self._ticket.held, nbytes)


class _Ticket:
    """One job's place in the pool: the processor time it has had, and whether it runs or must stop."""

    __slots__ = ("priority", "order", "service", "slice_start", "running", "stopped", "held")

    def __init__(self, priority: int, order: int) -> None:
        self.priority = priority
        self.order = order
        self.service = 0.0  # seconds on a core so far
        self.slice_start = 0.0
        self.running = False
        self.stopped = False
        self.held = 0

    def key(self) -> tuple[float, int, int]:
        return (self.service, self.priority, self.order)


class DecodePool:
    """Decode jobs sharing ``cores`` cores fairly, each stoppable at every step.

    Each job runs on a thread of its own (at most ``max_jobs`` at once; more wait, holding nothing), but
    only ``cores`` of them run at a time. A job calls its :class:`DecodeStep` between small pieces of
    work (every read of the image file, a scan of a JPEG at most; between decoding, converting and
    shrinking). After ``slice_s`` on a core, a job that others wait for gives its core to the one that
    has had the least processor time so far (the smallest ``priority``, then the first come, among
    equals): so a small image, new and with no time used, runs next and finishes in its first slice,
    however many large or hostile images are being decoded; and those share what is left evenly.

    A job whose caller stops waiting (the request's deadline passes, the client goes away) is stopped at
    its next step, running or not (:class:`DecodeStopped`), so it keeps no core busy past its request.

    Args:
        cores: the most jobs running at once.
        release_memory: called when the pool falls idle after a job that held at least
            :data:`TRIM_AFTER_BYTES` (see :meth:`DecodeStep.hold`).
        max_jobs: the most jobs started at once (each holds a thread while it waits for a core).
        slice_s: the processor time after which a job gives its core to one that waits.
        clock: the clock that measures processor slices.
        on_stopped: called (from a worker thread) for every job stopped or skipped.
    """

    def __init__(
        self,
        cores: int,
        release_memory: Callable[[], None],
        max_jobs: int = MAX_DECODE_JOBS,
        slice_s: float = SLICE_S,
        clock: Callable[[], float] = time.perf_counter,
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self.release_memory = release_memory
        self.on_stopped = on_stopped
        self.slice_s = slice_s
        self.clock = clock
        self.stopped_jobs = 0  # jobs that ended by DecodeStopped (for tests and logs)
        self._free = cores
        self._waiting: list[tuple[tuple[float, int, int], _Ticket]] = []  # a heap, least service first
        self._active = 0
        self._freed_large = False
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._threads = ThreadPoolExecutor(max_workers=max_jobs, thread_name_prefix="vilt-decode")

    @property
    def active(self) -> int:
        """Jobs started and not finished."""
        return self._active

    async def run(self, job: Callable[[DecodeStep], T], priority: int = 0) -> T:
        """Run ``job(step)`` in the pool and return its result (or raise its error).

        If the caller stops waiting (it is cancelled), the job is stopped at its next step, or skipped
        if it has not started.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        ticket = _Ticket(priority, next(self._order))
        future.add_done_callback(lambda done: self._stop(ticket) if done.cancelled() else None)
        self._threads.submit(self._work, ticket, job, loop, future)
        return await future

    def shutdown(self) -> None:
        """Wait for the jobs started (stopped ones end at their next step)."""
        self._threads.shutdown(wait=True)

    # -- the worker threads ------------------------------------------------------------------------
    def _work(
        self, ticket: _Ticket, job: Callable[[DecodeStep], T], loop: asyncio.AbstractEventLoop, future: Any
    ) -> None:
        with self._lock:
            self._active += 1
        try:
            self._acquire(ticket)
            try:
                outcome: tuple[Any, BaseException | None] = (job(DecodeStep(self, ticket)), None)
            except DecodeStopped:
                raise
            except Exception as err:  # handed to the awaiting request, which answers or logs it
                outcome = (None, err)
            finally:
                self._release(ticket)
            try:
                loop.call_soon_threadsafe(settle, future, *outcome)
            except RuntimeError:  # the loop closed meanwhile: the server stopped, nobody waits for this
                pass
        except DecodeStopped:
            with self._lock:
                self.stopped_jobs += 1
            self.on_stopped()
        finally:
            self._after(ticket)

    def _acquire(self, ticket: _Ticket) -> None:
        """Wait for a core (least service first); raise DecodeStopped if stopped meanwhile."""
        with self._lock:
            heapq.heappush(self._waiting, (ticket.key(), ticket))
            self._grant()
            while not ticket.running and not ticket.stopped:
                self._lock.wait()
            if not ticket.running:
                raise DecodeStopped
        ticket.slice_start = self.clock()

    def _release(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket.running:
                ticket.running = False
                self._free += 1
                self._grant()

    def _grant(self) -> None:
        """Give free cores to the waiting jobs with the least service (under the lock)."""
        granted = False
        while self._free and self._waiting:
            _, ticket = heapq.heappop(self._waiting)
            if ticket.stopped:
                continue
            ticket.running = True
            self._free -= 1
            granted = True
        if granted:
            self._lock.notify_all()

    def _step(self, ticket: _Ticket) -> None:
        if ticket.stopped:
            raise DecodeStopped
        used = self.clock() - ticket.slice_start
        if used < self.slice_s:
            return
        ticket.service += used
        with self._lock:
            others_wait = any(not waiting.stopped for _, waiting in self._waiting)
        if others_wait:
            self._release(ticket)
            self._acquire(ticket)
        else:
            ticket.slice_start = self.clock()

    def _stop(self, ticket: _Ticket) -> None:
        """The caller stopped waiting: stop the job at its next step (called on the event loop)."""
        with self._lock:
            ticket.stopped = True
            self._lock.notify_all()

    def _after(self, ticket: _Ticket) -> None:
        with self._lock:
            self._active -= 1
            self._freed_large |= ticket.held >= TRIM_AFTER_BYTES
            trim = self._freed_large and self._active == 0
            self._freed_large &= not trim
        if trim:
            self.release_memory()
