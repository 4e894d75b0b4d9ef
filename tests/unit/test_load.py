import asyncio
import base64
import io
import json
import math
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from servers import serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferwatch.models.digits import heldout_digits
from inferwatch.operate.load import (
    LoadPlan,
    LoadResult,
    Payload,
    build_payloads,
    prometheus_window,
    report,
    run_load_sync,
    run_with_progress,
)
from inferwatch.operate.promapi import PrometheusAPI


@dataclass
class Arrival:
    index: int
    at: float  # time.perf_counter(), the clock run_load schedules on
    path: str
    content_type: str
    body: bytes


@dataclass
class FakeService:
    """Records every request; told per arrival index to sleep or to answer 500."""

    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    sleep: dict[int, float] = field(default_factory=dict)
    fail_every: int = 0
    shed_every: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    _next: int = 0

    async def handle(self, request: Request) -> Response:
        index, self._next = self._next, self._next + 1
        at = time.perf_counter()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.body()
            self.arrivals.append(Arrival(index, at, request.url.path,
                                         request.headers.get("content-type", ""), body))
            if index in self.sleep:
                await asyncio.sleep(self.sleep[index])
            if self.fail_every and index % self.fail_every == self.fail_every - 1:
                return JSONResponse({"error": "injected"}, status_code=500)
            if self.shed_every and index % self.shed_every == self.shed_every - 1:
                return JSONResponse({"error": "overloaded"}, status_code=503,
                                    headers={"Retry-After": "1"})
            return JSONResponse({"label": "0"})
        finally:
            self.in_flight -= 1


@pytest.fixture
def service() -> Iterator[FakeService]:
    fake = FakeService()
    app = Starlette(routes=[Route("/{path:path}", fake.handle, methods=["POST"])])
    with serving(app, start_timeout=10, lifespan="off") as url:
        fake.url = url
        yield fake


_PAYLOADS: dict[str, list[Payload]] = {}


def payloads(route: Any = "predictions") -> list[Payload]:
    if route not in _PAYLOADS:
        _PAYLOADS[route] = build_payloads(route)
    return _PAYLOADS[route]


def test_plan_total_and_validation() -> None:
    url = "http://127.0.0.1:1"
    assert LoadPlan(url, rate=50, duration=1).total == 50
    assert LoadPlan(url, rate=50, count=10, duration=1).total == 10
    assert LoadPlan(url, rate=50, count=100, duration=0.5).total == 25
    assert LoadPlan(url, rate=1, duration=0.01).total == 1
    for bad in ({"rate": 10}, {"rate": 0, "count": 1}, {"rate": 1, "count": 0},
                {"rate": 1, "count": 1, "route": "grpc"}, {"rate": 1, "duration": -1}):
        with pytest.raises(ValueError):
            LoadPlan(url, **bad)


def test_sends_exactly_count(service: FakeService) -> None:
    result = run_load_sync(LoadPlan(service.url, rate=200, count=20), payloads=payloads())
    assert result.sent == 20
    assert len(service.arrivals) == 20
    assert result.ok == 20 and result.statuses == {200: 20} and result.errors == 0
    assert len(result.latencies_ok) == 20 and (result.latencies_ok > 0).all()
    assert result.started_at <= result.ended_at
    assert result.achieved_rate > 0


def test_counts_statuses(service: FakeService) -> None:
    service.fail_every = 4
    result = run_load_sync(LoadPlan(service.url, rate=200, count=20), payloads=payloads())
    assert result.statuses == {200: 15, 500: 5}
    assert result.ok == 15 and result.errors == 5
    assert len(result.latencies_ok) == 15
    assert result.retry_after == 0


def test_counts_shed_responses_with_retry_after(service: FakeService) -> None:
    service.shed_every = 2
    result = run_load_sync(LoadPlan(service.url, rate=200, count=20), payloads=payloads())
    assert result.statuses == {200: 10, 503: 10} and result.retry_after == 10
    out = io.StringIO()
    assert report(result, Console(file=out, width=120))["retry_after"] == 10
    assert "with Retry-After" in out.getvalue()


