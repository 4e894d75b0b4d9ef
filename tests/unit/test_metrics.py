import asyncio
import itertools
import time
import unittest.mock

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from inferwatch.metrics import (
    DEFAULT_LATENCY_BUCKETS,
    REASON_STATE_KEY,
    UNKNOWN_MODEL,
    InferenceMetrics,
    MetricsMiddleware,
    log_buckets,
)
from inferwatch.metrics.exposition import render_exposition


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def series_count(registry: CollectorRegistry) -> int:
    return sum(len(m.samples) for m in registry.collect())


def test_buckets_are_sorted_fine_and_cover_service_range() -> None:
    b = DEFAULT_LATENCY_BUCKETS
    assert list(b) == sorted(set(b))
    assert b[0] <= 0.0005 and b[-1] >= 10
    assert max(hi / lo for lo, hi in itertools.pairwise(b)) <= 7 / 6 + 1e-9
    assert log_buckets(0.1, 1, (1, 5)) == (0.1, 0.5, 1.0)
    with pytest.raises(ValueError):
        log_buckets(1, 0.5)


def test_series_exist_at_zero_for_known_models() -> None:
    reg = CollectorRegistry()
    InferenceMetrics({"digits": "1"}, registry=reg)
    assert value(reg, "inference_requests_total", model="digits", version="1") == 0
    assert value(reg, "inference_errors_total", model="digits", version="1") == 0
    assert value(reg, "inference_latency_seconds_count", model="digits", version="1") == 0


def test_track_counts_success_client_and_server_errors() -> None:
    reg = CollectorRegistry()
    m = InferenceMetrics({"digits": "1"}, registry=reg)
    with m.track("digits"):
        pass
    with m.track("digits") as t:
        t.status, t.reason = 400, "invalid_image"
    with pytest.raises(RuntimeError), m.track("digits"):
        raise RuntimeError("boom")
    labels = {"model": "digits", "version": "1"}
    assert value(reg, "inference_requests_total", **labels) == 3
    assert value(reg, "inference_errors_total", **labels) == 1  # only the 500
    assert value(reg, "inference_latency_seconds_count", **labels) == 1  # only the success
    assert value(reg, "inference_responses_total", code="400", **labels) == 1
    assert value(reg, "inference_responses_total", code="500", **labels) == 1
    assert value(reg, "inference_error_reasons_total", reason="invalid_image", **labels) == 1
    assert value(reg, "inference_error_reasons_total", reason="internal", **labels) == 1


def test_free_text_reason_and_odd_status_stay_bounded() -> None:
    reg = CollectorRegistry()
    m = InferenceMetrics(["m"], registry=reg)
    m.observe_request("m", 418, 0.1, reason="user 42 sent a teapot")
    assert value(reg, "inference_responses_total", model="m", version="", code="4xx") == 1
    assert value(reg, "inference_error_reasons_total", model="m", version="",
                 reason="internal") == 1


def test_unknown_model_names_never_create_series() -> None:
    reg = CollectorRegistry()
    m = InferenceMetrics({"digits": "1"}, registry=reg)
    m.observe_request("bogus-0", 404, 0.001, "unknown_model")
    before = series_count(reg)
    for i in range(2000):
        m.observe_request(f"bogus-{i}", 404, 0.001, "unknown_model")
        m.observe_stage(f"bogus-{i}", "compute", 0.1)
    assert series_count(reg) == before
    assert value(reg, "inference_requests_total", model=UNKNOWN_MODEL, version="") == 2001
    assert b"bogus" not in generate_latest(reg)


def test_decorator_sync_and_async() -> None:
    reg = CollectorRegistry()
    m = InferenceMetrics(["m"], registry=reg)

    @m.instrument("m")
    def f(x: int) -> int:
        return x + 1

    @m.instrument("m")
    async def g(x: int) -> int:
        return x * 2

    assert f(1) == 2
    assert asyncio.run(g(2)) == 4
    assert value(reg, "inference_requests_total", model="m", version="") == 2


def _app() -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        kind = request.query_params.get("kind")
        if kind == "bad":
            setattr(request.state, REASON_STATE_KEY, "invalid_image")
            return JSONResponse({"error": "invalid_image"}, 400)
        if kind == "crash":
            raise RuntimeError("crash")
        return JSONResponse({"ok": True})

    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    return Starlette(routes=[Route("/predictions/{model}", predict, methods=["POST"]),
                             Route("/other", other)])


