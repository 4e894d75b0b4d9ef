"""Per-model service level objectives: they set the alert thresholds.

The file is YAML::

    models:
      digits:
        availability: 0.999          # share of requests that must not fail (5xx)
        latency:
          objective: 0.99            # share of successful requests faster than ...
          threshold_seconds: 0.025   # ... this, which must be a histogram bucket bound
        window: 30d                  # the error budget's period
        expect_traffic: true         # alert when the model gets no requests
        accuracy: 0.9                # alert when feedback accuracy falls below
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from inferwatch.metrics import DEFAULT_LATENCY_BUCKETS
from inferwatch.stack.profiles import parse_duration


class SLOError(ValueError):
    pass


@dataclass(frozen=True)
class SLO:
    model: str
    availability: float
    latency_objective: float
    latency_threshold: float
    window: str = "30d"
    expect_traffic: bool = False
    accuracy: float | None = None  # least top-1 accuracy from labelled feedback

    @property
    def error_budget(self) -> float:
        return 1 - self.availability

    @property
    def latency_budget(self) -> float:
        return 1 - self.latency_objective

    @property
    def le(self) -> str:
        """The threshold as Prometheus writes the ``le`` label of its bucket."""
        return floatToGoString(self.latency_threshold)


def _ratio(model: str, key: str, value: Any) -> float:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise SLOError(f"{model}: {key} must be a number between 0 and 1, got {value!r}")
    return float(value)


def parse_slos(data: Any, buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS) -> list[SLO]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise SLOError("an SLO file needs a `models:` mapping")
    slos = []
    for model, spec in data["models"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("latency"), dict):
            raise SLOError(f"{model}: needs availability and latency: {{objective, "
                           "threshold_seconds}}")
        threshold = spec["latency"].get("threshold_seconds")
        if threshold not in buckets:
            near = sorted(buckets, key=lambda b: abs(b - float(threshold or 0)))[:2]
            raise SLOError(
                f"{model}: latency threshold_seconds {threshold!r} is not a histogram bucket "
                f"bound, so the SLI could only be estimated; nearest bounds: "
                f"{', '.join(f'{b:g}' for b in sorted(near))}")
        window = str(spec.get("window", "30d"))
        parse_duration(window)
        slos.append(SLO(
            model=str(model),
            availability=_ratio(model, "availability", spec.get("availability")),
            latency_objective=_ratio(model, "latency.objective", spec["latency"].get(
                "objective")),
            latency_threshold=float(threshold),
            window=window,
            expect_traffic=bool(spec.get("expect_traffic", False)),
            accuracy=None if spec.get("accuracy") is None else _ratio(
                model, "accuracy", spec["accuracy"]),
        ))
    return slos


def load_slos(path: Path | None = None) -> list[SLO]:
    """SLOs from ``path``, or the defaults shipped with inferwatch."""
    if path is None:
        text = resources.files("inferwatch.stack").joinpath("slo.yml").read_text()
    else:
        text = path.read_text()
    return parse_slos(yaml.safe_load(text))
