"""Admission by memory: a byte budget for what requests hold, and a small pool that decodes images.

A request is admitted by what it will hold, not counted: its body is charged to the
:class:`MemoryBudget` before it is read, and each image the bytes its decoding will take before it is
decoded (the header says how many). Past the budget the server answers 503 with Retry-After; nothing is
read or decoded for it. The :class:`DecodePool` decodes on a fixed number of threads, smallest image
first, so ordinary requests do not wait behind a burst of huge ones, and returns freed memory to the
system when it falls idle after large decodes.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .batching import settle

T = TypeVar("T")

SMALL_SHARE = 8  # 1/8 of the budget is kept for charges of at most that size
TRIM_AFTER_BYTES = 16 * 2**20  # decodes at least this large are followed by release_memory when idle


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


class DecodePool:
    """``threads`` worker threads that run jobs in order of their cost, cheapest first.

    Args:
        threads: the number of worker threads.
        release_memory: called from a worker when the pool falls idle after a job whose cost was at
            least :data:`TRIM_AFTER_BYTES`.
    """

    def __init__(self, threads: int, release_memory: Callable[[], None]) -> None:
        self.release_memory = release_memory
        self._jobs: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._busy = 0
        self._freed_large = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"vilt-decode-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, cost: int, job: Callable[[], T], done: Callable[[], None]) -> T:
        """Run ``job`` on a worker, cheapest first, and return its result.

        ``done`` is called on the worker once the job has finished or been skipped (because the caller
        stopped waiting before it started), whatever happens to the caller.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((cost, next(self._order), (job, done, loop, future)))
        return await future

    def shutdown(self) -> None:
        """Stop the workers after the jobs already queued (each worker takes one stop marker)."""
        for _ in self._threads:
            self._jobs.put((2**63, next(self._order), None))
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            cost, _, item = self._jobs.get()
            if item is None:
                return
            job, done, loop, future = item
            with self._lock:
                self._busy += 1
            try:
                if not future.cancelled():
                    _resolve(loop, future, job)
            finally:
                done()
                self._after(cost)

    def _after(self, cost: int) -> None:
        with self._lock:
            self._busy -= 1
            self._freed_large |= cost >= TRIM_AFTER_BYTES
            idle = self._busy == 0 and self._jobs.empty()
            trim, self._freed_large = (self._freed_large, False) if idle else (False, self._freed_large)
        if trim:
            self.release_memory()


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], job: Callable[[], T]) -> None:
    """Run ``job`` and hand its result or error to ``future`` on its loop (unless it was cancelled)."""

    try:
        outcome: tuple[Any, BaseException | None] = (job(), None)
    except Exception as err:  # handed to the awaiting request, which answers or logs it
        outcome = (None, err)
    try:
        loop.call_soon_threadsafe(settle, future, *outcome)
    except RuntimeError:  # the loop closed meanwhile: the server stopped, nobody waits for this
        pass