def test_middleware_counts_statuses_and_reasons_from_state() -> None:
    reg = CollectorRegistry()
    m = InferenceMetrics({"digits": "1"}, registry=reg)
    app = MetricsMiddleware(_app(), m)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.post("/predictions/digits")).status_code == 200
            assert (await c.post("/predictions/digits?kind=bad")).status_code == 400
            assert (await c.post("/predictions/digits?kind=crash")).status_code == 500
            assert (await c.post("/predictions/other-model")).status_code == 200
            assert (await c.get("/other")).status_code == 200

    asyncio.run(run())
    labels = {"model": "digits", "version": "1"}
    assert value(reg, "inference_requests_total", **labels) == 3
    assert value(reg, "inference_errors_total", **labels) == 1
    assert value(reg, "inference_error_reasons_total", reason="invalid_image", **labels) == 1
    assert value(reg, "inference_error_reasons_total", reason="internal", **labels) == 1
    assert value(reg, "inference_requests_total", model=UNKNOWN_MODEL, version="") == 1
    assert value(reg, "inference_in_flight_requests", **labels) == 0


def test_recorder_records_fold_into_the_same_series_as_per_call_observations() -> None:
    """A RequestRecorder's records, from ``succeeded`` or ``_append(_pack(...))`` and folded
    at collection, read exactly as the per-call path would have written them."""
    from inferwatch.metrics.instruments import _SharedRecorder

    timings = [(0.004, 1e-4, 2e-4, 3e-3, 5e-5), (0.02, 2e-3, 1e-3, 0.015, 1e-4),
               (0.3, 0.01, 0.2, 0.05, 2e-3)] * 700  # past the fold at 4,096 numbers
    expositions = []
    for make in ("recorder", "per call"):
        registry = CollectorRegistry()
        metrics = InferenceMetrics({"a": "1", "b": "2"}, registry=registry)
        recorders = {m: metrics.recorder(m) if make == "recorder"
                     else _SharedRecorder(metrics, m, metrics.in_flight_gauge(m))
                     for m in ("a", "b")}
        for i, (total, pre, queue, compute, post) in enumerate(timings):
            recorder = recorders["ab"[i % 2]]
            recorder.active += 1
            recorder.batch(1 + i % 3)
            # stand-ins for the perf_counter readings: "now" is read inside succeeded, and
            # given to _pack (serve's handler: the same record without a Python call)
            if i % 4:
                with unittest.mock.patch("time.perf_counter", return_value=1000.0):
                    recorder.succeeded(1000.0 - total, pre, queue, compute, 1000.0 - post)
            else:
                recorder._append(recorder._pack(1000.0 - total, pre, queue, compute,
                                                1000.0 - post, 1000.0, b"r-%d" % i))
            recorder.active -= 1
        recorders["a"].active += 1  # one request still in flight
        metrics.observe_request("b", 503, 0.0, "overloaded")  # failures go per call
        expositions.append({line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                            for line in generate_latest(registry).decode().splitlines()
                            if not line.startswith("#") and "_created" not in line})
        assert value(registry, "inference_in_flight_requests", model="a", version="1") == 1
    recorded, per_call = expositions
    assert recorded == pytest.approx(per_call)  # sums differ only in rounding order
    assert recorded['inference_requests_total{model="b",version="2"}'] == 1051
    assert recorded['inference_responses_total{code="200",model="a",version="1"}'] == 1050
    assert recorded['inference_batch_size_count{model="a",version="1"}'] == 1050
    assert recorded['inference_stage_seconds_count{model="a",stage="queue",version="1"}'] == 1050


def test_recorder_batch_folds_records_appended_without_succeeded() -> None:
    """``_append(_pack(...))`` checks no bound; ``batch``, once per model call, folds the
    records when they reach the bound, however many requests shared the calls."""
    from inferwatch.metrics import instruments

    registry = CollectorRegistry()
    recorder = InferenceMetrics({"a": "1"}, registry=registry).recorder("a")
    records, longest = recorder._records, 0
    for _ in range(1000):  # 16 requests a model call: far fewer batches than records
        recorder.batch(16)
        for _ in range(16):
            recorder._append(recorder._pack(1.0, 1e-4, 1e-4, 1e-4, 2.0, 2.0, b""))
        longest = max(longest, len(records))
    bound = instruments._FOLD_AT * instruments._RAW_RECORD
    assert bound <= longest < bound + 16 * instruments._RAW_RECORD
    assert value(registry, "inference_requests_total", model="a", version="1") == 16_000


def test_recorder_refuses_a_model_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        InferenceMetrics(["a"], registry=CollectorRegistry()).recorder("b")


