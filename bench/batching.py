"""Should a quick model call run on the event loop or in the batch thread?

    python bench/batching.py [--requests 20000] [--rounds 5]

The digits model behind a MicroBatcher, fed by 1, 4 and 32 coroutines that each submit one
sample at a time (as a service's request handlers do), --requests in all: batches of 1 (one
client at a time), small batches and full ones. Two settings, alternated in --rounds rounds:
every call in the batch thread (`inline_below=0`) and quick calls on the event loop (the
service's default). Prints the process CPU time per request of each, their ratio, and the batch
sizes seen: CPU time, unlike wall time, does not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from inferwatch.models.digits import DigitsModel, heldout_digits
from inferwatch.serve.app import INLINE_COMPUTE_SECONDS
from inferwatch.serve.batching import MicroBatcher


async def drive(model: DigitsModel, inline_below: float, requests: int,
                concurrency: int) -> tuple[float, float]:
    """CPU seconds per request, and the mean batch size."""
    samples = model.from_tensor(heldout_digits().images.astype("float32"))
    sizes: list[int] = []
    batcher = MicroBatcher(model.predict_proba, max_batch_size=model.max_batch_size,
                           max_wait=0, capacity=4096, inline_below=inline_below,
                           on_batch=lambda x, _, __: sizes.append(len(x)))
    batcher.start()

    async def client(offset: int) -> None:
        for i in range(offset, requests, concurrency):
            await batcher.submit(samples[i % len(samples)][None])

    cpu = time.process_time()
    try:
        await asyncio.gather(*(client(c) for c in range(concurrency)))
    finally:
        await batcher.stop()
    return (time.process_time() - cpu) / requests, statistics.mean(sizes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = DigitsModel()
    settings = {"batch thread": 0.0, "event loop": INLINE_COMPUTE_SECONDS}
    print(f"digits model, {args.requests} requests per run, medians of {args.rounds} rounds")
    for concurrency in (1, 4, 32):
        cpu: dict[str, list[float]] = {name: [] for name in settings}
        batch: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(args.rounds):
            for name, inline_below in settings.items():
                per_request, mean_batch = asyncio.run(
                    drive(model, inline_below, args.requests, concurrency))
                cpu[name].append(per_request)
                batch[name].append(mean_batch)
        for name in settings:
            print(f"{concurrency:2} clients  {name:13} {statistics.median(cpu[name]) * 1e6:6.1f} "
                  f"us CPU/request  mean batch {statistics.median(batch[name]):5.1f}")
        ratio = statistics.median(cpu["batch thread"]) / statistics.median(cpu["event loop"])
        print(f"{concurrency:2} clients  the event loop uses {ratio:.2f}x less CPU per request")


if __name__ == "__main__":
    main()
