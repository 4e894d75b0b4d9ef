"""Slot-named shared metric files: exact sums across workers and restarts, no growth.

Workers are simulated in this process: each gets its own prometheus_client value class bound
to its slot's files, and "dies" by closing them, which leaves the files as a killed process
would.
"""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.values import close_all_multiprocess_files

from inferwatch.metrics import InferenceMetrics
from inferwatch.metrics.workers import (
    CollectorPublisher,
    announce_slot,
    release_slot,
    scrape_registry,
    slot_pids,
    use_slot,
)
from inferwatch.serve.app import ServeConfig
from inferwatch.serve.batching import MicroBatcher
from inferwatch.serve.workers import config_from_json, config_to_json, prune_stale_directories

DIGITS = {"model": "digits", "version": "1"}


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # restored afterwards
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    yield tmp_path
    close_all_multiprocess_files()


class Worker:
    def __init__(self, directory: Path, slot: str) -> None:
        use_slot(directory, slot)
        self.value_class: Any = values.ValueClass
        self.metrics = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
        self.depth = self.metrics.watch_queue("digits", lambda: 0, 256)

    def serve(self, requests: int) -> None:
        for _ in range(requests):
            self.metrics.observe_request("digits", 200, 0.001)

    def die(self) -> None:
        self.value_class.close_all_files()


def total(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**DIGITS, **labels})


def test_counts_are_exact_across_workers_and_restarts(shared: Path) -> None:
    scrape = scrape_registry(shared, announce_gpu=False)
    w0, w1 = Worker(shared, "0"), Worker(shared, "1")
    w0.serve(5)
    w1.serve(3)
    assert total(scrape, "inference_requests_total") == 8
    assert total(scrape, "inference_latency_seconds_count") == 8
    assert total(scrape, "inference_queue_capacity") == 512

    w0.die()
    release_slot(shared, "0")
    w0 = Worker(shared, "0")  # its successor takes over the slot's files
    assert total(scrape, "inference_requests_total") == 8
    w0.serve(4)
    assert total(scrape, "inference_requests_total") == 12
    assert total(scrape, "inference_latency_seconds_bucket", le="+Inf") == 12


def test_dead_workers_gauges_go_and_files_do_not_grow(shared: Path) -> None:
    scrape = scrape_registry(shared, announce_gpu=False)
    w0, w1 = Worker(shared, "0"), Worker(shared, "1")
    files = sorted(p.name for p in shared.iterdir())
    for restart in range(50):
        w0.metrics.in_flight_gauge("digits").inc(3)  # killed with 3 requests in flight
        assert w0.depth is not None
        w0.depth(7)
        w0.serve(1)
        w0.die()
        release_slot(shared, "0")
        assert total(scrape, "inference_in_flight_requests") == 0
        assert total(scrape, "inference_queue_depth") == 0
        assert total(scrape, "inference_queue_capacity") == 256  # worker 1's only
        w0 = Worker(shared, "0")
        assert total(scrape, "inference_requests_total") == restart + 1
    assert sorted(p.name for p in shared.iterdir()) == files
    w1.serve(1)
    assert total(scrape, "inference_requests_total") == 51


def test_process_metrics_per_live_worker(shared: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    announce_slot(shared, "0")
    announce_slot(shared, "1", int(done.stdout))  # a pid that has exited
    announce_slot(shared, "supervisor", os.getppid())
    assert slot_pids(shared) == {"0": os.getpid(), "1": int(done.stdout),
                                 "supervisor": os.getppid()}
    scrape = scrape_registry(shared, announce_gpu=False)
    cpu = {s.labels.get("worker"): s.value for m in scrape.collect() for s in m.samples
           if s.name == "process_cpu_seconds_total"}
    assert set(cpu) == {"0", "supervisor"}
    assert cpu["0"] > 0
    release_slot(shared, "0")
    assert scrape.get_sample_value("process_cpu_seconds_total", {"worker": "0"}) is None


def test_shared_queue_depth_is_pushed_on_every_change(shared: Path) -> None:
    worker = Worker(shared, "0")
    scrape = scrape_registry(shared, announce_gpu=False)
    seen: list[float] = []
    setter = worker.depth
    assert setter is not None

    def report(depth: int) -> None:
        setter(depth)
        seen.append(depth)

    async def run() -> None:
        batcher = MicroBatcher(lambda x: x, max_batch_size=4, max_wait=0.01, on_depth=report)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(np.zeros((1, 2))) for _ in range(3)))
        finally:
            await batcher.stop()

    asyncio.run(run())
    assert seen[:3] == [1, 2, 3] and seen[-1] == 0
    assert total(scrape, "inference_queue_depth") == 0


