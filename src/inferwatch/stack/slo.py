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
    defaults:                        # a model named nowhere above: one on a monitored server
      availability: 0.99
      latency: {objective: 0.95, threshold_seconds: 1.0}

``availability`` and ``latency`` may each be left out: no objective, no alert. A model whose
server exports no per-model failures or no latency histogram gets none (``stack/monitor.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
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
    availability: float | None  # None: no availability objective
    latency_objective: float | None  # None, with latency_threshold: no latency objective
    latency_threshold: float | None
    window: str = "30d"
    expect_traffic: bool = False
    accuracy: float | None = None  # least top-1 accuracy from labelled feedback

    def __post_init__(self) -> None:
        if (self.latency_objective is None) != (self.latency_threshold is None):
            raise SLOError(f"{self.model}: a latency objective needs both objective and "
                           "threshold_seconds")

    @property
    def error_budget(self) -> float:
        if self.availability is None:
            raise SLOError(f"{self.model} has no availability objective")
        return 1 - self.availability

    @property
    def latency_budget(self) -> float:
        if self.latency_objective is None:
            raise SLOError(f"{self.model} has no latency objective")
        return 1 - self.latency_objective

    @property
    def le(self) -> str:
        """The threshold as Prometheus writes the ``le`` label of its bucket."""
        if self.latency_threshold is None:
            raise SLOError(f"{self.model} has no latency objective")
        return floatToGoString(self.latency_threshold)

    def measurable(self, errors: bool, latency_histogram: bool) -> SLO:
        """This SLO without the objectives that the model's series cannot measure: an alert
        on them would never evaluate."""
        return replace(
            self, availability=self.availability if errors else None,
            latency_objective=self.latency_objective if latency_histogram else None,
            latency_threshold=self.latency_threshold if latency_histogram else None)


def _ratio(model: str, key: str, value: Any) -> float:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise SLOError(f"{model}: {key} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _parse_slo(model: str, spec: Any, buckets: Sequence[float]) -> SLO:
    if not isinstance(spec, dict):
        raise SLOError(f"{model}: needs a mapping: availability, latency: {{objective, "
                       "threshold_seconds}}, window, expect_traffic, accuracy")
    latency, objective, threshold = spec.get("latency"), None, None
    if latency is not None:
        if not isinstance(latency, dict):
            raise SLOError(f"{model}: latency needs objective and threshold_seconds")
        threshold = latency.get("threshold_seconds")
        if threshold not in buckets:
            near = sorted(buckets, key=lambda b: abs(b - float(threshold or 0)))[:2]
            raise SLOError(
                f"{model}: latency threshold_seconds {threshold!r} is not a histogram bucket "
                f"bound, so the SLI could only be estimated; nearest bounds: "
                f"{', '.join(f'{b:g}' for b in sorted(near))}")
        objective = _ratio(model, "latency.objective", latency.get("objective"))
    window = str(spec.get("window", "30d"))
    parse_duration(window)
    return SLO(
        model=str(model),
        availability=None if spec.get("availability") is None else _ratio(
            model, "availability", spec["availability"]),
        latency_objective=objective,
        latency_threshold=None if threshold is None else float(threshold),
        window=window,
        expect_traffic=bool(spec.get("expect_traffic", False)),
        accuracy=None if spec.get("accuracy") is None else _ratio(
            model, "accuracy", spec["accuracy"]),
    )


def _models_and_defaults(data: Any, buckets: Sequence[float]
                         ) -> tuple[list[SLO], SLO | None]:
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict) or not (
            "models" in data or "defaults" in data):
        raise SLOError("an SLO file needs a `models:` mapping (or `defaults:`)")
    slos = [_parse_slo(str(model), spec, buckets)
            for model, spec in data.get("models", {}).items()]
    defaults = data.get("defaults")
    return slos, None if defaults is None else _parse_slo("defaults", defaults, buckets)


def parse_slos(data: Any, buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS) -> list[SLO]:
    return _models_and_defaults(data, buckets)[0]


def _read(path: Path | None) -> Any:
    if path is None:
        return yaml.safe_load(resources.files("inferwatch.stack").joinpath("slo.yml").read_text())
    return yaml.safe_load(path.read_text())


def load_slos(path: Path | None = None) -> list[SLO]:
    """SLOs from ``path``, or the defaults shipped with inferwatch."""
    return parse_slos(_read(path))


def slos_for(models: Iterable[str], path: Path | None = None) -> list[SLO]:
    """SLOs of ``models``, served by a server that the stack monitors but does not run.

    A model that ``path`` names keeps its own; the others get the file's ``defaults`` (the
    built-in file's when it has none). The built-in file's models are inferwatch's own
    (`serve --model digits`): another server's model of the same name does not get them, an
    ``expect_traffic`` that would page whenever that server is idle among them.
    """
    named, defaults = ([], None) if path is None else _models_and_defaults(
        _read(path), DEFAULT_LATENCY_BUCKETS)
    defaults = defaults or _models_and_defaults(_read(None), DEFAULT_LATENCY_BUCKETS)[1]
    if defaults is None:
        raise SLOError("the built-in SLO file has no `defaults:`")
    own = {slo.model: slo for slo in named}
    return [own.get(model) or replace(defaults, model=model)
            for model in dict.fromkeys(models)]
