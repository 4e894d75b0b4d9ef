"""`inferwatch serve --workers 2` under load, scraped by a real Prometheus: the request count
is exact, also after each worker was killed with SIGKILL and replaced."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import Samples, scrape

from inferwatch.metrics.workers import slot_pids
from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Stack, StackOptions

N, M = 300, 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    opts = StackOptions(run_dir=tmp_path_factory.mktemp("workers"), profile=FAST,
                        ports=StackPorts.free(), workers=2)
    with Stack(opts) as running:
        yield running
    assert not list((opts.run_dir / "workers").iterdir())  # the supervisor cleans up


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def wait_for_total(service: str, name: str, expected: float, timeout: float = 10) -> None:
    """Quality counts reach the shared files within a second (folded, then published)."""
    deadline = time.monotonic() + timeout
    while (seen := total(scrape(f"{service}/metrics"), name)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: {seen}, expected {expected}")
        time.sleep(0.2)


def wait_for_new_worker(directory: Path, slot: str, old_pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = slot_pids(directory).get(slot)
        if pid is not None and pid != old_pid:
            return pid
        time.sleep(0.05)
    raise TimeoutError(f"worker {slot} was not replaced within {timeout:g}s")


def test_exact_counts_across_workers_and_killed_workers(stack: Stack) -> None:
    service = url(stack.opts.ports.service)
    directory = stack.opts.run_dir / "workers"
    prom = PrometheusAPI(url(stack.opts.ports.prometheus))
    try:
        first = run_load_sync(LoadPlan(url=service, rate=150, count=N))
        assert first.ok == N, (first.statuses, first.transport_errors)
        samples = scrape(f"{service}/metrics")
        assert total(samples, "inference_requests_total") == N
        workers = {dict(labels)["worker"] for (name, labels) in samples
                   if name == "process_cpu_seconds_total"}
        assert workers == {"0", "1", "supervisor"}
        wait_for_total(service, "inference_prediction_confidence_count", N)
        files = sorted(p.name for p in directory.iterdir())

        # Kill both original workers, one after the other: the next M requests can only be
        # served by their replacements, which must count on from the dead workers' totals.
        killed = []
        for slot in ("0", "1"):
            pid = slot_pids(directory)[slot]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_for_new_worker(directory, slot, pid)
        assert not set(killed) & set(slot_pids(directory).values())

        second = run_load_sync(LoadPlan(url=service, rate=150, count=M))
        assert second.ok == M, (second.statuses, second.transport_errors)
        samples = scrape(f"{service}/metrics")
        assert total(samples, "inference_requests_total") == N + M
        assert total(samples, "inference_latency_seconds_count") == N + M
        assert total(samples, "inferwatch_worker_restarts_total") == 2
        assert total(samples, "inference_in_flight_requests") == 0
        assert total(samples, "inference_queue_capacity") == 2 * 256  # live workers only
        assert sorted(p.name for p in directory.iterdir()) == files  # nothing per dead pid
        wait_for_total(service, "inference_prediction_confidence_count", N + M)
        wait_for_total(service, "inference_predictions_total", N + M)

        prom.wait_for_scrape("inference", after=time.time())
        assert prom.scalar('sum(inference_requests_total{job="inference"})') == N + M
        assert prom.scalar('count(process_resident_memory_bytes{job="inference"})') == 3
    finally:
        prom.close()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferwatch", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_workers_that_cannot_start_stop_the_service(tmp_path: Path) -> None:
    port = str(StackPorts.free().service)
    result = cli("serve", "--workers", "2", "--port", port, "--model", "nope",
                 "--worker-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "before it served" in result.stderr
    assert not list(tmp_path.iterdir())
    refused = cli("serve", "--workers", "2", "--port", port, "--admin-port", "9")
    assert refused.returncode == 2 and "--workers 1 only" in refused.stdout
