"""Throughput of `inferwatch serve` with quality tracking on vs off, side by side.

    python bench/quality.py [--seconds 4] [--rounds 9] [--concurrency 32] [--cpu-rate 800]

Two measures, both side by side in one run:

1. CPU seconds the service process spends per request (user + system, from /proc, the
   quality flushes included) under the same open-loop load: the throughput a
   dedicated core would give is its inverse, and unlike wall-clock throughput it barely moves
   when other processes share the machine. Ratio = CPU per request off / on.
2. Wall-clock throughput at saturation, as below.

Every round starts the service twice (`--quality` and `--no-quality`, each on its own port,
with the round's own PYTHONHASHSEED, see harness.seed_round), measures both, then stops
them: a process keeps its memory layout for life, and one pair kept for a whole run
measured quality tracking at 0.831x by CPU where fresh pairs every round measured 0.976x.
Within a round each is driven in turn, the order alternating between rounds, with the
open-loop load and then the same closed-loop client (aiohttp, keep-alive, N requests in
flight, PNG digits to /predictions/digits). Prints each round and the medians (a burst of
load from elsewhere on the machine hits one round's ratio, not the median).

Before that, in process: what the feedback store costs with its ring full (100,000
answers), to store an answer (deferred a model call of 16 at a time, settled 1,200 at a time,
as under load) and to find one for a feedback request (a scan of the ring's keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
import timeit

import aiohttp
import numpy as np
from harness import cpu_seconds, free_port, running, seed_round  # bench/, next to this

from inferwatch.metrics.feedback import FeedbackStore, RequestIds
from inferwatch.operate.load import LoadPlan, build_payloads, run_load_sync


async def drive(base: str, seconds: float, concurrency: int) -> float:
    payloads = build_payloads("predictions")
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            p = payloads[i % len(payloads)]
            async with session.post(base + p.path, data=p.body,
                                    headers={"Content-Type": p.content_type}) as r:
                await r.read()
                if r.status == 200:
                    done += 1
            i += concurrency

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        await asyncio.gather(*(worker(s, k) for k in range(concurrency)))
    return done / (time.perf_counter() - start)


def cpu_per_request(proc: subprocess.Popen[bytes], base: str, rate: float,
                    seconds: float) -> float:
    before = cpu_seconds(proc.pid)
    result = run_load_sync(LoadPlan(url=base, rate=rate, duration=seconds))
    time.sleep(0.6)  # the quality thread's last fold belongs to this round
    return (cpu_seconds(proc.pid) - before) / max(result.ok, 1)


def feedback_store(rounds: int = 7) -> None:
    """In process: storing and finding an answer in a full store, every id drawn as the
    service draws it (the store is handed the id's key)."""
    store, request_ids = FeedbackStore(), RequestIds()
    rng = np.random.default_rng(0)
    probabilities = [rng.random((16, 10)) for _ in range(75)]
    number = 20
    flushes = store.capacity // 1200 + 2 + rounds * number
    drawn = [[[request_ids.new() for _ in range(16)] for _ in range(75)]
             for _ in range(flushes)]  # before the timing: per model call, ids and keys
    ids = iter([([[i for i, _ in call] for call in flush], [[k for _, k in call] for call in flush])
                for flush in drawn])

    def store_flush() -> list[list[str]]:
        flush, keys = next(ids)
        for batch, answers in zip(keys, probabilities, strict=True):
            store.defer("digits", batch, answers)
        store.settle()
        return flush

    for _ in range(store.capacity // 1200 + 1):
        store_flush()
    storing = statistics.median(timeit.repeat(store_flush, number=number, repeat=rounds))
    wanted = store_flush()[40][7]

    def find() -> None:
        store._found = ("", -1, None)  # no answer kept from the last call
        assert not isinstance(store.lookup(wanted), str)

    finding = statistics.median(timeit.repeat(find, number=200, repeat=rounds)) / 200
    print(f"feedback store, in process, {store.capacity:,} answers (median of {rounds}): "
          f"storing an answer {storing / number / 1200 * 1e6:.2f} us, finding one "
          f"{finding * 1e6:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cpu-rate", type=float, default=800)
    args = parser.parse_args()
    feedback_store()
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(args.rounds):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        seed_round(r)
        with contextlib.ExitStack() as stack:  # fresh processes: each keeps its layout for life
            services = {}
            for name in order:
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                argv = [sys.executable, "-m", "inferwatch", "serve", "--port", str(port),
                        "--quality" if name == "on" else "--no-quality",
                        "--log-level", "warning"]
                services[name] = (stack.enter_context(running(argv, f"{base}/ping")), base)
                asyncio.run(drive(base, 1, args.concurrency))  # warm-up
            for name in order:
                proc, base = services[name]
                cpu[name].append(cpu_per_request(proc, base, args.cpu_rate, args.seconds))
            for name in order:
                rates[name].append(asyncio.run(drive(services[name][1], args.seconds,
                                                     args.concurrency)))
        print(f"round {r + 1} ({', '.join(order)}): CPU per request on "
              f"{cpu['on'][-1] * 1e6:.0f} us, off {cpu['off'][-1] * 1e6:.0f} us; "
              f"closed loop on {rates['on'][-1]:.0f} req/s, off {rates['off'][-1]:.0f} req/s",
              flush=True)
    on_cpu, off_cpu = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    cpu_ratios = [b / a for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    print(f"median CPU per request: on {on_cpu * 1e6:.0f} us, off {off_cpu * 1e6:.0f} us; "
          f"throughput ratio on/off from CPU = {off_cpu / on_cpu:.3f}, median of per-round "
          f"ratios {statistics.median(cpu_ratios):.3f}")
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    ratios = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]
    print(f"median: on {on:.0f} req/s, off {off:.0f} req/s; "
          f"median of per-round ratios on/off = {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
