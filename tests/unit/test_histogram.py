import re
import threading
import time

import numpy as np
import pytest
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from inferwatch.metrics import DEFAULT_LATENCY_BUCKETS
from inferwatch.metrics.exposition import render_exposition
from inferwatch.metrics.histogram import DeferredHistogram

OPENMETRICS = "application/openmetrics-text"


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


def strip_stamp(line: str) -> str:
    """An exposition line without its exemplar's timestamp, which is each observe's time."""
    return re.sub(r"( # \{.*\} \S+) \S+$", r"\1", line)


def test_exemplars_as_the_stock_histogram_keeps_and_writes_them() -> None:
    """The latest exemplar of each bucket, in the OpenMetrics text, as prometheus_client's
    own encoder writes a stock Histogram with the same observations: only the text format
    has none."""
    rng = np.random.default_rng(2)
    samples = [*rng.lognormal(-7, 1.5, 3000), *DEFAULT_LATENCY_BUCKETS, float("nan")]
    written = {Histogram: openmetrics_latest,  # prometheus_client's own encoder
               DeferredHistogram: lambda r: render_exposition(r, OPENMETRICS)[0]}
    texts, plain = [], []
    disable_created_metrics()  # else the stock encoder writes the family, not ours
    try:
        before = time.time()
        for cls, write in written.items():
            registry = CollectorRegistry()
            h = cls("t_seconds", "t", ["model"], buckets=DEFAULT_LATENCY_BUCKETS,
                    registry=registry)
            for i, v in enumerate(samples):
                h.labels("m").observe(v, {"trace_id": f"{i:032x}", "n": 'q"\\'} if i % 3
                                      else None)
            h.labels("idle")  # a series without exemplars
            texts.append(write(registry).decode())
            plain.append(render_exposition(registry)[0].decode())
        after = time.time()
    finally:
        enable_created_metrics()
    stock, deferred = ([strip_stamp(x) for x in t.splitlines() if "_sum" not in x]
                       for t in texts)
    assert stock == deferred
    assert sum(" # {" in x for x in deferred) > 50
    stamps = [float(x.rpartition(" ")[2]) for x in texts[1].splitlines() if " # {" in x]
    assert all(before <= s <= after for s in stamps)
    assert " # {" not in plain[1]


def test_an_exemplar_openmetrics_cannot_carry_is_refused_at_observe() -> None:
    registry = CollectorRegistry()
    h = DeferredHistogram("t_seconds", "t", registry=registry)
    for bad in ({"request_id": "x" * 120}, {"0id": "x"}, {"__name": "x"}):
        with pytest.raises(ValueError):
            h.observe(0.1, bad)
    assert registry.get_sample_value("t_seconds_count") == 0


def test_an_exemplar_function_is_called_only_for_each_buckets_latest_at_the_fold() -> None:
    registry = CollectorRegistry()
    h = DeferredHistogram("t_seconds", "t", buckets=(0.5, 1.0), registry=registry)
    calls: list[str] = []

    def make(rid: str, labels: dict[str, str] | None) -> dict[str, str] | None:
        calls.append(rid)
        return labels

    for i in range(1000):
        h.observe(0.25, lambda i=i: make(f"a{i}", {"request_id": f"a{i}"}))
    h.observe(0.75, lambda: make("bad", {"0bad": "x"}))  # refused, not raised at a scrape
    h.observe(2.0, lambda: make("none", None))
    text = render_exposition(registry, OPENMETRICS)[0].decode()
    assert sorted(calls) == ["a999", "bad", "none"]
    assert [line.split(" # ")[1].split(" ")[0] for line in text.splitlines()
            if " # " in line] == ['{request_id="a999"}']
    assert registry.get_sample_value("t_seconds_count") == 1002
