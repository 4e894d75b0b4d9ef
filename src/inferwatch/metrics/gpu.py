"""GPU metrics from NVML (``pip install 'inferwatch[gpu]'``), one series per GPU.

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> gpu = GPUCollector(registry=registry)
>>> registry.get_sample_value("inferwatch_gpu_available") in (0.0, 1.0)
True

Without the package, a driver or a GPU, the collector exports ``inferwatch_gpu_available 0``,
logs why once, and never fails the service. NVML is asked at scrape time, so the figures are
as fresh as the scrape; a query a GPU does not support (power on some boards) leaves that
series out instead of failing the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from inferwatch.metrics.names import (
    GPU_AVAILABLE,
    GPU_ENERGY_JOULES_TOTAL,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_MEMORY_USED_BYTES,
    GPU_POWER_WATTS,
    GPU_TEMPERATURE_CELSIUS,
    GPU_UTILIZATION_RATIO,
)

__all__ = ["GPU_LABELS", "INSTALL_HINT", "GPUCollector"]

log = logging.getLogger("inferwatch.metrics.gpu")

INSTALL_HINT = "pip install 'inferwatch[gpu]'"
GPU_LABELS = ("gpu", "uuid", "name")


@dataclass(frozen=True)
class _Device:
    handle: Any
    labels: tuple[str, str, str]  # index, uuid, name


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


class GPUCollector(Collector):
    """Utilisation, memory, temperature, power and energy of every NVIDIA GPU.

    ``nvml`` is the NVML binding module (``pynvml`` from nvidia-ml-py, imported here only
    when not given). ``announce`` logs what was found, or why nothing was, once.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 nvml: ModuleType | None = None, announce: bool = True) -> None:
        self._nvml = nvml
        self._announce = announce
        self._devices: list[_Device] = []
        self._failed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._start()
        if registry is not None:
            registry.register(self)

    @property
    def available(self) -> bool:
        return bool(self._devices)

    def _start(self) -> None:
        try:
            nvml = self._nvml or _import_pynvml()
        except ImportError:
            self._say(f"GPU metrics off: nvidia-ml-py is not installed ({INSTALL_HINT})")
            return
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                self._devices.append(_Device(handle, (
                    str(index), _text(nvml.nvmlDeviceGetUUID(handle)),
                    _text(nvml.nvmlDeviceGetName(handle)))))
        except nvml.NVMLError as exc:
            self._devices = []
            self._say(f"GPU metrics off: no NVIDIA driver or GPU ({exc})")
            return
        if not self._devices:
            self._say("GPU metrics off: NVML reports no GPU")
            return
        self._say("GPU metrics on: " + ", ".join(f"{d.labels[0]}: {d.labels[2]}"
                                                 for d in self._devices))

    def _say(self, message: str) -> None:
        if self._announce:
            log.info(message)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(GPU_AVAILABLE,
                                "1 when NVML reports at least one GPU, else 0.",
                                value=1.0 if self._devices else 0.0)
        if not self._devices:
            return
        nvml = self._nvml
        assert nvml is not None
        families: list[tuple[GaugeMetricFamily | CounterMetricFamily,
                             Callable[[Any], float]]] = [
            (GaugeMetricFamily(GPU_UTILIZATION_RATIO,
                               "Share of the last sample period in which a kernel ran (0-1).",
                               labels=GPU_LABELS),
             lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0),
            (GaugeMetricFamily(GPU_MEMORY_USED_BYTES,
                               "GPU memory allocated, in bytes.", labels=GPU_LABELS),
             lambda h: float(nvml.nvmlDeviceGetMemoryInfo(h).used)),
            (GaugeMetricFamily(GPU_MEMORY_TOTAL_BYTES,
                               "GPU memory installed, in bytes.", labels=GPU_LABELS),
             lambda h: float(nvml.nvmlDeviceGetMemoryInfo(h).total)),
            (GaugeMetricFamily(GPU_TEMPERATURE_CELSIUS,
                               "GPU core temperature.", labels=GPU_LABELS),
             lambda h: float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))),
            (GaugeMetricFamily(GPU_POWER_WATTS,
                               "Power drawn by the board.", labels=GPU_LABELS),
             lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),  # mW
            (CounterMetricFamily(GPU_ENERGY_JOULES_TOTAL,
                                 "Energy used since the driver was loaded.", labels=GPU_LABELS),
             lambda h: nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0),  # mJ
        ]
        for family, read in families:
            for device in self._devices:
                try:
                    family.add_metric(device.labels, read(device.handle))
                except nvml.NVMLError as exc:
                    self._skip(family.name, device, exc)
            yield family

    def _skip(self, metric: str, device: _Device, exc: Exception) -> None:
        """Leave one series out; log each (metric, GPU) failure once, not every scrape."""
        key = (metric, device.labels[1])
        with self._lock:
            if key in self._failed:
                return
            self._failed.add(key)
        log.warning("GPU %s (%s): %s unavailable: %s", device.labels[0], device.labels[2],
                    metric, exc)
