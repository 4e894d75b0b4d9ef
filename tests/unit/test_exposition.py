import asyncio
import time

import httpx
import numpy as np
import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from inferwatch.metrics.exposition import families_text, render_exposition
from inferwatch.metrics.histogram import DeferredHistogram
from inferwatch.models.digits import heldout_digits
from inferwatch.operate.load import build_payloads
from inferwatch.serve.app import ServeConfig, create_app

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def served_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    service = create_app(ServeConfig(), registry).state.service
    metrics, quality = service.metrics, service.deployments["digits"].quality
    assert metrics is not None and quality is not None
    rng = np.random.default_rng(0)
    for i, seconds in enumerate(rng.lognormal(-7, 1, 300)):
        metrics.observe_stages("digits", (("preprocess", seconds / 3), ("compute", seconds)))
        metrics.observe_batch("digits", 1 + i % 5)
        metrics.observe_request("digits" if i % 7 else "other", 200 if i % 11 else 400,
                                seconds, "invalid_image", {"request_id": f"r-{i}"} if i % 2
                                else None)
    recorder = service.deployments["digits"].recorder
    assert recorder is not None
    now = time.perf_counter()
    recorder.succeeded(now - 0.003, 1e-4, 2e-4, 1e-3, now - 1e-4, "recorded-1")
    images = heldout_digits().images[:20]
    quality.observe(service.deployments["digits"].model.predict_proba(images), images)
    quality.flush()
    quality.record_feedback([3, 1], 3)
    odd = DeferredHistogram("odd_seconds", 'Doc with "quotes", \\ and\nnewline.',
                            ["a", "z"], buckets=(0.5, 2e6), registry=registry)
    odd.labels('v"\\\n', "").observe(1.0, {"trace_id": 'x"\\\n'})
    plain = DeferredHistogram("plain_seconds", "Unlabelled.", registry=registry)
    for i in range(3):
        plain.observe(0.2, {"request_id": "p"} if i == 1 else None)
    Counter("between", "A stock collector between ours.", registry=registry).inc()
    return registry


@pytest.mark.parametrize("accept", ["", "text/plain", PROMETHEUS_ACCEPT])
def test_same_bytes_as_prometheus_client(accept: str) -> None:
    registry = served_registry()
    encoder, content_type = choose_encoder(accept)
    expected = encoder(registry)
    assert render_exposition(registry, accept) == (expected, content_type)
    assert b"inference_stage_seconds_bucket" in expected
    assert b"inference_prediction_confidence_bucket" in expected
    assert (b' # {request_id="recorded-1"} ' in expected) == ("openmetrics" in content_type)


@pytest.mark.parametrize("accept", ["", PROMETHEUS_ACCEPT])
def test_process_platform_and_gc_families_as_prometheus_client_writes_them(accept: str) -> None:
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    metrics = list(registry.collect())  # once: the process' values move
    encoder, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith("application/openmetrics-text")
    expected = encoder(Fixed(metrics)).decode().removesuffix("# EOF\n")
    assert families_text(metrics, openmetrics) == expected
    assert "process_cpu_seconds_total" in expected and "python_info" in expected


class Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def test_serve_latency_exemplar_is_the_request_id_it_answered_with() -> None:
    """A scrape's exemplars lead to requests: the X-Request-ID a client sent, or the one
    the service drew and answered with."""
    app = create_app(ServeConfig(), CollectorRegistry())
    service = app.state.service
    png = build_payloads("predictions")[0]

    async def main() -> tuple[str, bytes]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                service.faults.set_latency("preprocess", 0.3)  # one slow request
                slow = await c.post(png.path, content=png.body,
                                    headers={"Content-Type": png.content_type,
                                             "X-Request-ID": "slow-client-7"})
                service.faults.set_latency("preprocess", 0.0)
                for _ in range(5):
                    fast = await c.post(png.path, content=png.body,
                                        headers={"Content-Type": png.content_type})
                assert slow.status_code == fast.status_code == 200
                scraped = await c.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
                return fast.headers["X-Request-ID"], scraped.content

    drawn, body = asyncio.run(main())
    exemplars = {line.split(b" # ")[1].split(b" ")[0]: float(line.split(b" # ")[1].split()[1])
                 for line in body.splitlines()
                 if line.startswith(b"inference_latency_seconds_bucket") and b" # " in line}
    assert exemplars[b'{request_id="slow-client-7"}'] >= 0.3
    assert f'{{request_id="{drawn}"}}'.encode() in exemplars  # the latest fast one
    assert len(exemplars) <= 6
