"""Dynamic micro-batching: requests that arrive close together run as one model call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from inferwatch.looptask import LoopTask

log = logging.getLogger("inferwatch.serve.batching")


class QueueFullError(Exception):
    """The batching queue is at capacity; the caller should shed the request."""


@dataclass(frozen=True)
class BatchResult:
    probabilities: np.ndarray
    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass
class _Pending:
    samples: np.ndarray
    enqueued: float
    future: asyncio.Future[BatchResult]
    tag: object


class MicroBatcher:
    """Collects samples for up to ``max_wait`` seconds or ``max_batch_size`` samples.

    A slow model runs in one worker thread, so the event loop keeps accepting requests while a
    batch computes. A model whose last batch took under ``inline_below`` seconds runs on the
    event loop instead: handing a batch to a thread and back costs tens of microseconds of CPU
    and GIL hand-offs, more than a small model's whole call (``bench/batching.py``). The first
    batch, and every batch after a slow one, goes to the thread. ``capacity`` bounds the
    samples waiting; beyond it ``submit`` raises :class:`QueueFullError` at once instead of
    letting latency grow without bound. ``on_batch`` is called with each batch's inputs,
    outputs and the ``tag`` each row was submitted with, once the batch's callers have their
    results (rows of callers that went away during the call included); an error in it is
    logged, and batching goes on.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_wait: float = 0.002,
        capacity: int = 1024,
        on_batch: Callable[[np.ndarray, np.ndarray, list[object]], None] | None = None,
        queue_delay: Callable[[], float] | None = None,
        compute_delay: Callable[[], float] | None = None,
        inline_below: float = 0.0,
        on_depth: Callable[[int], None] | None = None,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1 or capacity < 1 or max_wait < 0:
            raise ValueError("max_batch_size and capacity must be >= 1, max_wait >= 0")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.capacity = capacity
        self._on_batch = on_batch
        self._queue_delay = queue_delay  # fault injection: holds batches in the queue
        self._compute_delay = compute_delay  # fault injection: a slower model call
        self.inline_below = inline_below
        self._last_compute = float("inf")  # unknown until the first batch: the thread
        self.on_depth = on_depth  # called with the depth after every change, when set
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._waiting = 0  # samples queued, not yet taken into a batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._task = LoopTask(self._run)
        self._carry: _Pending | None = None

    def depth(self) -> int:
        """Samples queued and not yet taken into a batch."""
        return self._waiting

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        self._executor.shutdown(wait=True)

    async def submit(self, samples: np.ndarray, tag: object = None) -> BatchResult:
        """The model's output for ``samples``; ``tag`` is handed to ``on_batch`` with each
        of their rows."""
        n = len(samples)
        if n == 0:
            raise ValueError("no samples to submit")
        if self._waiting + n > self.capacity:
            raise QueueFullError(f"{self._waiting} samples queued, capacity {self.capacity}")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._waiting += n
        if self.on_depth is not None:
            self.on_depth(self._waiting)
        self._queue.put_nowait(_Pending(samples, time.perf_counter(), future, tag))
        return await future

    async def _collect(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.samples)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(item.samples) > self.max_batch_size:
                self._carry = item  # would overflow: it opens the next batch
                break
            batch.append(item)
            size += len(item.samples)
        return batch

    def _timed_predict(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """The model's output and the wall time of the call: not CPU time, since a GPU model
        spends its call waiting for the device, which must not happen on the event loop."""
        start = time.perf_counter()
        return self._predict(batch), time.perf_counter() - start

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.done()]  # cancelled clients drop out
            self._waiting -= sum(len(p.samples) for p in batch)
            if self.on_depth is not None:
                self.on_depth(self._waiting)
            if not live:
                continue
            if self._queue_delay is not None and (delay := self._queue_delay()):
                await asyncio.sleep(delay)
            started = time.perf_counter()
            if self._compute_delay is not None and (delay := self._compute_delay()):
                await asyncio.sleep(delay)
            stacked = np.concatenate([p.samples for p in live])
            try:
                if self._last_compute < self.inline_below:
                    probs, self._last_compute = self._timed_predict(stacked)
                else:
                    probs, self._last_compute = await loop.run_in_executor(
                        self._executor, self._timed_predict, stacked)
            except Exception as exc:
                self._last_compute = float("inf")
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            compute = time.perf_counter() - started
            offset = 0
            for p in live:
                n = len(p.samples)
                if not p.future.done():
                    p.future.set_result(
                        BatchResult(probs[offset:offset + n], started - p.enqueued, compute,
                                    len(stacked))
                    )
                offset += n
            if self._on_batch is not None:
                try:
                    self._on_batch(stacked, probs, _row_tags(live, len(stacked)))
                except Exception:
                    log.exception("on_batch failed; the batch's answers were delivered")


def _row_tags(batch: list[_Pending], rows: int) -> list[object]:
    if len(batch) == rows:  # one sample each, since none has zero
        return [p.tag for p in batch]
    return [p.tag for p in batch for _ in range(len(p.samples))]
