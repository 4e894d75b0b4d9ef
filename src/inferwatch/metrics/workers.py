"""Metrics of a service that runs as several worker processes (``inferwatch serve --workers``).

Workers keep their counters, histograms and gauges in the memory-mapped files of
prometheus_client's multiprocess mode, but the files are named after the worker's *slot*
(0 to N-1), not its pid. A worker that replaces a dead one takes over its slot, opens the same
files and counts on from where its predecessor stopped. Hence:

- counts survive a crashed worker exactly, with no merge step;
- the directory holds the files of N slots however many workers died, so a scrape reads the
  same amount after any number of restarts (pid-named files grow by one set per dead worker,
  and every scrape reads them all: see ``bench/workers.py``);
- a dead worker's gauges (requests in flight, queue depth: ``live*`` modes) are deleted with
  it, before its successor starts.

Process metrics cannot be shared that way; they are read from ``/proc`` for every live worker
at scrape time and labelled ``worker`` with the slot, so their series stay N + 1 (the
supervisor) across restarts. Collectors that keep their state in memory (model quality) are
copied into the slot's files by a :class:`CollectorPublisher`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from inferwatch.metrics.gpu import GPUCollector

__all__ = [
    "SUPERVISOR",
    "CollectorPublisher",
    "WorkerProcessCollector",
    "announce_slot",
    "release_slot",
    "scrape_registry",
    "slot_pids",
    "use_slot",
]

SUPERVISOR = "supervisor"
"""The slot name of the process that starts and restarts the workers."""

_PID_SUFFIX = ".pid"


def use_slot(directory: Path, slot: str) -> None:
    """Make the metrics this process creates from now on keep their values in ``slot``'s files.

    The files' existing values are taken over: call :func:`release_slot` for a dead worker's
    slot before its successor starts, and never give one slot to two live processes.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue(lambda: slot)


def announce_slot(directory: Path, slot: str, pid: int | None = None) -> None:
    """Record that ``pid`` (this process by default) serves ``slot`` from now on."""
    path = directory / f"{slot}{_PID_SUFFIX}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(str(os.getpid() if pid is None else pid))
    os.replace(tmp, path)  # readers never see a half-written pid


def release_slot(directory: Path, slot: str) -> None:
    """Forget a dead worker's gauges and pid; its counters and histograms stay for its successor."""
    mark_process_dead(slot, str(directory))
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{slot}{_PID_SUFFIX}").unlink()


def slot_pids(directory: Path) -> dict[str, int]:
    """The announced slots and their pids."""
    found = {}
    for path in directory.glob(f"*{_PID_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found[path.name[: -len(_PID_SUFFIX)]] = int(path.read_text())
    return found


class WorkerProcessCollector(Collector):
    """``process_*`` metrics of every announced slot, labelled ``worker="<slot>"``."""

    def __init__(self, directory: Path, registry: CollectorRegistry | None = None) -> None:
        self._directory = directory
        self._pid = 0
        self._process = ProcessCollector(pid=lambda: self._pid, registry=None)
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for slot, pid in sorted(slot_pids(self._directory).items()):
            self._pid = pid
            for family in self._process.collect():  # nothing for a pid that just died
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation,
                                                       family.type)
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "worker": slot},
                                   sample.value)
        return merged.values()


class CollectorPublisher:
    """Copies what a collector reports into this process' slot files, on each ``publish``.

    Counters and histogram buckets and sums are added as increments since the last call, so
    a replacement worker adds to its predecessor's totals like the other shared metrics;
    gauges are set, and combined across workers by ``gauge_mode`` (a ``live*`` mode: a dead
    worker's value goes with it). Call after :func:`use_slot`, from one thread.
    """

    def __init__(self, collector: Collector, gauge_mode: str = "livemax") -> None:
        self._collector = collector
        self._gauge_mode = gauge_mode
        self._values: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
        self._published: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}

    def publish(self) -> None:
        for family in self._collector.collect():
            if family.type == "gauge":
                for sample in family.samples:
                    self._value(family, sample.name, sample.labels).set(sample.value)
            elif family.type == "counter":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        self._add(family, sample.name, sample.labels, sample.value)
            elif family.type == "histogram":
                self._add_histogram(family)

    def _add_histogram(self, family: Metric) -> None:
        # Shared files hold one count per bucket, not the cumulative ones exposed.
        below: dict[tuple[tuple[str, str], ...], float] = {}
        buckets = [s for s in family.samples if s.name.endswith("_bucket")]
        for sample in sorted(buckets, key=lambda s: float(s.labels["le"])):
            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            count = sample.value - below.get(series, 0.0)
            below[series] = sample.value
            self._add(family, sample.name, sample.labels, count)
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                self._add(family, sample.name, sample.labels, sample.value)

    def _add(self, family: Metric, name: str, labels: dict[str, str], total: float) -> None:
        key = (family.type, name, tuple(sorted(labels.items())))
        delta = total - self._published.get(key, 0.0)
        if delta and math.isfinite(delta):
            self._value(family, name, labels).inc(delta)
            self._published[key] = total

    def _value(self, family: Metric, name: str, labels: dict[str, str]) -> Any:
        key = (family.type, name, tuple(sorted(labels.items())))
        value = self._values.get(key)
        if value is None:
            mode = {"multiprocess_mode": self._gauge_mode} if family.type == "gauge" else {}
            value = self._values[key] = values.ValueClass(
                family.type, family.name, name, list(labels), list(labels.values()),
                family.documentation, **mode)
        return value


def scrape_registry(directory: Path, *, announce_gpu: bool = True) -> CollectorRegistry:
    """What a worker answers ``/metrics`` with: every slot's values, per-worker process
    metrics, the platform and the GPUs."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))
    WorkerProcessCollector(directory, registry)
    PlatformCollector(registry=registry)
    GPUCollector(registry=registry, announce=announce_gpu)
    return registry
