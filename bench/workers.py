"""Multi-worker serving: scrape time, its growth with dead workers, and throughput.

    python bench/workers.py [--restarts 40] [--dead 0,100,1000] [--rounds 3]

1. ``/metrics`` round trip with ``serve --workers 8`` (and ``--workers 1`` for reference),
   before and after ``--restarts`` workers were killed with SIGKILL and replaced.
2. The cost of reading the shared files, in this process, after ``--dead`` workers died:
   inferwatch's slot-named files against prometheus_client's plain multiprocess mode
   (pid-named files; dead workers' live gauges removed as its docs advise, counters and
   histograms kept), each with 8 live workers and the same series.
3. Throughput of ``--workers 1`` and ``--workers 2`` under the same closed-loop load (64
   requests in flight, the load tool in this process), alternated over ``--rounds``, with
   the cores the service and the load tool used.
4. The metric updates of one request (counters, histograms, in-flight gauge) with values in
   memory (one process) and in the shared files (several workers), in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.values import close_all_multiprocess_files

from inferwatch.metrics import InferenceMetrics
from inferwatch.metrics.workers import release_slot, slot_pids
from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.stack.addresses import StackPorts

LIVE = 8


@contextlib.contextmanager
def service(workers: int, directory: Path) -> Iterator[str]:
    port = StackPorts.free().service
    argv = [sys.executable, "-m", "inferwatch", "serve", "--port", str(port),
            "--log-level", "warning"]
    if workers > 1:
        argv += ["--workers", str(workers), "--worker-dir", str(directory)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not ready(base, directory, workers):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"service with {workers} workers did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def ready(base: str, directory: Path, workers: int) -> bool:
    try:
        httpx.get(f"{base}/ping", timeout=1).raise_for_status()
    except httpx.HTTPError:
        return False
    return workers == 1 or len(set(slot_pids(directory)) - {"supervisor"}) == workers


def scrape_ms(base: str, n: int = 100) -> tuple[float, float, int]:
    """Median and p95 of ``n`` sequential /metrics round trips, and the body size."""
    times = []
    with httpx.Client(base_url=base) as client:
        for _ in range(n):
            start = time.perf_counter()
            body = client.get("/metrics").content
            times.append(time.perf_counter() - start)
    times.sort()
    return times[n // 2] * 1000, times[int(n * 0.95)] * 1000, len(body)


def kill_and_replace(directory: Path, restarts: int, workers: int) -> None:
    for i in range(restarts):
        slot = str(i % workers)
        pid = slot_pids(directory)[slot]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while slot_pids(directory).get(slot) in (None, pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {slot} was not replaced")
            time.sleep(0.02)


def scrape_section(restarts: int) -> None:
    print("## /metrics round trip (100 sequential scrapes after 800 requests)")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for workers in (1, LIVE):
            with service(workers, directory) as base:
                run_load_sync(LoadPlan(url=base, rate=400, count=800))
                median, p95, size = scrape_ms(base)
                files = len(list(directory.glob("*.db")))
                print(f"workers={workers}: median {median:.1f} ms, p95 {p95:.1f} ms, "
                      f"{size} bytes, {files} shared files")
                if workers > 1:
                    kill_and_replace(directory, restarts, workers)
                    run_load_sync(LoadPlan(url=base, rate=400, count=800))
                    median, p95, size = scrape_ms(base)
                    files = len(list(directory.glob("*.db")))
                    print(f"workers={workers} after {restarts} SIGKILLed and replaced: "
                          f"median {median:.1f} ms, p95 {p95:.1f} ms, {size} bytes, "
                          f"{files} shared files")


def _incarnation(ident: str) -> Callable[[], None]:
    """One worker's life: its series at zero, some traffic; returns how it dies."""
    values.ValueClass = values.MultiProcessValue(lambda: ident)
    value_class = values.ValueClass
    metrics = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
    for _ in range(20):
        metrics.observe_request("digits", 200, 0.0004)
        for stage in ("queue", "preprocess", "compute", "postprocess"):
            metrics.observe_stage("digits", stage, 0.0001)
        metrics.observe_batch("digits", 1)
    return value_class.close_all_files


def read_ms(directory: Path) -> tuple[float, int]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))
    reps = []
    for _ in range(5):
        start = time.perf_counter()
        generate_latest(registry)
        reps.append(time.perf_counter() - start)
    return statistics.median(reps) * 1000, len(list(directory.glob("*.db")))