def test_open_loop_keeps_sending_while_the_server_stalls(service: FakeService) -> None:
    service.sleep = {0: 0.5}
    result = run_load_sync(LoadPlan(service.url, rate=50, count=40), payloads=payloads())
    assert result.sent == 40 and result.ok == 40
    first = min(a.at for a in service.arrivals)
    during_stall = [a for a in service.arrivals if first < a.at < first + 0.5]
    # About 25 are due during the stall; a closed-loop client would send none.
    assert len(during_stall) >= 10
    assert result.latencies_ok.max() >= 0.5


def test_max_in_flight_sends_late_and_measures_from_schedule(service: FakeService) -> None:
    service.sleep = {0: 0.3}
    plan = LoadPlan(service.url, rate=50, count=5, max_in_flight=1)
    result = run_load_sync(plan, payloads=payloads())
    assert result.sent == 5 and result.ok == 5
    assert service.max_in_flight == 1
    assert result.late >= 1
    # Requests due at 20-80 ms waited for the stalled one: their wait counts as latency.
    assert (result.latencies_ok >= 0.2).sum() >= 2


def test_duration_stops_the_run(service: FakeService) -> None:
    start = time.monotonic()
    result = run_load_sync(LoadPlan(service.url, rate=40, duration=0.5), payloads=payloads())
    assert time.monotonic() - start < 5
    assert result.sent == 20 and len(service.arrivals) == 20

    plan = LoadPlan(service.url, rate=40, count=1000, duration=0.25)
    assert run_load_sync(plan, payloads=payloads()).sent == 10


@pytest.mark.parametrize("route", ["predictions", "infer", "v2"])
def test_routes_send_the_right_payloads(service: FakeService, route: Any) -> None:
    result = run_load_sync(LoadPlan(service.url, rate=100, count=3, route=route))
    assert result.ok == 3
    digits = heldout_digits()
    expected = {a.body for a in build_payloads(route)[:3]}
    assert {a.body for a in service.arrivals} == expected
    for arrival in service.arrivals:
        if route == "predictions":
            assert arrival.path == "/predictions/digits"
            assert arrival.content_type == "image/png"
            assert Image.open(io.BytesIO(arrival.body)).size == (8, 8)
        elif route == "infer":
            assert arrival.path == "/infer"
            assert arrival.content_type == "application/json"
            png = base64.b64decode(json.loads(arrival.body)["image_base64"])
            assert Image.open(io.BytesIO(png)).size == (8, 8)
        else:
            assert arrival.path == "/v2/models/digits/infer"
            assert arrival.content_type == "application/json"
            (tensor,) = json.loads(arrival.body)["inputs"]
            assert tensor["name"] == "input-0" and tensor["datatype"] == "FP32"
            assert tensor["shape"] == [1, 8, 8]
            assert len(tensor["data"]) == 64
            assert all(isinstance(v, float) for v in tensor["data"])
    if route == "v2":
        first = json.loads(build_payloads("v2")[0].body)["inputs"][0]["data"]
        assert first == digits.images[0].reshape(-1).tolist()


def test_payloads_are_labelled_and_cycled(service: FakeService) -> None:
    digits = heldout_digits()
    built = payloads()
    assert [p.label for p in built] == digits.labels.tolist()
    assert built == build_payloads("predictions")

    two = [Payload("/a", b"a", "text/plain", 0), Payload("/b", b"b", "text/plain", 1)]
    run_load_sync(LoadPlan(service.url, rate=200, count=5), payloads=two)
    assert Counter(a.path for a in service.arrivals) == {"/a": 3, "/b": 2}


def test_transport_errors_are_counted_by_class() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_load_sync(LoadPlan(f"http://127.0.0.1:{port}", rate=100, count=3),
                           payloads=payloads())
    assert result.sent == 3 and result.ok == 0 and result.errors == 3
    assert sum(result.transport_errors.values()) == 3
    assert all("Connect" in name for name in result.transport_errors)
    assert result.quantile(0.5) is None


