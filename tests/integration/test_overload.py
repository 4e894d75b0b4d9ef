"""`inferwatch serve` as a process, driven open loop at twice its measured capacity for 30 s:
it stays up, its memory stays bounded, every shed request gets 503 with Retry-After, and the
client's counts of answers and of shed requests equal the server's exactly."""

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import Samples, process, scrape

from inferwatch.operate.load import LoadPlan, LoadResult, run_load_sync
from inferwatch.stack.addresses import free_ports

pytestmark = pytest.mark.integration

TOKEN = "overload-test-admin-token"
# A model call held 10 ms, one sample per batch: the model, not the HTTP stack or the load
# generator sharing the machine's cores, is the bottleneck, at about 100 requests/s, so
# twice the capacity is a few hundred requests/s and 30 s of it a few thousand requests.
COMPUTE_SECONDS = 0.01
QUEUE_CAPACITY = 4
OVERLOAD_SECONDS = 30
RSS_GROWTH_LIMIT = 64 << 20

def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and labels.items() <= dict(ls).items())


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port, admin_port = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "inferwatch", "serve", "--port", str(port),
            "--admin-port", str(admin_port), "--max-batch-size", "1",
            "--queue-capacity", str(QUEUE_CAPACITY), "--log-level", "warning"]
    with process(argv, f"{url}/ping", tmp_path / "serve.log",
                 env={**os.environ, "INFERWATCH_ADMIN_TOKEN": TOKEN}) as proc:
        slow = httpx.post(f"http://127.0.0.1:{admin_port}/admin/faults/latency",
                          json={"stage": "compute", "seconds": COMPUTE_SECONDS},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert slow.status_code == 200, slow.text
        yield url, proc


def served_per_second(result: LoadResult) -> float:
    return result.ok / (result.ended_at - result.started_at)


def test_twice_capacity_for_30s_sheds_with_retry_after_and_loses_nothing(
    service: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = service
    # Capacity: what it serves while saturated (at about four times the expected rate).
    probe = run_load_sync(LoadPlan(url, rate=4 / COMPUTE_SECONDS, duration=3))
    assert probe.transport_errors == {} and set(probe.statuses) <= {200, 503}, probe.statuses
    capacity = served_per_second(probe)
    rate = 2 * capacity
    rss_before = rss(proc.pid)
    before = scrape(f"{url}/metrics")

    peak = rss_before
    stop = threading.Event()

    def watch_memory() -> None:
        nonlocal peak
        while not stop.wait(0.5):
            peak = max(peak, rss(proc.pid))

    watcher = threading.Thread(target=watch_memory)
    watcher.start()
    try:
        result = run_load_sync(LoadPlan(url, rate=rate, duration=OVERLOAD_SECONDS,
                                        count=int(rate * OVERLOAD_SECONDS) + 1))
    finally:
        stop.set()
        watcher.join()
    after = scrape(f"{url}/metrics")
    peak = max(peak, rss(proc.pid))

    print(f"capacity {capacity:.0f}/s; sent {result.sent} at {result.achieved_rate:.0f}/s: "
          f"{result.statuses}, served {served_per_second(result):.0f}/s; RSS "
          f"{rss_before / 2**20:.1f} MiB -> peak {peak / 2**20:.1f} MiB")
    assert proc.poll() is None, "the service died"
    assert httpx.get(f"{url}/ping", timeout=5).status_code == 200
    assert peak - rss_before < RSS_GROWTH_LIMIT

    assert result.transport_errors == {}, result.transport_errors
    assert set(result.statuses) == {200, 503}, result.statuses
    assert sum(result.statuses.values()) == result.sent
    shed = result.statuses[503]
    assert result.retry_after == shed

    def delta(name: str, **labels: str) -> float:
        return total(after, name, model="digits", **labels) - total(before, name,
                                                                    model="digits", **labels)

    assert delta("inference_requests_total") == result.sent
    assert delta("inference_responses_total", code="200") == result.statuses[200]
    assert delta("inference_responses_total", code="503") == shed
    assert delta("inference_error_reasons_total", reason="overloaded") == shed
    assert delta("inference_latency_seconds_count") == result.statuses[200]
