"""`inferwatch proxy` in front of a real TorchServe (issue 21): counts that match TorchServe's
own metrics and a real Prometheus, a crash and restart, a hung worker, and TorchServe's own
refusals as the proxy passes and counts them."""

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from processes import process, scrape
from torchserve import MODEL, SHEDDING, TorchServe, build_model_store, missing

from inferwatch.models.digits import DigitsModel, heldout_digits
from inferwatch.operate.load import LoadPlan, Payload, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, free_ports, url
from inferwatch.stack.config import write_stack_config
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import find_binary

pytestmark = [pytest.mark.integration, pytest.mark.skipif(missing() is not None,
                                                          reason=missing() or "")]

PATH = f"/predictions/{MODEL}"


def proxy_argv(ts: TorchServe, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inferwatch", "proxy", "--upstream", ts.inference,
            "--port", str(port), "--model", MODEL, "--model", SHEDDING, *extra]


def proxy_sample(proxy: str, name: str, **labels: str) -> float:
    """A sample of the proxy's /metrics, of `digits` unless ``labels`` say otherwise."""
    labels = {"model": MODEL, "version": "", **labels}
    return scrape(f"{proxy}/metrics").get((name, tuple(sorted(labels.items()))), 0.0)


def torchserve_requests(ts: TorchServe) -> float:
    """TorchServe's own count of requests for `digits`: a series per version in the path."""
    return sum(v for (name, labels), v in scrape(f"{ts.metrics}/metrics").items()
               if name == "ts_inference_requests_total" and ("model_name", MODEL) in labels)


def body(pixels: list[float], **extra: object) -> bytes:
    return json.dumps({"pixels": pixels, **extra}).encode()


def post(base: str, model: str, content: bytes, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}/predictions/{model}", content=content, timeout=timeout,
                      headers={"Content-Type": "application/json"})


