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
        b = MicroBatcher(predict, max_batch_size=8, max_wait=0.05,
                         on_batch=lambda x, _, __: sizes.append(len(x)))
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


@pytest.mark.parametrize("call_seconds, on_loop_after_first", [(0.0, True), (0.01, False)])
def test_only_quick_model_calls_run_on_the_event_loop(
    call_seconds: float, on_loop_after_first: bool
) -> None:
    threads: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        if call_seconds:
            threading.Event().wait(call_seconds)
        return x

    async def run() -> int:
        b = MicroBatcher(predict, max_batch_size=1, max_wait=0, inline_below=0.005)
        b.start()
        try:
            for i in range(4):
                await b.submit(np.full((1, 2), i, dtype=np.float32))
        finally:
            await b.stop()
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert threads[0] != loop_thread  # the first call's cost is unknown: the batch thread
    assert all((t == loop_thread) is on_loop_after_first for t in threads[1:])


def test_compute_delay_keeps_the_event_loop_free() -> None:
    async def run() -> tuple[float, int]:
        b = MicroBatcher(lambda x: x, max_batch_size=1, max_wait=0, inline_below=1.0,
                         compute_delay=lambda: 0.05)
        b.start()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        ticker = asyncio.get_running_loop().create_task(tick())
        try:
            result = await b.submit(np.zeros((1, 2), dtype=np.float32))
        finally:
            ticker.cancel()
            await b.stop()
        return result.compute_seconds, ticks

    compute, ticks = asyncio.run(run())
    assert compute >= 0.05  # the injected delay counts as compute time
    assert ticks > 5  # and the loop kept running meanwhile


def test_on_batch_gets_each_rows_tag_and_a_failing_one_stops_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[list[float], list[object]]] = []

    def on_batch(samples: np.ndarray, _: np.ndarray, tags: list[object]) -> None:
        seen.append((samples[:, 0].tolist(), tags))
        raise RuntimeError("observer bug")

    async def run() -> list[float]:
        b = MicroBatcher(lambda x: x, max_batch_size=8, max_wait=0.05, on_batch=on_batch)
        b.start()
        try:
            first = await asyncio.gather(b.submit(np.full((1, 1), 1.0), "one"),
                                         b.submit(np.full((2, 1), 2.0), "two"),
                                         b.submit(np.full((1, 1), 3.0)))
            later = await b.submit(np.full((1, 1), 4.0), "four")  # the batcher lives on
            with pytest.raises(ValueError, match="no samples"):
                await b.submit(np.zeros((0, 1)), "empty")
            return [float(r.probabilities[0, 0]) for r in [*first, later]]
        finally:
            await b.stop()

    assert asyncio.run(run()) == [1.0, 2.0, 3.0, 4.0]
    assert seen == [([1.0, 2.0, 2.0, 3.0], ["one", "two", "two", None]), ([4.0], ["four"])]
    assert caplog.text.count("on_batch failed") == 2
