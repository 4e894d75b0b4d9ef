import asyncio
import base64
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from inferwatch.models.digits import digit_png, heldout_digits
from inferwatch.serve.app import ServeConfig, create_app

Client = httpx.AsyncClient


Test = Callable[[Client, CollectorRegistry], Coroutine[Any, Any, None]]


def run_with_client(test: Test, config: ServeConfig | None = None) -> None:
    registry = CollectorRegistry()
    run_app(test, create_app(config or ServeConfig(), registry), registry)


def run_app(test: Test, app: Starlette, registry: CollectorRegistry) -> None:
    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await test(c, registry)

    asyncio.run(main())


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"model": "digits", "version": "1", **labels}) or 0.0


def test_digits_model_accuracy_is_exported_and_above_095() -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        accuracy = count(reg, "inference_model_heldout_accuracy_ratio")
        assert accuracy >= 0.95
        assert "inference_model_heldout_accuracy_ratio" in (await c.get("/metrics")).text

    run_with_client(test)


def test_predictions_accepts_png_and_seed_base64_json() -> None:
    data = heldout_digits()

    async def test(c: Client, reg: CollectorRegistry) -> None:
        correct = 0
        for image, label in zip(data.images[:40], data.labels[:40], strict=True):
            png = digit_png(image)
            r1 = await c.post("/predictions/digits", content=png,
                              headers={"content-type": "image/png"})
            r2 = await c.post("/predictions/digits",
                              json={"image_base64": base64.b64encode(png).decode()})
            assert r1.status_code == r2.status_code == 200
            assert r1.json() == r2.json() and len(r1.json()) == 5
            assert r1.headers["x-request-id"]
            correct += max(r1.json(), key=r1.json().get) == str(label)
        assert correct >= 36
        assert count(reg, "inference_requests_total") == 80
        assert count(reg, "inference_latency_seconds_count") == 80
        assert count(reg, "inference_stage_seconds_count", stage="compute") == 80

    run_with_client(test)