def test_timeouts_are_transport_errors(service: FakeService) -> None:
    service.sleep = {0: 0.6}
    plan = LoadPlan(service.url, rate=100, count=3, timeout=0.2)
    result = run_load_sync(plan, payloads=payloads())
    assert result.ok == 2
    assert sum(result.transport_errors.values()) == 1
    assert all("Timeout" in name for name in result.transport_errors)


def test_quantile_and_errors() -> None:
    result = LoadResult(sent=6, ok=4, statuses={200: 4, 503: 1},
                        transport_errors={"ClientConnectorError": 1},
                        latencies_ok=np.array([0.1, 0.2, 0.3, 0.4]))
    assert result.quantile(0.5) == pytest.approx(0.25)
    assert result.quantile(1.0) == pytest.approx(0.4)
    assert result.errors == 2
    assert LoadResult().quantile(0.99) is None


def test_run_with_progress(service: FakeService) -> None:
    console = Console(file=io.StringIO(), width=100)
    result = run_with_progress(LoadPlan(service.url, rate=200, count=5), console)
    assert result.sent == 5 and len(service.arrivals) == 5


def test_report_without_prometheus() -> None:
    result = LoadResult(sent=3, ok=2, statuses={200: 2, 500: 1},
                        latencies_ok=np.array([0.010, 0.020]), started_at=100.0,
                        ended_at=101.0, achieved_rate=3.0)
    out = io.StringIO()
    numbers = report(result, Console(file=out, width=120))
    assert numbers["sent"] == 3 and numbers["ok"] == 2 and numbers["errors"] == 1
    assert numbers["statuses"] == {"200": 2, "500": 1}
    assert numbers["p50_ms"] == pytest.approx(15.0)
    assert "prometheus" not in numbers
    json.dumps(numbers)
    text = out.getvalue()
    assert "p99 latency" in text and "HTTP 500" in text


class FakePrometheus(PrometheusAPI):
    def __init__(self, values: dict[str, float | None]) -> None:
        super().__init__("http://127.0.0.1:9")
        self.values = values
        self.queries: list[tuple[str, float | None]] = []

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        self.queries.append((expr, at))
        for key, value in self.values.items():
            if key in expr:
                return value
        raise AssertionError(expr)


def test_prometheus_window_covers_the_load() -> None:
    result = LoadResult(started_at=1000.0, ended_at=1010.0)
    at, window = prometheus_window(result, scrape_interval=1.0, margin=0.5)
    assert at == 1011.5
    assert window == 13
    assert at - window <= result.started_at - 1.0


def test_report_with_prometheus() -> None:
    now = time.time()
    result = LoadResult(sent=4, ok=4, statuses={200: 4},
                        latencies_ok=np.array([0.01, 0.02, 0.03, 0.04]),
                        started_at=now - 12.0, ended_at=now - 5.0, achieved_rate=0.5)
    prom = FakePrometheus({
        "histogram_quantile(0.5,": 0.02, "histogram_quantile(0.95,": 0.045,
        "histogram_quantile(0.99,": math.nan, "increase(inference_requests_total": 4.4,
        "sum(inference_requests_total": 104.0,
    })
    out = io.StringIO()
    numbers = report(result, Console(file=out, width=120), prom, model="digits",
                     scrape_interval=1.0, prom_count_before=100.0)
    prom.close()
    p = numbers["prometheus"]
    assert p["p50_ms"] == pytest.approx(20.0) and p["p95_ms"] == pytest.approx(45.0)
    assert p["p99_ms"] is None
    assert p["requests_increase"] == 4.4 and p["requests_delta"] == 4.0
    assert p["window_s"] == 10
    assert all(at == p["at"] for _, at in prom.queries)
    bucket = 'inference_latency_seconds_bucket{model="digits"}[10s]'
    assert any(bucket in expr and expr.endswith("by (le))") for expr, _ in prom.queries)
    json.dumps(numbers)
    assert "prometheus" in out.getvalue()