def post_all(base: str, model: str, bodies: list[bytes]) -> list[httpx.Response]:
    """Send ``bodies`` at once, one thread each; the answers in order."""
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def send(i: int) -> None:
        answers[i] = post(base, model, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


@pytest.fixture(scope="module")
def images() -> list[list[float]]:
    return [[float(v) for v in image.reshape(-1)] for image in heldout_digits().images[:50]]


@pytest.fixture(scope="module")
def payloads(images: list[list[float]]) -> list[Payload]:
    return [Payload(PATH, body(p), "application/json", 0) for p in images]


@dataclass(frozen=True)
class Served:
    """TorchServe, the proxy in front of it and a Prometheus scraping both."""

    ts: TorchServe
    proxy: str
    prom: PrometheusAPI


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Prometheus scrapes the proxy as the stack's `inference` job and TorchServe as its
    known-server job, the configuration `inferwatch render --scrape torchserve=...` writes."""
    directory = tmp_path_factory.mktemp("torchserve")
    store = build_model_store(directory / "model")
    ports = StackPorts.free()
    log = directory / "processes.log"
    ts = TorchServe(directory / "torchserve", store)
    try:
        ts.start()
        config = write_stack_config(directory / "stack", FAST, ports, known_servers={
            "torchserve": ts.metrics.removeprefix("http://")})["prometheus"]
        prom_url, proxy = url(ports.prometheus), url(ports.service)
        with process(proxy_argv(ts, ports.service), f"{proxy}/metrics", log), \
                process([find_binary("prometheus"), f"--config.file={config}",
                         f"--storage.tsdb.path={directory / 'tsdb'}",
                         f"--web.listen-address=127.0.0.1:{ports.prometheus}"],
                        f"{prom_url}/-/ready", log):
            prom = PrometheusAPI(prom_url)
            try:
                yield Served(ts, proxy, prom)
            finally:
                prom.close()
    finally:
        ts.stop()


def counts(served: Served) -> tuple[float, float]:
    """The proxy's and TorchServe's count of requests for `digits`."""
    return (proxy_sample(served.proxy, "inference_requests_total"),
            torchserve_requests(served.ts))


def assert_prometheus_agrees(served: Served) -> None:
    """What Prometheus scraped last equals both /metrics read directly."""
    at = time.time()
    for job in ("inference", "torchserve"):
        served.prom.wait_for_scrape(job, after=at)
    ours, theirs = counts(served)
    assert served.prom.scalar(
        f'sum(inference_requests_total{{job="inference",model="{MODEL}"}})') == ours
    assert served.prom.scalar(
        f'sum(ts_inference_requests_total{{job="torchserve",model_name="{MODEL}"}})') == theirs


def test_counts_match_torchserve_and_prometheus(served: Served, images: list[list[float]],
                                                payloads: list[Payload]) -> None:
    ours_before, theirs_before = counts(served)
    # The archive really serves the project's digits MLP: the same answers as its numpy twin.
    expected = DigitsModel().predict_proba(heldout_digits().images[:5]).argmax(1)
    answers = [post(served.proxy, MODEL, body(p)).json()["digit"] for p in images[:5]]
    assert answers == expected.tolist()
    # At most 20 waiting: TorchServe's queue (100) never sheds, however slow the machine.
    steady = run_load_sync(LoadPlan(url=served.proxy, rate=200, count=150, max_in_flight=20),
                           payloads=payloads)
    burst = run_load_sync(LoadPlan(url=served.proxy, rate=5000, count=50, max_in_flight=20),
                          payloads=payloads)
    assert steady.ok == 150 and burst.ok == 50, (steady.statuses, burst.statuses)
    sent = 5 + steady.sent + burst.sent

    ours, theirs = counts(served)
    assert (ours - ours_before, theirs - theirs_before) == (sent, sent)
    assert_prometheus_agrees(served)


def test_put_is_forwarded_and_counted(served: Served, images: list[list[float]]) -> None:
    # TorchServe takes `curl -T file` (PUT, no Content-Type) as well as POST.
    assert httpx.put(served.ts.inference + PATH, content=body(images[0])).status_code == 200
    ours_before, theirs_before = counts(served)
    statuses = [httpx.put(served.proxy + PATH, content=body(p)).status_code
                for p in images[:20]]
    assert statuses == [200] * 20
    ours, theirs = counts(served)
    assert (ours - ours_before, theirs - theirs_before) == (20, 20)
    assert_prometheus_agrees(served)


def test_torchserve_killed_under_load_then_restarted(served: Served,
                                                     payloads: list[Payload]) -> None:
    ts, proxy = served.ts, served.proxy
    requests_before = proxy_sample(proxy, "inference_requests_total")
    ok_before = proxy_sample(proxy, "inference_responses_total", code="200")
    failed_before = proxy_sample(proxy, "inference_error_reasons_total",
                                 reason="upstream_connect")

    def kill_after_100(sent: int, total: int) -> None:
        if sent == 100:
            ts.kill_java()

    during = run_load_sync(LoadPlan(url=proxy, rate=100, count=300, max_in_flight=20),
                           kill_after_100, payloads=payloads)
    assert set(during.statuses) == {200, 502}, during.statuses
    assert during.transport_errors == {}  # the proxy answered every request
    down = post(proxy, MODEL, payloads[0].body)
    assert down.status_code == 502 and down.json()["error"] == "upstream_connect"

    ts.start()  # the same ports, model store and TMPDIR
    after = run_load_sync(LoadPlan(url=proxy, rate=100, count=100, max_in_flight=20),
                          payloads=payloads)
    assert after.ok == 100, after.statuses
    assert torchserve_requests(ts) == 100  # a new JVM counts from zero

    assert proxy_sample(proxy, "inference_requests_total") - requests_before == (
        during.sent + 1 + after.sent)
    assert proxy_sample(proxy, "inference_responses_total", code="200") - ok_before == (
        during.ok + after.ok)
    assert proxy_sample(proxy, "inference_error_reasons_total",
                        reason="upstream_connect") - failed_before == during.statuses[502] + 1


def shed_sample(served: Served, name: str, **labels: str) -> float:
    return proxy_sample(served.proxy, name, model=SHEDDING, **labels)


def queue_full(served: Served, images: list[list[float]]) -> list[int]:
    """Eight slow requests at once: one in the worker, two queued, the rest refused (as
    many as arrive before the first is answered, a second later)."""
    answers = post_all(served.proxy, SHEDDING, [body(p, sleep=1.0) for p in images[:8]])
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 503} and statuses.count(200) >= 3, statuses
    refused = next(a for a in answers if a.status_code == 503).json()
    assert refused["type"] == "ServiceUnavailableException", refused  # TorchServe's own body
    assert "has no worker to serve inference request" in refused["message"]
    return statuses


def test_hung_worker_gives_504(served: Served, images: list[list[float]],
                               tmp_path: Path) -> None:
    port, hang = free_ports(1)[0], 5.0
    proxy = f"http://127.0.0.1:{port}"
    # A proxy of its own: a short --timeout would cut slow answers elsewhere.
    with process(proxy_argv(served.ts, port, "--timeout", "1.5"), f"{proxy}/metrics",
                 tmp_path / "proxy.log"):
        started = time.monotonic()
        hung = post(proxy, SHEDDING, body(images[0], sleep=hang))
        assert hung.status_code == 504 and hung.json()["error"] == "upstream_timeout"
        assert time.monotonic() - started < hang  # the proxy did not wait for the worker
        assert proxy_sample(proxy, "inference_error_reasons_total", model=SHEDDING,
                            reason="upstream_timeout") == 1
    # Queued behind the hung request: answered once the worker is free again.
    assert post(served.ts.inference, SHEDDING, body(images[0])).status_code == 200


def test_queue_full_503_passes_through(served: Served, images: list[list[float]]) -> None:
    before = shed_sample(served, "inference_responses_total", code="503")
    statuses = queue_full(served, images)
    assert shed_sample(served, "inference_responses_total",
                       code="503") == before + statuses.count(503)


def test_queue_full_counted_as_overloaded(served: Served, images: list[list[float]]) -> None:
    before = shed_sample(served, "inference_error_reasons_total", reason="overloaded")
    statuses = queue_full(served, images)
    assert shed_sample(served, "inference_error_reasons_total",
                       reason="overloaded") == before + statuses.count(503)


def test_no_worker_503_passes_through(served: Served, images: list[list[float]]) -> None:
    before = shed_sample(served, "inference_responses_total", code="503")
    served.ts.scale_workers(SHEDDING, 0)
    try:
        refused = post(served.proxy, SHEDDING, body(images[0]))
    finally:
        served.ts.scale_workers(SHEDDING, 1)
    # The same answer as a full queue: only the load tells the two apart.
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"] == "ServiceUnavailableException"
    assert shed_sample(served, "inference_responses_total", code="503") == before + 1


def test_worker_died_500_then_worker_restarted(served: Served,
                                               images: list[list[float]]) -> None:
    ts = served.ts
    before = shed_sample(served, "inference_error_reasons_total", reason="upstream_5xx")
    worker = ts.wait_worker(SHEDDING, time.monotonic() + 60)
    died = post(served.proxy, SHEDDING, body(images[0], fail="exit"))
    assert died.status_code == 500, died.text
    assert died.json() == {"code": 500, "type": "InternalServerException",
                           "message": "Worker died."}
    assert shed_sample(served, "inference_error_reasons_total",
                       reason="upstream_5xx") == before + 1
    # TorchServe starts a new worker by itself.
    ts.wait_worker(SHEDDING, time.monotonic() + 60, replacing=worker)
    assert post(served.proxy, SHEDDING, body(images[0])).status_code == 200


def out_of_memory(served: Served, images: list[list[float]]) -> None:
    answer = post(served.proxy, SHEDDING, body(images[0], fail="memory"))
    assert answer.status_code == 507, answer.text
    assert answer.json() == {"code": 507, "type": "InternalServerException",
                             "message": "Out of resources"}


def test_out_of_memory_507_passes_through(served: Served, images: list[list[float]]) -> None:
    before = shed_sample(served, "inference_errors_total")
    out_of_memory(served, images)
    assert shed_sample(served, "inference_errors_total") == before + 1


def test_out_of_memory_counted_as_507(served: Served, images: list[list[float]]) -> None:
    before = shed_sample(served, "inference_responses_total", code="507")
    out_of_memory(served, images)
    assert shed_sample(served, "inference_responses_total", code="507") == before + 1


def test_handler_exception_503_is_a_failure_not_load_shed(
        served: Served, images: list[list[float]]) -> None:
    failed = shed_sample(served, "inference_error_reasons_total", reason="upstream_5xx")
    shed = shed_sample(served, "inference_error_reasons_total", reason="overloaded")
    answer = post(served.proxy, SHEDDING, body(images[0], fail="raise"))
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"code": 503, "type": "InternalServerException",
                             "message": "Prediction failed"}
    assert shed_sample(served, "inference_error_reasons_total",
                       reason="upstream_5xx") == failed + 1
    assert shed_sample(served, "inference_error_reasons_total", reason="overloaded") == shed
