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
      # An LLM's streams, where the proxy or vLLM measure them: p95 within each threshold.
      time_to_first_token: {objective: 0.95, threshold_seconds: 1.0}
      inter_token_latency: {objective: 0.95, threshold_seconds: 0.1}

Each objective may be left out: no objective, no alert. A model whose server exports no
per-model failures, no latency histogram or no LLM series gets none of the objectives they
would measure (``stack/monitor.py``).
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
from inferwatch.metrics.buckets import (
    DEFAULT_INTER_TOKEN_BUCKETS,
    DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS,
)
from inferwatch.metrics.names import (
    INTER_TOKEN_LATENCY_SECONDS,
    LATENCY_SECONDS,
    TIME_TO_FIRST_TOKEN_SECONDS,
)
from inferwatch.stack.profiles import parse_duration


class SLOError(ValueError):
    pass


@dataclass(frozen=True)
class LatencyObjective:
    """``objective`` (a share) of observations within ``threshold`` seconds, a bucket bound
    of the histogram: the share above it is then counted exactly. With 0.95, the p95 stays
    within the threshold."""

    objective: float
    threshold: float

    @property
    def budget(self) -> float:
        return 1 - self.objective

    @property
    def le(self) -> str:
        """The threshold as Prometheus writes the ``le`` label of its bucket."""
        return floatToGoString(self.threshold)


@dataclass(frozen=True)
class LatencySLI:
    """A histogram that an SLO file may set a :class:`LatencyObjective` on, under ``key``."""

    key: str
    histogram: str
    buckets: Sequence[float] | None  # None: the ones ``parse_slos`` is given


LATENCY_SLIS = (
    LatencySLI("latency", LATENCY_SECONDS, None),
    # LLM streams, measured by the proxy or a server (vLLM): the first token, and the gaps
    # between the next ones.
    LatencySLI("time_to_first_token", TIME_TO_FIRST_TOKEN_SECONDS,
               DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS),
    LatencySLI("inter_token_latency", INTER_TOKEN_LATENCY_SECONDS, DEFAULT_INTER_TOKEN_BUCKETS),
)


@dataclass(frozen=True)
class SLO:
    model: str
    availability: float | None  # None: no availability objective
    latency_objective: float | None  # None, with latency_threshold: no latency objective
    latency_threshold: float | None
    window: str = "30d"
    expect_traffic: bool = False
    accuracy: float | None = None  # least top-1 accuracy from labelled feedback
    time_to_first_token: LatencyObjective | None = None
    inter_token_latency: LatencyObjective | None = None

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

    def objective(self, sli: LatencySLI) -> LatencyObjective | None:
        """The objective on ``sli``'s histogram, if this SLO sets one."""
        latency = None
        if self.latency_objective is not None and self.latency_threshold is not None:
            latency = LatencyObjective(self.latency_objective, self.latency_threshold)
        return {"latency": latency, "time_to_first_token": self.time_to_first_token,
                "inter_token_latency": self.inter_token_latency}[sli.key]

    def measurable(self, errors: bool, latency_histogram: bool, *, first_token: bool,
                   inter_token: bool) -> SLO:
        """This SLO without the objectives that the model's series cannot measure: an alert
        on them would never evaluate."""
        return replace(
            self, availability=self.availability if errors else None,
            latency_objective=self.latency_objective if latency_histogram else None,
            latency_threshold=self.latency_threshold if latency_histogram else None,
            time_to_first_token=self.time_to_first_token if first_token else None,
            inter_token_latency=self.inter_token_latency if inter_token else None)


def _ratio(model: str, key: str, value: Any) -> float:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise SLOError(f"{model}: {key} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _parse_objective(model: str, key: str, spec: Any,
                     buckets: Sequence[float]) -> LatencyObjective | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise SLOError(f"{model}: {key} needs objective and threshold_seconds")
    threshold = spec.get("threshold_seconds")
    if threshold is None or threshold not in buckets:
        near = sorted(buckets, key=lambda b: abs(b - float(threshold or 0)))[:2]
        raise SLOError(
            f"{model}: {key} threshold_seconds {threshold!r} is not a histogram bucket "
            f"bound, so the SLI could only be estimated; nearest bounds: "
            f"{', '.join(f'{b:g}' for b in sorted(near))}")
    return LatencyObjective(_ratio(model, f"{key}.objective", spec.get("objective")),
                            float(threshold))


def _parse_slo(model: str, spec: Any, buckets: Sequence[float]) -> SLO:
    if not isinstance(spec, dict):
        raise SLOError(f"{model}: needs a mapping: availability, latency: {{objective, "
                       "threshold_seconds}}, time_to_first_token and inter_token_latency "
                       "(the same shape), window, expect_traffic, accuracy")
    found = {sli.key: _parse_objective(model, sli.key, spec.get(sli.key),
                                       buckets if sli.buckets is None else sli.buckets)
             for sli in LATENCY_SLIS}
    latency = found.pop("latency")
    window = str(spec.get("window", "30d"))
    parse_duration(window)
    return SLO(
        model=str(model),
        availability=None if spec.get("availability") is None else _ratio(
            model, "availability", spec["availability"]),
        latency_objective=None if latency is None else latency.objective,
        latency_threshold=None if latency is None else latency.threshold,
        window=window,
        expect_traffic=bool(spec.get("expect_traffic", False)),
        accuracy=None if spec.get("accuracy") is None else _ratio(
            model, "accuracy", spec["accuracy"]),
        time_to_first_token=found["time_to_first_token"],
        inter_token_latency=found["inter_token_latency"],
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