def test_v2_infer_batch_metadata_and_health() -> None:
    data = heldout_digits()

    async def test(c: Client, reg: CollectorRegistry) -> None:
        body = {"id": "req-1", "inputs": [{"name": "input-0", "shape": [3, 64],
                                           "datatype": "FP32",
                                           "data": data.images[:3].ravel().tolist()}]}
        r = await c.post("/v2/models/digits/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert r.json()["id"] == "req-1"
        assert out["probabilities"]["shape"] == [3, 10]
        assert out["label"]["data"] == [int(x) for x in data.labels[:3]]
        r = await c.post("/v2/models/digits/versions/1/infer", json=body)
        assert r.status_code == 200
        meta = (await c.get("/v2/models/digits")).json()
        assert meta["inputs"][0]["shape"] == [-1, 8, 8]
        assert (await c.get("/v2/health/ready")).status_code == 200
        assert (await c.get("/ping")).json() == {"status": "Healthy"}
        assert (await c.get("/models")).json()["models"][0]["modelName"] == "digits"
        doc = (await c.get("/openapi.json")).json()
        assert "/v2/models/{model}/infer" in doc["paths"]
        assert count(reg, "inference_batch_size_sum") == 6

    run_with_client(test)


BAD_REQUESTS = [
    # (path, body, content-type, status, reason)
    ("/predictions/digits", b"", "image/png", 400, "empty_body"),
    ("/predictions/digits", b"not an image", "image/png", 400, "invalid_image"),
    ("/predictions/digits", b"{not json", "application/json", 400, "invalid_json"),
    ("/predictions/digits", b'{"image": 1}', "application/json", 400, "invalid_json"),
    ("/predictions/digits", b'{"image_base64": "@@@"}', "application/json", 400,
     "invalid_image"),
    ("/predictions/digits", b"x" * 5000, "image/png", 413, "body_too_large"),
    ("/predictions/nosuch", b"x", "image/png", 404, "unknown_model"),
    ("/v2/models/digits/infer", b'{"inputs": []}', "application/json", 400, "invalid_json"),
    ("/v2/models/digits/infer",
     b'{"inputs": [{"shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
     "application/json", 422, "invalid_shape"),
    ("/v2/models/digits/infer",
     b'{"inputs": [{"shape": [1, 64], "datatype": "FP32", "data": [1]}]}',
     "application/json", 422, "invalid_shape"),
    ("/v2/models/digits/infer",
     b'{"inputs": [{"shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]}',
     "application/json", 422, "invalid_shape"),
    ("/v2/models/digits/versions/9/infer", b"{}", "application/json", 404, "unknown_model"),
    # Once 500s: an int64 product that wraps to 0, a bool taken for an int, more dimensions
    # than numpy allows, an integer beyond float64.
    ("/v2/models/digits/infer", b'{"inputs": [{"shape": [4294967296, 4294967296], "data": []}]}',
     "application/json", 422, "invalid_shape"),
    ("/v2/models/digits/infer", b'{"inputs": [{"shape": [true, 64], "data": [' +
     b",".join([b"1"] * 64) + b"]}]}", "application/json", 422, "invalid_shape"),
    ("/v2/models/digits/infer", b'{"inputs": [{"shape": [' + b"1, " * 70 + b'64], "data": [' +
     b",".join([b"1"] * 64) + b"]}]}", "application/json", 422, "invalid_shape"),
    ("/v2/models/digits/infer", b'{"inputs": [{"shape": [1, 2], "data": [1, 1' + b"0" * 400 +
     b"]}]}", "application/json", 422, "invalid_shape"),
]


@pytest.mark.parametrize(("path", "body", "ctype", "status", "reason"), BAD_REQUESTS)
def test_bad_input_gets_4xx_with_reason_and_is_counted(
    path: str, body: bytes, ctype: str, status: int, reason: str
) -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.post(path, content=body, headers={"content-type": ctype})
        assert r.status_code == status, r.text
        if path.startswith("/v2/"):  # OIP's form: the message in "error"
            assert r.json()["reason"] == reason and r.json()["error"] and "message" not in r.json()
        else:
            assert r.json()["error"] == reason and r.json()["message"]
        model = "digits" if "digits" in path else "_unknown"
        version = "1" if model == "digits" else ""
        assert reg.get_sample_value("inference_error_reasons_total",
                                    {"model": model, "version": version,
                                     "reason": reason}) == 1
        assert reg.get_sample_value("inference_errors_total",
                                    {"model": model, "version": version}) == 0
        # the service keeps serving
        ok = await c.post("/predictions/digits",
                          content=digit_png(np.zeros((8, 8), np.float32)))
        assert ok.status_code == 200

    run_with_client(test, ServeConfig(max_body_bytes=4096))


def test_overload_sheds_with_503_and_retry_after() -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        png = digit_png(np.zeros((8, 8), np.float32))
        responses = await asyncio.gather(
            *(c.post("/predictions/digits", content=png) for _ in range(60))
        )
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        shed = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" for r in shed)
        assert count(reg, "inference_responses_total", code="200") == codes.count(200)
        assert count(reg, "inference_error_reasons_total", reason="overloaded") == len(shed)
        assert count(reg, "inference_errors_total") == len(shed)

    # A one-sample queue and a long batching wait force shedding deterministically.
    run_with_client(test, ServeConfig(queue_capacity=1, max_batch_size=1, max_wait_ms=0))




def test_feedback_scores_answers_once_and_refuses_bad_ids_and_labels() -> None:
    data = heldout_digits()

    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.post("/predictions/digits", content=digit_png(data.images[1]),
                         headers={"x-request-id": "req-1"})
        assert r.headers["x-request-id"] == "req-1"
        truth = str(data.labels[1])
        ok = await c.post("/feedback", json={"request_id": "req-1", "label": truth})
        assert ok.status_code == 200 and ok.json()["correct"] is True
        again = await c.post("/feedback", json={"request_id": "req-1", "label": truth})
        assert again.status_code == 409 and again.json()["error"] == "duplicate_feedback"
        for never in ("nope", "", "x" * 1000):  # the last two the service never hands out
            unknown = await c.post("/feedback", json={"request_id": never, "label": "1"})
            assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_request_id"
        v2 = await c.post("/v2/models/digits/infer", json={"id": "req-2", "inputs": [
            {"name": "x", "shape": [1, 64], "datatype": "FP32",
             "data": data.images[2].ravel().tolist()}]})
        assert v2.json()["id"] == "req-2"
        # Echoed, as OIP says, but feedback takes the id the service drew, in X-Request-ID.
        for unsafe in ("req-3\n", "x" * 65, "caf\u00e9", ""):
            answered = await c.post("/v2/models/digits/infer", json={"id": unsafe, "inputs": [
                {"name": "x", "shape": [1, 64], "datatype": "FP32",
                 "data": data.images[3].ravel().tolist()}]})
            assert answered.status_code == 200 and answered.json()["id"] == unsafe
            drawn = answered.headers["x-request-id"]
            assert len(drawn) == 16
            unknown = await c.post("/feedback", json={"request_id": unsafe, "label": "1"})
            assert unknown.status_code == 404
            found = await c.post("/feedback", json={"request_id": drawn, "label": "eleven"})
            assert found.json()["error"] == "invalid_label"  # not unknown_request_id
        bad = await c.post("/feedback", json={"request_id": "req-2", "label": "eleven"})
        assert bad.status_code == 422
        wrong = (int(data.labels[2]) + 1) % 10
        scored = await c.post("/feedback", json={"request_id": "req-2", "label": wrong})
        assert scored.status_code == 200 and scored.json()["correct"] is False
        assert (await c.post("/feedback", content=b"[]")).status_code == 400
        assert count(reg, "inference_feedback_total", outcome="correct") == 1
        assert count(reg, "inference_feedback_total", outcome="incorrect") == 1
        for reason, times in (("duplicate_feedback", 1), ("unknown_request_id", 3 + 4),
                              ("invalid_label", 1 + 4), ("invalid_json", 1)):
            assert reg.get_sample_value("inference_feedback_rejected_total",
                                        {"reason": reason}) == times

    run_with_client(test)


def test_feedback_scores_answers_under_the_ids_the_service_drew() -> None:
    data = heldout_digits()

    async def test(c: Client, reg: CollectorRegistry) -> None:
        drawn = []
        for i in range(3):
            r = await c.post("/predictions/digits", content=digit_png(data.images[i]))
            drawn.append((r.headers["x-request-id"], data.labels[i]))
            v2 = await c.post("/v2/models/digits/infer", json={"inputs": [
                {"name": "x", "shape": [1, 64], "datatype": "FP32",
                 "data": data.images[i].ravel().tolist()}]})
            drawn.append((v2.json()["id"], data.labels[i]))
        mimic = "0123456789abcdef"  # a client's own id in the drawn form
        await c.post("/predictions/digits", content=digit_png(data.images[5]),
                     headers={"x-request-id": mimic})
        drawn.append((mimic, data.labels[5]))
        assert len({i for i, _ in drawn}) == len(drawn)
        assert all(len(i) == 16 and int(i, 16) >= 0 for i, _ in drawn)
        for request_id, label in drawn:
            scored = await c.post("/feedback", json={"request_id": request_id,
                                                     "label": int(label)})
            assert scored.status_code == 200, scored.text
        never = await c.post("/feedback", json={"request_id": "fedcba9876543210", "label": 1})
        assert never.status_code == 404
        assert (count(reg, "inference_feedback_total", outcome="correct") +
                count(reg, "inference_feedback_total", outcome="incorrect")) == len(drawn)

    run_with_client(test)


def test_quality_off_keeps_the_quality_series_empty() -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        await c.post("/predictions/digits", content=digit_png(np.zeros((8, 8), np.float32)))
        assert count(reg, "inference_requests_total") == 1
        assert reg.get_sample_value("inference_prediction_confidence_count",
                                    {"model": "digits", "version": "1"}) is None

    run_with_client(test, ServeConfig(quality=False))


def test_records_are_folded_as_model_calls_go_without_a_scrape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler appends a record per success and the batch observer folds them: memory
    stays bounded between scrapes, and every success is counted."""
    from inferwatch.metrics import instruments

    monkeypatch.setattr(instruments, "_FOLD_AT", 8)
    registry = CollectorRegistry()
    app = create_app(ServeConfig(), registry)
    assert app.state.service.metrics is not None
    records = app.state.service.metrics._records
    png = digit_png(heldout_digits().images[0])

    async def test(c: Client, reg: CollectorRegistry) -> None:
        longest = 0
        for _ in range(60):  # one model call each
            assert (await c.post("/predictions/digits", content=png)).status_code == 200
            longest = max(longest, len(records))
        assert longest == 8 * instruments._RAW_RECORD  # folded at the next model call
        answers = await asyncio.gather(*(c.post("/predictions/digits", content=png)
                                         for _ in range(40)))
        assert {r.status_code for r in answers} == {200}
        assert count(reg, "inference_requests_total") == 100  # the scrape folds the rest
        assert count(reg, "inference_stage_seconds_count", stage="postprocess") == 100

    run_app(test, app, registry)


def test_routes_and_error_handlers_are_module_functions_over_the_apps_state() -> None:
    """Two apps share their handlers, none made per app: each finds its service in
    ``request.app.state.service``."""
    from starlette.routing import Route

    from inferwatch.serve import app as serve_app

    apps = [create_app(ServeConfig(), CollectorRegistry()) for _ in range(2)]
    handlers = [[*(r.endpoint for r in a.routes if isinstance(r, Route)),
                 *a.exception_handlers.values()] for a in apps]
    assert handlers[0] == handlers[1] and len(handlers[0]) == 15 + 3
    for handler in handlers[0]:
        assert getattr(serve_app, handler.__name__) is handler, handler.__qualname__
    assert [type(a.state.service) for a in apps] == [serve_app.InferenceService] * 2
    assert apps[0].state.service is not apps[1].state.service


def test_no_metrics_serves_predictions_without_instruments_or_metrics_route() -> None:
    png = digit_png(heldout_digits().images[0])

    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.post("/predictions/digits", content=png, headers={"content-type": "image/png"})
        assert r.status_code == 200 and len(r.json()) == 5
        assert (await c.get("/metrics")).status_code == 404
        assert count(reg, "inference_requests_total") == 0
        assert not [m.name for m in reg.collect() if m.name.startswith("inference_") and m.samples]

    run_with_client(test, ServeConfig(metrics=False))


def test_serve_help_offers_no_metrics_for_benchmarking() -> None:
    from typer.testing import CliRunner

    from inferwatch.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--no-metrics" in result.output and "benchmarking" in result.output


def test_the_serving_process_runs_blas_on_one_thread() -> None:
    """A second OpenBLAS thread spun for ~2 ms after each large batch's matrix product."""
    import json
    import os
    import subprocess
    import sys

    script = ("import json; from threadpoolctl import threadpool_info; "
              "from inferwatch.serve.app import prepare_serving_process; "
              "before = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']; "
              "prepare_serving_process(); "
              "after = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']; "
              "print(json.dumps([before, after]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"}).stdout
    before, after = json.loads(out)
    assert before and max(before) == 2  # numpy's OpenBLAS, given a second thread
    assert after == [1] * len(before)
