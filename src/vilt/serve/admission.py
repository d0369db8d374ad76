"""Admission by memory: a byte budget for what requests hold, and a small pool that decodes images.

A request is admitted by what it will hold, not counted: its body is charged to the
:class:`MemoryBudget` before it is read, and each image the bytes its decoding will take before it is
decoded (the header says how many). Past the budget the server answers 503 with Retry-After; nothing is
read or decoded for it. The :class:`DecodePool` decodes on a fixed number of cores, shared in slices,
least-served job first, with an express slot where a new image starts at once, so ordinary requests do
not wait behind a burst of huge or hostile images; large decodes take turns, so that their memory is
held one at a time, and each hands it back to the system when it ends; a decode whose request stopped
waiting is stopped.
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
SLICE_S = 0.02  # a decode job that others wait for gives its core away after this much processor time
LARGE_DECODE_BYTES = 16 * 2**20  # a decode holding this much takes turns, and is followed by a trim
TURN_S = 1.0  # the most processor time of a large decode's turn: more than any ordinary image takes
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

    Before it decodes, a job tells it, through :meth:`hold`, how many bytes its decoding will hold: a
    large decode then waits for its turn (see :class:`DecodePool`).
    """

    def __init__(self, pool: DecodePool, ticket: _Ticket) -> None:
        self._pool = pool
        self._ticket = ticket

    def __call__(self) -> None:
        self._pool._step(self._ticket)

    def hold(self, nbytes: int) -> None:
        """Say that the decoding about to start holds ``nbytes``; a large decode waits for its turn here
        (raising :class:`DecodeStopped` if the job is stopped meanwhile)."""
        self._pool._hold(self._ticket, nbytes)


class _Ticket:
    """One job's place in the pool: the processor time it has had, whether it is new (has not had a
    slice yet), large (holds a large decode), has a turn, runs (on a core or the express slot), or must
    stop."""

    __slots__ = (
        "priority",
        "order",
        "service",
        "slice_start",
        "new",
        "large",
        "turn",
        "running",
        "express",
        "stopped",
        "held",
    )

    def __init__(self, priority: int, order: int) -> None:
        self.priority = priority
        self.order = order
        self.service = 0.0  # seconds on a core so far
        self.slice_start = 0.0
        self.new = True  # until its first slice ends, or it holds a large decode
        self.large = False
        self.turn = False  # one of the large decodes' turns
        self.running = False
        self.express = False  # running on the express slot, not on one of the cores
        self.stopped = False
        self.held = 0

    def key(self) -> tuple[bool, float, int, int]:
        return (not self.new, self.service, self.priority, self.order)