def files_section(dead_counts: list[int]) -> None:
    print(f"## reading the shared files: {LIVE} live workers after N died (in process)")
    print(f"{'dead':>6} {'slot-named (ms)':>16} {'files':>6} {'pid-named (ms)':>15} "
          f"{'files':>6} {'ratio':>6}")
    saved, saved_class = os.environ.get("PROMETHEUS_MULTIPROC_DIR"), values.ValueClass
    for dead in dead_counts:
        row = []
        for slot_named in (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                directory = Path(tmp)
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
                names = {str(k): str(k) for k in range(LIVE)}
                dies = {slot: _incarnation(slot) for slot in names}
                for i in range(dead):
                    slot = str(i % LIVE)
                    dies[slot]()
                    if slot_named:
                        release_slot(directory, slot)  # the successor takes its files over
                    else:
                        mark_process_dead(names[slot], tmp)  # a new pid, new files
                        names[slot] = str(100_000 + i)
                    dies[slot] = _incarnation(names[slot])
                row.append(read_ms(directory))
                close_all_multiprocess_files()
        (slot_ms, slot_files), (pid_ms, pid_files) = row
        print(f"{dead:>6} {slot_ms:>16.1f} {slot_files:>6} {pid_ms:>15.1f} {pid_files:>6} "
              f"{pid_ms / slot_ms:>5.1f}x")
    # Services started later must not inherit it: it switches prometheus_client's values.
    values.ValueClass = saved_class
    if saved is None:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved


def service_cpu_seconds(base: str) -> float:
    """CPU time of the service's processes (workers and supervisor) so far."""
    text = httpx.get(f"{base}/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "process_cpu_seconds_total")


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def throughput_section(rounds: int, count: int) -> None:
    print(f"## throughput, closed loop with 64 in flight, {count} requests per run "
          f"(load average before: {os.getloadavg()[0]:.2f})")
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for workers in (1, 2):
                with service(workers, Path(tmp)) as base:
                    run_load_sync(LoadPlan(url=base, rate=2000, count=1000))  # warm up
                    service_cpu, client_cpu = service_cpu_seconds(base), client_cpu_seconds()
                    plan = LoadPlan(url=base, rate=1e6, count=count, max_in_flight=64)
                    result = run_load_sync(plan)
                    wall = result.ended_at - result.started_at
                    service_cpu = service_cpu_seconds(base) - service_cpu
                    client_cpu = client_cpu_seconds() - client_cpu
                    rate = result.ok / wall
                    results[workers].append(rate)
                    print(f"workers={workers}: {rate:.0f} req/s, service "
                          f"{service_cpu / wall:.2f} cores ({service_cpu / result.ok * 1e6:.0f}"
                          f" us/request), load tool {client_cpu / wall:.2f} cores; "
                          f"ok {result.ok}/{result.sent}")
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(f"median: 1 worker {one:.0f} req/s, 2 workers {two:.0f} req/s, "
          f"ratio {two / one:.2f} ({os.cpu_count()} cores, load tool on the same cores)")


def update_cost_section() -> None:
    print("## metric updates of one request (in process)")

    def per_request_us(metrics: InferenceMetrics, n: int = 20000) -> float:
        gauge = metrics.in_flight_gauge("digits")
        start = time.perf_counter()
        for _ in range(n):
            gauge.inc()
            for stage in ("preprocess", "queue", "compute"):
                metrics.observe_stage("digits", stage, 0.0001)
            metrics.observe_batch("digits", 1)
            metrics.observe_stage("digits", "postprocess", 0.0001)
            gauge.dec()
            metrics.observe_request("digits", 200, 0.0004)
        return (time.perf_counter() - start) / n * 1e6

    memory = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
    with tempfile.TemporaryDirectory() as tmp:
        saved = values.ValueClass
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
        values.ValueClass = values.MultiProcessValue(lambda: "0")
        shared = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
        rounds = [(per_request_us(memory), per_request_us(shared)) for _ in range(3)]
        close_all_multiprocess_files()
        values.ValueClass = saved
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    one, files = (statistics.median(r[i] for r in rounds) for i in (0, 1))
    print(f"in memory {one:.1f} us, shared files {files:.1f} us ({files / one:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--restarts", type=int, default=40)
    parser.add_argument("--dead", default="0,100,1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args()
    scrape_section(args.restarts)
    files_section([int(d) for d in args.dead.split(",")])
    update_cost_section()
    throughput_section(args.rounds, args.count)


if __name__ == "__main__":
    main()