class InMemoryCollector:
    """Counts kept in this process, as the quality monitors keep theirs."""

    def __init__(self) -> None:
        self.predictions = 0.0
        self.buckets = [0.0, 0.0, 0.0]  # <= 0.5, <= 0.9, above
        self.psi = 0.0

    def collect(self) -> list[Metric]:
        counter = CounterMetricFamily("quality_predictions", "Predictions.", labels=["model"])
        counter.add_metric(["digits"], self.predictions)
        histogram = HistogramMetricFamily("quality_confidence", "Confidence.",
                                          labels=["model"])
        cumulative = np.cumsum(self.buckets)
        histogram.add_metric(["digits"], [("0.5", cumulative[0]), ("0.9", cumulative[1]),
                                          ("+Inf", cumulative[2])], 0.7 * cumulative[2])
        gauge = GaugeMetricFamily("quality_psi", "Drift.", labels=["model"])
        gauge.add_metric(["digits"], self.psi)
        return [counter, histogram, gauge]


def test_publisher_adds_in_memory_counts_to_the_slot_and_survives_restarts(
        shared: Path) -> None:
    scrape = scrape_registry(shared, announce_gpu=False)
    Worker(shared, "1")  # a live neighbour with its own slot
    quality = InMemoryCollector()
    worker = Worker(shared, "0")
    publisher = CollectorPublisher(quality)
    quality.predictions, quality.buckets, quality.psi = 3, [1, 1, 1], 0.3
    publisher.publish()
    publisher.publish()  # nothing new: nothing added
    quality.predictions, quality.buckets = 5, [1, 3, 1]
    publisher.publish()
    assert scrape.get_sample_value("quality_predictions_total", {"model": "digits"}) == 5
    assert [scrape.get_sample_value("quality_confidence_bucket", {"model": "digits", "le": le})
            for le in ("0.5", "0.9", "+Inf")] == [1, 4, 5]
    assert scrape.get_sample_value("quality_confidence_count", {"model": "digits"}) == 5
    assert scrape.get_sample_value("quality_confidence_sum", {"model": "digits"}) == \
        pytest.approx(3.5)
    assert scrape.get_sample_value("quality_psi", {"model": "digits"}) == 0.3

    worker.die()
    release_slot(shared, "0")
    assert scrape.get_sample_value("quality_psi", {"model": "digits"}) is None  # went with it
    worker = Worker(shared, "0")
    fresh = InMemoryCollector()
    publisher = CollectorPublisher(fresh)
    fresh.predictions, fresh.buckets = 2, [0, 0, 2]  # the replacement counts from zero
    publisher.publish()
    assert scrape.get_sample_value("quality_predictions_total", {"model": "digits"}) == 7
    assert scrape.get_sample_value("quality_confidence_bucket",
                                   {"model": "digits", "le": "+Inf"}) == 7


def test_one_process_keeps_reading_depth_at_scrape_time() -> None:
    metrics = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
    assert not metrics.shared
    assert metrics.watch_queue("digits", lambda: 5, 256) is None
    assert metrics.queue_depth.labels("digits", "1")._value.get() == 0  # a function gauge


def test_worker_config_round_trips_through_json() -> None:
    config = ServeConfig(models=("digits", "resnet18"), resnet18_weights=Path("/w/r.pth"),
                         max_batch_size=8, latency_buckets=(0.1, 1.0))
    assert config_from_json(json.loads(json.dumps(config_to_json(config)))) == config


def test_stale_default_directories_of_dead_supervisors_are_pruned(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"inferwatch-workers-{int(done.stdout)}-x1"
    live = tmp_path / f"inferwatch-workers-{os.getpid()}-x2"
    for d in (dead, live):
        d.mkdir()
        (d / "counter_0.db").write_bytes(b"")
    assert prune_stale_directories(tmp_path) == [dead]
    assert live.exists() and not dead.exists()
