"""The GPU collector: its absent paths for real, its mapping against a fake NVML module."""

import logging
import sys
import types
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from inferwatch.metrics.gpu import INSTALL_HINT, GPUCollector


class FakeNVMLError(Exception):
    pass


def fake_nvml(gpus: list[dict[str, Any]], init_error: bool = False) -> types.ModuleType:
    """The calls of nvidia-ml-py the collector makes; a missing key raises NVMLError."""
    nvml = types.ModuleType("fake_pynvml")

    def init() -> None:
        if init_error:
            raise FakeNVMLError("Driver Not Loaded")

    def get(key: str) -> Any:
        def read(handle: int, *args: Any) -> Any:
            if key not in gpus[handle]:
                raise FakeNVMLError("Not Supported")
            return gpus[handle][key]
        return read

    nvml.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    nvml.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: len(gpus)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    for name, key in (("UUID", "uuid"), ("Name", "name"), ("Temperature", "temp"),
                      ("PowerUsage", "power_mw"), ("TotalEnergyConsumption", "energy_mj")):
        setattr(nvml, f"nvmlDeviceGet{name}", get(key))
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=get("util_percent")(h))
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=gpus[h]["used"], total=gpus[h]["total"])
    return nvml


H100 = {"uuid": b"GPU-aaaa", "name": b"NVIDIA H100 80GB HBM3", "util_percent": 93,
        "used": 60 << 30, "total": 80 << 30, "temp": 61, "power_mw": 312_500,
        "energy_mj": 4_200_000}
T4 = {"uuid": "GPU-bbbb", "name": "Tesla T4", "util_percent": 0, "used": 0,
      "total": 16 << 30, "temp": 35, "energy_mj": 1000}  # no power reading


def sample(registry: CollectorRegistry, name: str, gpu: str | None = None) -> float | None:
    if gpu is None:
        return registry.get_sample_value(name)
    labels = {"0": ("GPU-aaaa", "NVIDIA H100 80GB HBM3"), "1": ("GPU-bbbb", "Tesla T4")}[gpu]
    return registry.get_sample_value(name, {"gpu": gpu, "uuid": labels[0],
                                            "name": labels[1]})


def test_maps_nvml_units_and_labels_per_gpu() -> None:
    registry = CollectorRegistry()
    GPUCollector(registry=registry, nvml=fake_nvml([H100, T4]))
    assert sample(registry, "inferwatch_gpu_available") == 1
    assert sample(registry, "inferwatch_gpu_utilization_ratio", "0") == 0.93
    assert sample(registry, "inferwatch_gpu_memory_used_bytes", "0") == 60 << 30
    assert sample(registry, "inferwatch_gpu_memory_total_bytes", "1") == 16 << 30
    assert sample(registry, "inferwatch_gpu_temperature_celsius", "0") == 61
    assert sample(registry, "inferwatch_gpu_power_watts", "0") == 312.5
    assert sample(registry, "inferwatch_gpu_energy_joules_total", "0") == 4200
    assert sample(registry, "inferwatch_gpu_utilization_ratio", "1") == 0
    text = generate_latest(registry).decode()
    assert "# TYPE inferwatch_gpu_energy_joules_total counter" in text


def test_unsupported_reading_leaves_one_series_out_and_logs_once(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    GPUCollector(registry=registry, nvml=fake_nvml([H100, T4]))
    with caplog.at_level(logging.WARNING, "inferwatch.metrics.gpu"):
        generate_latest(registry)
        generate_latest(registry)
    assert sample(registry, "inferwatch_gpu_power_watts", "1") is None
    assert sample(registry, "inferwatch_gpu_power_watts", "0") == 312.5
    assert sample(registry, "inferwatch_gpu_temperature_celsius", "1") == 35
    assert len([r for r in caplog.records if "power" in r.getMessage()]) == 1


def test_driver_missing_exports_zero_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "inferwatch.metrics.gpu"):
        registry = CollectorRegistry()
        GPUCollector(registry=registry, nvml=fake_nvml([H100], init_error=True))
        for _ in range(3):
            text = generate_latest(registry).decode()
    assert sample(registry, "inferwatch_gpu_available") == 0
    assert "inferwatch_gpu_utilization_ratio" not in text
    assert [r.getMessage() for r in caplog.records] == [
        "GPU metrics off: no NVIDIA driver or GPU (Driver Not Loaded)"]


def test_no_gpu_exports_zero() -> None:
    registry = CollectorRegistry()
    GPUCollector(registry=registry, nvml=fake_nvml([]))
    assert sample(registry, "inferwatch_gpu_available") == 0


def test_package_missing_names_the_extra(caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with caplog.at_level(logging.INFO, "inferwatch.metrics.gpu"):
        registry = CollectorRegistry()
        GPUCollector(registry=registry)
    assert sample(registry, "inferwatch_gpu_available") == 0
    assert INSTALL_HINT in caplog.text


def test_real_nvml_reports_what_this_machine_has() -> None:
    """The real binding: without a driver the absent path (0, not an error); on a GPU
    machine the GPU itself."""
    pynvml = pytest.importorskip("pynvml", reason="needs nvidia-ml-py (the gpu extra)")
    registry = CollectorRegistry()
    collector = GPUCollector(registry=registry, nvml=pynvml)
    assert sample(registry, "inferwatch_gpu_available") == (1 if collector.available else 0)
