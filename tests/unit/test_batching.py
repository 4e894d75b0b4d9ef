import asyncio
import threading

import numpy as np
import pytest

from inferwatch.serve.batching import MicroBatcher, QueueFullError


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    sizes: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        return x * 10

    async def run() -> list[np.ndarray]:
        b = MicroBatcher(predict, max_batch_size=8, max_wait=0.05, on_batch=sizes.append)
        b.start()
        try:
            return await asyncio.gather(
                *(b.submit(np.full((1, 2), i, dtype=np.float32)) for i in range(20))
            )
        finally:
            await b.stop()

    results = asyncio.run(run())
    assert [int(r.probabilities[0, 0]) for r in results] == [i * 10 for i in range(20)]
    assert sum(sizes) == 20
    assert max(sizes) <= 8 and len(sizes) < 20


def test_full_queue_is_refused_at_once() -> None:
    release = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        release.wait(5)
        return x

    async def run() -> None:
        b = MicroBatcher(slow, max_batch_size=1, max_wait=0, capacity=2)
        b.start()
        first = asyncio.ensure_future(b.submit(np.zeros((1, 1))))
        await asyncio.sleep(0.05)  # first is computing, queue empty
        queued = [asyncio.ensure_future(b.submit(np.zeros((1, 1)))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await b.submit(np.zeros((1, 1)))
        release.set()
        await asyncio.gather(first, *queued)
        assert b.depth() == 0
        await b.stop()

    asyncio.run(run())


def test_model_exception_reaches_every_caller_and_batcher_survives() -> None:
    calls = 0

    def flaky(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model failed")
        return x

    async def run() -> None:
        b = MicroBatcher(flaky, max_batch_size=4, max_wait=0.01)
        b.start()
        with pytest.raises(RuntimeError):
            await b.submit(np.zeros((1, 1)))
        ok = await b.submit(np.ones((1, 1)))
        assert ok.probabilities[0, 0] == 1
        await b.stop()

    asyncio.run(run())