def latency_exemplars(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    """(le, labels, value) of every exemplar of the latency histogram."""
    return [(s.labels["le"], s.exemplar.labels, s.exemplar.value)
            for m in registry.collect() if m.name == "inference_latency_seconds"
            for s in m.samples if s.exemplar is not None]


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"traceparent": TRACEPARENT, "X-Request-ID": "r-1"},
     {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}),
    ({"traceparent": TRACEPARENT.replace("4bf92f3577b34da6a3ce929d0e0e4736", "0" * 32),
      "X-Request-ID": "r-1"}, {"request_id": "r-1"}),  # an invalid trace id
    ({"X-Request-ID": "a b<c>"}, {"request_id": "answered-7"}),  # unsafe: the app's own
    ({"X-Request-ID": "x" * 65}, {"request_id": "answered-7"}),
    ({}, {"request_id": "answered-7"}),
])
def test_middleware_exemplar_leads_to_the_request(headers: dict[str, str],
                                                  expected: dict[str, str]) -> None:
    async def predict(request: Request) -> JSONResponse:
        answered = {"X-Request-ID": "answered-7"} if "quiet" not in request.query_params else {}
        return JSONResponse({"ok": True}, 400 if "bad" in request.query_params else 200,
                            headers=answered)

    reg = CollectorRegistry()
    app = MetricsMiddleware(Starlette(routes=[Route("/predictions/{model}", predict,
                                                    methods=["POST"])]),
                            InferenceMetrics({"digits": "1"}, registry=reg))

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.post("/predictions/digits?bad=1", headers=headers)).status_code \
                == 400  # failures have no latency, and no exemplar
            assert latency_exemplars(reg) == []
            assert (await c.post("/predictions/digits", headers=headers)).status_code == 200

    asyncio.run(run())
    [(_, labels, seconds)] = latency_exemplars(reg)
    assert labels == expected
    assert value(reg, "inference_latency_seconds_sum", model="digits", version="1") == seconds
    body, _ = render_exposition(reg, "application/openmetrics-text")
    key, v = next(iter(expected.items()))
    assert f'# {{{key}="{v}"}} '.encode() in body


def test_middleware_without_any_request_id_keeps_no_exemplar() -> None:
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    reg = CollectorRegistry()
    app = MetricsMiddleware(Starlette(routes=[Route("/predictions/{model}", predict,
                                                    methods=["POST"])]),
                            InferenceMetrics({"digits": "1"}, registry=reg))

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.post("/predictions/digits")).status_code == 200

    asyncio.run(run())
    assert value(reg, "inference_latency_seconds_count", model="digits", version="1") == 1
    assert latency_exemplars(reg) == []


def test_recorder_keeps_the_latest_request_id_of_each_latency_bucket() -> None:
    """Records fold into exemplars as observe would set them: per bucket the latest
    request that came with an id, its latency as the value, its end as the timestamp."""
    reg = CollectorRegistry()
    metrics = InferenceMetrics({"a": "1", "b": "2"}, registry=reg)
    recorders = {m: metrics.recorder(m) for m in ("a", "b")}
    before = time.time()
    for model, seconds, rid in [("a", 0.00104, "fast-1"), ("a", 0.00106, "fast-2"),
                                ("b", 0.00104, "other-model"), ("a", 0.3, "slow-1"),
                                ("a", 0.00105, "")]:  # no id: the bucket keeps fast-2's
        now = time.perf_counter()
        recorders[model].succeeded(now - seconds, 0.0, 0.0, 0.0, now, rid)
    after = time.time()
    found = {(s.labels["model"], s.exemplar.labels["request_id"]): s.exemplar
             for m in reg.collect() if m.name == "inference_latency_seconds"
             for s in m.samples if s.exemplar is not None}
    assert set(found) == {("a", "fast-2"), ("a", "slow-1"), ("b", "other-model")}
    assert found[("a", "slow-1")].value == pytest.approx(0.3, abs=1e-3)
    assert all(before <= e.timestamp <= after for e in found.values())
    metrics.observe_request("a", 200, 0.00105, exemplar={"request_id": "per-call"})
    found = {(s.labels["model"], s.exemplar.labels["request_id"]): s.exemplar
             for m in reg.collect() if m.name == "inference_latency_seconds"
             for s in m.samples if s.exemplar is not None}
    assert set(found) == {("a", "per-call"), ("a", "slow-1"), ("b", "other-model")}
    with pytest.raises(ValueError):
        recorders["a"].succeeded(0.0, 0.0, 0.0, 0.0, 0.0, "x" * 65)
