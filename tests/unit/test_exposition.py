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
from inferwatch.serve.app import ServeConfig, create_app

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def served_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    service = create_app(ServeConfig(), registry).service
    metrics, quality = service.metrics, service.deployments["digits"].quality
    assert metrics is not None and quality is not None
    rng = np.random.default_rng(0)
    for i, seconds in enumerate(rng.lognormal(-7, 1, 300)):
        metrics.observe_stages("digits", (("preprocess", seconds / 3), ("compute", seconds)))
        metrics.observe_batch("digits", 1 + i % 5)
        metrics.observe_request("digits" if i % 7 else "other", 200 if i % 11 else 400,
                                seconds, "invalid_image")
    images = heldout_digits().images[:20]
    quality.observe(service.deployments["digits"].model.predict_proba(images), images)
    quality.flush()
    quality.record_feedback([3, 1], 3)
    odd = DeferredHistogram("odd_seconds", 'Doc with "quotes", \\ and\nnewline.',
                            ["a", "z"], buckets=(0.5, 2e6), registry=registry)
    odd.labels('v"\\\n', "").observe(1.0)
    plain = DeferredHistogram("plain_seconds", "Unlabelled.", registry=registry)
    for _ in range(3):
        plain.observe(0.2)
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