class DecodePool:
    """Decode jobs sharing ``cores`` cores fairly, each stoppable at every step.

    Each job runs on a thread of its own (at most ``max_jobs`` at once; more wait, holding nothing), but
    only ``cores`` of them run at a time, plus one on the *express slot*, which only a new job may take,
    for its first slice. A job calls its :class:`DecodeStep` between pieces of work (every read of the
    image file, a scan of a JPEG at most; between decoding, converting and shrinking), and only there
    can it give its core away; some pieces are long (Pillow inflates all of a 64 KiB read of a PNG at
    once, 64 MiB of pixels for a blank 4096 x 4096 image, then converts and resizes the whole image in
    one call each). So:

    - **New jobs start at once.** A new job (no slice used yet) takes a free core or the express slot, so
      it does not wait for a long piece of the work of the jobs already decoding, and an ordinary image
      finishes in its first slice. A job leaves the express slot for the cores when its first slice ends,
      or when it says it will hold a large decode (:meth:`DecodeStep.hold`), before its long pieces begin:
      the job on the express slot is always a small one.
    - **Least service first.** After ``slice_s`` on a core, a job that others wait for gives its core
      to the one that has had the least processor time so far (new jobs first, then the smallest
      ``priority``, then the first come, among equals): so small and medium images run in the slices of
      large or hostile ones, and those share what is left evenly.
    - **Large decodes take turns.** A decode that holds at least ``large_bytes`` waits for a turn, one
      per core, before it decodes: large decodes of the same size that shared the cores would all finish
      at the end, holding their memory all the while; in turns, they finish one after another and the
      memory of one is held at a time. A turn lasts until the decode ends or has had ``turn_s`` of
      processor time (as no ordinary image needs): a hostile image then goes on sharing the cores with the
      next large decode, so that each one ahead of a large image delays it by a turn at most.

    A job whose caller stops waiting (the request's deadline passes, the client goes away) is stopped at
    its next step, running or waiting for a core or a turn (:class:`DecodeStopped`), so it keeps no core
    busy past its request.

    Args:
        cores: the most jobs running at once (besides the express slot), and the large decodes' turns.
        release_memory: called when a large decode ends, to hand the memory it freed back to the system.
        max_jobs: the most jobs started at once (each holds a thread while it waits for a core).
        slice_s: the processor time after which a job gives its core to one that waits.
        turn_s: the processor time after which a large decode gives its turn to the next.
        large_bytes: the bytes held from which a decode is large.
        clock: the clock that measures processor time, read in the job's own thread (the thread's
            processor time by default: a job that the system keeps off its core uses none).
        on_stopped: called (from a worker thread) for every job stopped or skipped.
    """

    def __init__(
        self,
        cores: int,
        release_memory: Callable[[], None],
        max_jobs: int = MAX_DECODE_JOBS,
        slice_s: float = SLICE_S,
        turn_s: float = TURN_S,
        large_bytes: int = LARGE_DECODE_BYTES,
        clock: Callable[[], float] = time.thread_time,
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self.release_memory = release_memory
        self.on_stopped = on_stopped
        self.slice_s = slice_s
        self.turn_s = turn_s
        self.large_bytes = large_bytes
        self.clock = clock
        self.stopped_jobs = 0  # jobs that ended by DecodeStopped (for tests and logs)
        self._free = cores
        self._express_free = True
        self._turns = cores
        self._waiting: list[tuple[tuple[bool, float, int, int], _Ticket]] = []  # new first, least service
        self._waiting_turn: list[tuple[int, _Ticket]] = []  # a heap of large decodes, first come first
        self._active = 0
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
        """Wait for a core or, for a new job, the express slot; raise DecodeStopped if stopped meanwhile."""
        with self._lock:
            heapq.heappush(self._waiting, (ticket.key(), ticket))
            self._grant()
            self._wait_for(lambda: ticket.running, ticket)
        ticket.slice_start = self.clock()

    def _wait_for(self, granted: Callable[[], bool], ticket: _Ticket) -> None:
        """Wait (under the lock) until ``granted()``; raise DecodeStopped if the job is stopped first."""
        while not granted() and not ticket.stopped:
            self._lock.wait()
        if not granted():
            raise DecodeStopped

    def _release(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket.running:
                ticket.running = False
                if ticket.express:
                    ticket.express, self._express_free = False, True
                else:
                    self._free += 1
                self._grant()

    def _grant(self) -> None:
        """Give the free cores to the waiting jobs with the least service, and the express slot to a new
        one (under the lock). New jobs come first in the heap: when its top is not new, none is."""
        granted = False
        while self._waiting:
            _, ticket = self._waiting[0]
            if ticket.stopped:
                heapq.heappop(self._waiting)
                continue
            if self._free:
                self._free -= 1
            elif self._express_free and ticket.new:
                ticket.express, self._express_free = True, False
            else:
                break
            heapq.heappop(self._waiting)
            ticket.running = granted = True
        if granted:
            self._lock.notify_all()

    def _step(self, ticket: _Ticket) -> None:
        if ticket.stopped:
            raise DecodeStopped
        used = self.clock() - ticket.slice_start
        if used < self.slice_s:
            return
        ticket.service += used
        ticket.new = False
        with self._lock:
            if ticket.turn and ticket.service >= self.turn_s:
                self._end_turn(ticket)
            others_wait = any(not waiting.stopped for _, waiting in self._waiting)
        if others_wait or ticket.express:
            self._release(ticket)
            self._acquire(ticket)
        else:
            ticket.slice_start = self.clock()

    def _hold(self, ticket: _Ticket, nbytes: int) -> None:
        """The job will hold ``nbytes``: a large decode leaves the express slot and waits for a turn."""
        ticket.held = max(ticket.held, nbytes)
        if ticket.large or nbytes < self.large_bytes:
            return
        ticket.service += self.clock() - ticket.slice_start
        ticket.large, ticket.new = True, False
        self._release(ticket)
        with self._lock:
            heapq.heappush(self._waiting_turn, (ticket.order, ticket))
            self._grant_turns()
            self._wait_for(lambda: ticket.turn, ticket)
        self._acquire(ticket)

    def _grant_turns(self) -> None:
        """Give the free turns to the large decodes that wait, first come first (under the lock)."""
        granted = False
        while self._turns and self._waiting_turn:
            _, ticket = heapq.heappop(self._waiting_turn)
            if ticket.stopped:
                continue
            ticket.turn = granted = True
            self._turns -= 1
        if granted:
            self._lock.notify_all()

    def _end_turn(self, ticket: _Ticket) -> None:
        """Pass the job's turn, if it has one, to the next large decode that waits (under the lock)."""
        if ticket.turn:
            ticket.turn = False
            self._turns += 1
            self._grant_turns()

    def _stop(self, ticket: _Ticket) -> None:
        """The caller stopped waiting: stop the job at its next step (called on the event loop)."""
        with self._lock:
            ticket.stopped = True
            self._lock.notify_all()

    def _after(self, ticket: _Ticket) -> None:
        if ticket.held >= self.large_bytes:  # before its turn passes on: the next one allocates anew
            self.release_memory()
        with self._lock:
            self._end_turn(ticket)
            self._active -= 1
