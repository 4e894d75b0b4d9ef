"""How close is Prometheus' histogram_quantile to the true p50/p95/p99 of the service?

    python bench/quantiles.py [--rate 200] [--seconds 20] [--resnet18-rate 10]
                              [--resnet18-seconds 60] [--models digits,resnet18]

Runs `inferwatch serve` with both models in this process (uvicorn in a thread) with a
hook in its metrics' fold that keeps every raw latency per model and also fills a histogram
with the seed's buckets; a real Prometheus scrapes it every second. Each model gets open-loop
load in turn (digits at --rate, resnet18 with random weights on the CPU at --resnet18-rate,
one torch thread unless INFERWATCH_TORCH_THREADS says otherwise),
and for each the true quantiles of its raw latencies are printed next to Prometheus'
estimates over that phase's window from our default buckets, the seed's buckets and a finer
candidate layout, with the relative error of each.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from PIL import Image
from prometheus_client import CollectorRegistry, Histogram

from inferwatch.metrics import DEFAULT_LATENCY_BUCKETS, log_buckets
from inferwatch.metrics.buckets import SEED_LATENCY_BUCKETS
from inferwatch.operate.load import LoadPlan, LoadResult, Payload, run_load
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.serve.app import ServeConfig, create_app
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.config import render_prometheus_config
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Component, Stack, StackOptions, find_binary
from inferwatch.stack.yamlfile import write_yaml

# A candidate layout: neighbours at most 1/8 apart (26 per decade against the default's 20).
FINE_LATENCY_BUCKETS = log_buckets(0.0001, 10.0, (
    1.0, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5,
    3.75, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 9.0))


class RawLatencies:
    """Keeps the raw latencies of successes as the service's ``RequestRecorder`` records are
    folded into its histogram, and fills histograms of other layouts with the same values."""

    def __init__(self, metrics: Any, registry: CollectorRegistry) -> None:
        self.raw: dict[str, list[float]] = {}
        self.seed = Histogram("bench_seed_latency_seconds", "Seed buckets, same samples.",
                              ["model"], buckets=SEED_LATENCY_BUCKETS, registry=registry)
        self.fine = Histogram("bench_fine_latency_seconds", "Finer buckets, same samples.",
                              ["model"], buckets=FINE_LATENCY_BUCKETS, registry=registry)
        original = metrics._fold_records

        def fold(records: np.ndarray, raw: np.ndarray) -> None:  # model index, seconds, ...
            original(records, raw)
            index = records[:, 0].astype(int)
            for i in np.unique(index):
                model = metrics._recorders[i].model
                seconds = records[index == i, 1].tolist()
                self.raw.setdefault(model, []).extend(seconds)
                for value in seconds:
                    self.seed.labels(model).observe(value)
                    self.fine.labels(model).observe(value)

        metrics._fold_records = fold


def resnet18_payloads(count: int = 20) -> list[Payload]:
    """224x224 RGB PNGs of noise: the 8x8 digits are below resnet18's smallest input."""
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(count):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(out, "PNG")
        payloads.append(Payload("/predictions/resnet18", out.getvalue(), "image/png", 0))
    return payloads


def load(plan: LoadPlan) -> LoadResult:
    payloads = resnet18_payloads() if plan.model == "resnet18" else None
    return asyncio.run(run_load(plan, payloads=payloads))


def main() -> None:
    # Two intra-op threads fighting other processes for 2 cores queue requests for seconds;
    # one thread gives the model's own latency profile.
    os.environ.setdefault("INFERWATCH_TORCH_THREADS", "1")
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-wait-ms", type=float, default=ServeConfig.max_wait_ms)
    parser.add_argument("--resnet18-rate", type=float, default=10)
    parser.add_argument("--resnet18-seconds", type=float, default=60)
    parser.add_argument("--models", default="digits,resnet18")
    args = parser.parse_args()
    models = args.models.split(",")
    plans = {"digits": (args.rate, args.seconds),
             "resnet18": (args.resnet18_rate, args.resnet18_seconds)}

    ports = StackPorts.free()
    registry = CollectorRegistry()
    app = create_app(ServeConfig(models=tuple(models), max_wait_ms=args.max_wait_ms), registry)
    latencies = RawLatencies(app.state.service.metrics, registry)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=ports.service,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    run_dir = Path(tempfile.mkdtemp(prefix="iw-bench-"))
    config = render_prometheus_config(FAST, ports)
    config["scrape_configs"] = config["scrape_configs"][:1]
    config.pop("alerting"), config.pop("rule_files")
    write_yaml(run_dir / "prometheus.yml", config)
    stack = Stack(StackOptions(run_dir=run_dir, profile=FAST, ports=ports))
    prom_part = Component("prometheus", [
        find_binary("prometheus"), f"--config.file={run_dir / 'prometheus.yml'}",
        f"--storage.tsdb.path={run_dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{ports.prometheus}"], f"{url(ports.prometheus)}/-/ready")
    summary = []
    try:
        stack.start_components([prom_part])
        while not server.started:
            time.sleep(0.05)
        prom = PrometheusAPI(url(ports.prometheus))
        for model in models:
            rate, seconds = plans[model]
            load(LoadPlan(url=url(ports.service), rate=rate, count=5, model=model))
            prom.wait_for_scrape("inference", after=time.time())  # folds the warm-up
            latencies.raw.pop(model, None)  # warm-up requests are in neither window
            result = load(LoadPlan(url=url(ports.service), rate=rate,
                                            duration=seconds, model=model))
            prom.wait_for_scrape("inference", after=time.time())
            end = time.time()
            window = f"{int(end - result.started_at) + 1}s"
            raw = np.array(latencies.raw.pop(model))
            print(f"\n{model}: {len(raw)} successful requests at {rate:g}/s for {seconds:g}s "
                  f"(client ok={result.ok}, errors={result.errors})")
            print(f"{'quantile':>8} {'true (ms)':>10} {'default (ms)':>13} {'error':>7} "
                  f"{'seed (ms)':>10} {'error':>9} {'fine (ms)':>10} {'error':>7}")
            for q in (0.5, 0.95, 0.99):
                true = float(np.quantile(raw, q))
                ours, seed, fine = (prom.scalar(
                    f"histogram_quantile({q}, sum by (le) (increase({name}_bucket"
                    f'{{model="{model}"}}[{window}] @ {end:.3f})))')
                    for name in ("inference_latency_seconds", "bench_seed_latency_seconds",
                                 "bench_fine_latency_seconds"))
                assert ours is not None and seed is not None and fine is not None
                print(f"{q:>8} {true * 1e3:>10.3f} {ours * 1e3:>13.3f} {ours / true - 1:>+7.1%} "
                      f"{seed * 1e3:>10.3f} {seed / true - 1:>+9.1%} "
                      f"{fine * 1e3:>10.3f} {fine / true - 1:>+7.1%}")
                summary.append((model, q, ours / true - 1, seed / true - 1, fine / true - 1))
    finally:
        stack.stop()
        server.should_exit = True
        thread.join(5)
    print(f"\nrelative error of Prometheus' estimate: default buckets "
          f"({len(DEFAULT_LATENCY_BUCKETS)}), seed ({len(SEED_LATENCY_BUCKETS)}), "
          f"fine ({len(FINE_LATENCY_BUCKETS)}):")
    for model, q, ours_error, seed_error, fine_error in summary:
        if q >= 0.95:
            print(f"{model:>9} p{q * 100:g}: default {ours_error:+.1%}, seed {seed_error:+.1%}, "
                  f"fine {fine_error:+.1%}")


if __name__ == "__main__":
    main()
