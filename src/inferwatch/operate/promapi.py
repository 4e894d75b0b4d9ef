"""A small client for Prometheus' and Alertmanager's HTTP APIs."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx


class PrometheusError(RuntimeError):
    pass


# VictoriaMetrics exports each command-line flag as a series of its /metrics; Prometheus none.
_VM_FLAG = re.compile(r'^flag\{name="([^"]*)", value="((?:[^"\\]|\\.)*)"', re.MULTILINE)


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PrometheusAPI:
    """Queries a Prometheus server.

    >>> prom = PrometheusAPI("http://127.0.0.1:9090")  # doctest: +SKIP
    >>> prom.scalar("sum(inference_requests_total)")  # doctest: +SKIP
    120.0

    ``auth`` is ``(user, password)`` for a Prometheus behind basic auth (``web.config.file``).
    """

    def __init__(self, url: str, timeout: float = 10.0,
                 auth: tuple[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout, auth=auth)

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, **params: Any) -> Any:
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.url}{path}: {exc}") from exc
        # VictoriaMetrics answers a range vector as application/stream+json.
        media = response.headers.get("content-type", "").split(";")[0]
        body = response.json() if media.endswith(("/json", "+json")) else {}
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"{path} {params}: HTTP {response.status_code}: "
                f"{body.get('error', response.text[:200])}"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None, *, nocache: bool = False
              ) -> list[Sample]:
        """``nocache``: VictoriaMetrics answers a query near now as of now, not as of its
        ``-search.latencyOffset`` (30 s by default) ago; Prometheus ignores it."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        if nocache:
            params["nocache"] = 1
        data = self._get("/api/v1/query", **params)
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        return [Sample(r["metric"], float(r["value"][1])) for r in data["result"]]

    def scalar(self, expr: str, at: float | None = None, *, nocache: bool = False
               ) -> float | None:
        """The single value of ``expr``, or None when it returns nothing."""
        samples = self.query(expr, at, nocache=nocache)
        if not samples:
            return None
        if len(samples) > 1:
            raise PrometheusError(f"{expr} returned {len(samples)} series, expected one")
        return samples[0].value

    def query_range(self, expr: str, start: float, end: float, step: float, *,
                    nocache: bool = False) -> Any:
        """``nocache``: VictoriaMetrics skips its cache of range results."""
        params: dict[str, Any] = {"query": expr, "start": start, "end": end, "step": step}
        if nocache:
            params["nocache"] = 1
        return self._get("/api/v1/query_range", **params)

    def raw_samples(self, selector: str, start: float, end: float
                    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """The samples of ``selector`` stored in [``start``, ``end``] with their scrape
        timestamps, not evaluated at steps: ``[(labels, [(t, value), ...]), ...]``."""
        window_ms = max(1, math.ceil((end - start) * 1000))
        data = self._get("/api/v1/query", query=f"{selector}[{window_ms}ms]", time=end)
        return [(r["metric"], [(float(t), float(v)) for t, v in r["values"]])
                for r in data["result"]]

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Values of ``label``, on series matching ``match`` when given."""
        params = {"match[]": match} if match else {}
        return list(self._get(f"/api/v1/label/{label}/values", **params))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])

    def victoria_metrics_flags(self) -> dict[str, str] | None:
        """The flags of a VictoriaMetrics server (secrets read ``secret``); None for any other.
        Its /metrics answers without the basic auth that its APIs require."""
        try:
            response = self._client.get("/metrics")
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.url}/metrics: {exc}") from exc
        flags = dict(_VM_FLAG.findall(response.text)) if response.status_code == 200 else {}
        return flags or None

    def ready(self) -> bool:
        try:
            return self._client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_scrape(self, job: str, after: float, timeout: float = 30.0) -> None:
        """Block until every target of ``job`` was scraped successfully after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = [t for t in self.targets() if t["labels"].get("job") == job]
            if targets and all(
                t["health"] == "up" and _rfc3339(t["lastScrape"]) > after for t in targets
            ):
                return
            time.sleep(0.2)
        raise PrometheusError(f"job {job!r} was not scraped after {after} within {timeout}s")


def _rfc3339(value: str) -> float:
    from datetime import datetime

    # Prometheus writes nanoseconds; datetime takes at most microseconds.
    head, _, rest = value.partition(".")
    frac = ""
    tz = rest
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            frac, tz = rest[:i], rest[i:]
            break
    text = f"{head}.{(frac or '0')[:6].ljust(6, '0')}{tz}".replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()
