import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from inferwatch.metrics import DEFAULT_LATENCY_BUCKETS
from inferwatch.metrics.histogram import DeferredHistogram


def test_same_exposition_as_the_stock_histogram_bounds_included() -> None:
    rng = np.random.default_rng(1)
    samples = [*rng.lognormal(-7, 1.5, 10_000), *DEFAULT_LATENCY_BUCKETS, 0.0, 1e6]
    texts = []
    for cls in (Histogram, DeferredHistogram):
        registry = CollectorRegistry()
        h = cls("t_seconds", "t", ["model"], buckets=DEFAULT_LATENCY_BUCKETS,
                registry=registry)
        for v in samples:
            h.labels("m").observe(v)
        texts.append(generate_latest(registry).decode())
    stock, deferred = (t.splitlines() for t in texts)
    differ = ("_sum", "_created")  # rounding; creation time
    assert [x for x in stock if not any(k in x for k in differ)] == \
        [x for x in deferred if not any(k in x for k in differ)]
    sums = [float(next(x for x in t if x.startswith("t_seconds_sum")).split()[-1])
            for t in (stock, deferred)]
    assert sums[1] == pytest.approx(sums[0], rel=1e-12)


def test_concurrent_observers_lose_nothing_across_folds() -> None:
    registry = CollectorRegistry()
    h = DeferredHistogram("t_seconds", "t", buckets=(0.5, 1.0), registry=registry)

    def observe() -> None:
        for i in range(20_000):
            h.observe(0.25 if i % 2 else 0.75)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        registry.get_sample_value("t_seconds_count")  # scrapes fold while others append
    for t in threads:
        t.join()
    assert registry.get_sample_value("t_seconds_bucket", {"le": "0.5"}) == 40_000
    assert registry.get_sample_value("t_seconds_count") == 80_000
    assert registry.get_sample_value("t_seconds_sum") == 40_000 * 0.25 + 40_000 * 0.75


def test_labelled_parent_cannot_be_observed() -> None:
    h = DeferredHistogram("t_seconds", "t", ["model"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        h.observe(1.0)
