"""Dynamic batching: requests that arrive together share one forward pass.

A :class:`DynamicBatcher` owns a bounded queue and one asyncio task. The task takes the first waiting
request, gathers more until it holds ``max_batch_size`` or ``max_wait_ms`` has passed since the first
arrived, and runs the whole batch in the inference thread. While a batch runs, new requests queue up,
so under load every forward pass is full and the wait costs nothing; a lone request waits at most
``max_wait_ms``.

Requests are bounded twice: a full queue refuses new work at once (:class:`QueueFullError`, the server
answers 503 with Retry-After) and each request waits at most its timeout (:class:`asyncio.TimeoutError`, 504).
A request that timed out is dropped from its batch if the batch has not started yet.

The batchers of all tasks share one :class:`FairWorker`, a thread that runs one forward pass at a time
and gives each task an equal share of its time: a task whose requests are slow (an explanation is one
request per pass, with its attention) gets as much of the worker as one whose batches of 32 are quick.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")


class QueueFullError(Exception):
    """The batcher's queue holds ``max_queue`` requests already; retry later."""


@dataclass
class _Pending(Generic[ItemT]):
    item: ItemT
    future: asyncio.Future[Any]


class DynamicBatcher(Generic[ItemT, ResultT]):
    """Group concurrent requests into batches for ``run_batch``.

    Args:
        name: the task name, used in logs and as the metrics label.
        run_batch: a blocking function mapping a list of items to a list of results, one each, in
            order. It runs in ``executor``. When it raises on a batch of several items, each item is
            retried alone, so one bad input fails only its own request.
        executor: where ``run_batch`` runs: a :meth:`FairWorker.lane`, so that the batchers of all tasks
            share one thread (one forward pass at a time) fairly.
        max_batch_size: the most items in one call of ``run_batch``.
        max_wait_ms: how long the first request of a batch waits for company.
        max_queue: the most requests waiting; more are refused with :class:`QueueFullError`.
        on_batch: called with the size of every batch run (for metrics).
        on_queue_depth: called with the queue depth whenever it changes (for metrics).
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[ItemT]], Sequence[ResultT]],
        executor: Executor,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
        on_queue_depth: Callable[[int], None] = lambda depth: None,
    ) -> None:
        self.name = name
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self.on_queue_depth = on_queue_depth
        self._queue: asyncio.Queue[_Pending[ItemT]] = asyncio.Queue(maxsize=max_queue)
        self._worker: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._worker = asyncio.get_running_loop().create_task(self._serve(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop the batching task; requests still queued fail with :class:`QueueFullError`."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(QueueFullError("the server is shutting down"))
        self.on_queue_depth(0)

    @property
    def running(self) -> bool:
        """Whether the batching task is alive."""
        return self._worker is not None and not self._worker.done()

    @property
    def full(self) -> bool:
        """Whether a new request would be refused now."""
        return self._queue.full()

    # -- requests ------------------------------------------------------------------------------------
    async def submit(self, item: ItemT, timeout_s: float) -> ResultT:
        """Queue one item and wait for its result.

        Raises:
            QueueFullError: the queue is full (or the server is stopping).
            asyncio.TimeoutError: no result within ``timeout_s`` seconds.
            Exception: whatever ``run_batch`` raised for this item alone.
        """
        if not self.running:
            raise QueueFullError("the server is not accepting work (starting or shutting down)")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"the {self.name} queue is full ({self._queue.maxsize} waiting)") from None
        self.on_queue_depth(self._queue.qsize())
        return await asyncio.wait_for(future, timeout_s)  # cancels the future on timeout

    # -- the batching task ---------------------------------------------------------------------------
    async def _serve(self) -> None:
        while True:
            batch = await self._collect()
            batch = [pending for pending in batch if not pending.future.done()]  # drop timed-out ones
            if batch:
                await self._run(batch)

    async def _collect(self) -> list[_Pending[ItemT]]:
        """The next batch: the first waiting request plus those that arrive within max_wait_ms."""
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        self.on_queue_depth(self._queue.qsize())
        return batch

    async def _run(self, batch: list[_Pending[ItemT]]) -> None:
        """Run one batch and hand each request its result; isolate failures to their own item."""
        loop = asyncio.get_running_loop()
        self.on_batch(len(batch))
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name} returned {len(results)} results for {len(batch)} inputs")
        except Exception as err:
            if len(batch) == 1:
                settle(batch[0].future, error=err)
                return
            logger.warning("%s batch of %d failed (%s); retrying each item alone", self.name, len(batch), err)
            for pending in batch:
                await self._run([pending])
            return
        for pending, result in zip(batch, results):
            settle(pending.future, result=result)


def settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Resolve a request's future unless it is done already (timed out or cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ----------------------------------------------------------------------------- the shared worker


class FairWorker:
    """One thread that runs the batches of several tasks, one at a time, sharing its time fairly.

    Each task submits through its own :meth:`lane`. When batches of several tasks wait, the task that
    has used the least of the worker's time runs next; a task that was idle starts level with the one
    running (it cannot spend time saved while idle). So when every task is busy each gets an equal share
    of the time, whatever its batches cost: neither a flood of quick requests nor one of slow ones
    starves the other.

    Args:
        clock: measures the time each batch takes.
        name: the thread's name.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter, name: str = "vilt-inference") -> None:
        self.clock = clock
        self._used: dict[str, float] = {}  # each task's time on the worker (seconds, caught up when idle)
        self._virtual = 0.0  # the used time of the task that ran last, when it started
        self._waiting: dict[str, deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def lane(self, task: str) -> Executor:
        """The executor through which ``task`` submits its batches."""
        return _Lane(self, task)

    def submit(self, task: str, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the inference worker is stopped")
            waiting = self._waiting.setdefault(task, deque())
            if not waiting:  # busy again after an idle spell
                self._used[task] = max(self._used.get(task, 0.0), self._virtual)
            waiting.append((future, fn, args))
            self._lock.notify()
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Run the batches already submitted, then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if wait:
            self._thread.join()

    def _next(self) -> tuple[str, Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        with self._lock:
            while not any(self._waiting.values()):
                if self._closed:
                    return None
                self._lock.wait()
            task = min((t for t, waiting in self._waiting.items() if waiting), key=self._used.__getitem__)
            self._virtual = self._used[task]
            return (task, *self._waiting[task].popleft())

    def _work(self) -> None:
        while (job := self._next()) is not None:
            task, future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            start = self.clock()
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the batcher, which answers or logs it
                future.set_exception(err)
            finally:
                with self._lock:
                    self._used[task] += self.clock() - start


class _Lane(Executor):
    """One task's way into a :class:`FairWorker` (an executor for ``loop.run_in_executor``)."""

    def __init__(self, worker: FairWorker, task: str) -> None:
        self.worker = worker
        self.task = task

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        assert not kwargs, "a batch runner takes positional arguments"
        return self.worker.submit(self.task, fn, *args)
