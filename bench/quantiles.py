"""How close is Prometheus' histogram_quantile to the true p95/p99 of the service?

    python bench/quantiles.py [--rate 200] [--seconds 20]

Runs `inferwatch serve` in this process (uvicorn in a thread) with a recorder beside its
metrics that keeps every raw latency and also fills a histogram with the seed's buckets; a
real Prometheus scrapes it every second; open-loop load runs for --seconds. Then the true
quantiles of the raw latencies are printed next to Prometheus' estimates from our default
buckets and from the seed's buckets, with the relative error of each.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from prometheus_client import CollectorRegistry, Histogram

from inferwatch.metrics import SEED_LATENCY_BUCKETS
from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.serve.app import ServeConfig, create_app
from inferwatch.stack.config import StackPorts, render_prometheus_config, url, write_yaml
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Component, Stack, StackOptions, find_binary


class Recorder:
    """Wraps ``InferenceMetrics.observe_request`` to keep raw latencies of successes."""

    def __init__(self, metrics: Any, registry: CollectorRegistry) -> None:
        self.raw: list[float] = []
        self.seed = Histogram("bench_seed_latency_seconds", "Seed buckets, same samples.",
                              buckets=SEED_LATENCY_BUCKETS, registry=registry)
        original = metrics.observe_request

        def observe(model: Any, status: int, seconds: float, reason: Any = None) -> None:
            original(model, status, seconds, reason)
            if status < 400:
                self.raw.append(seconds)
                self.seed.observe(seconds)

        metrics.observe_request = observe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-wait-ms", type=float, default=ServeConfig.max_wait_ms)
    args = parser.parse_args()

    ports = StackPorts.free()
    registry = CollectorRegistry()
    app = create_app(ServeConfig(max_wait_ms=args.max_wait_ms), registry)
    recorder = Recorder(app.service.metrics, registry)
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
    try:
        stack.start_components([prom_part])
        while not server.started:
            time.sleep(0.05)
        prom = PrometheusAPI(url(ports.prometheus))
        prom.wait_for_scrape("inference", after=time.time())
        result = run_load_sync(LoadPlan(url=url(ports.service), rate=args.rate,
                                        duration=args.seconds))
        prom.wait_for_scrape("inference", after=time.time())
        window = f"{int(time.time() - result.started_at) + 2}s"
        raw = np.array(recorder.raw)
        print(f"{len(raw)} successful requests at {args.rate:g}/s for {args.seconds:g}s "
              f"(client ok={result.ok}, errors={result.errors})")
        print(f"{'quantile':>8} {'true (ms)':>10} {'default (ms)':>13} {'error':>7} "
              f"{'seed (ms)':>10} {'error':>7}")
        for q in (0.5, 0.95, 0.99):
            true = float(np.quantile(raw, q))
            ours = prom.scalar(f"histogram_quantile({q}, sum by (le) "
                               f"(increase(inference_latency_seconds_bucket[{window}])))")
            seed = prom.scalar(f"histogram_quantile({q}, sum by (le) "
                               f"(increase(bench_seed_latency_seconds_bucket[{window}])))")
            assert ours is not None and seed is not None
            print(f"{q:>8} {true * 1e3:>10.3f} {ours * 1e3:>13.3f} {ours / true - 1:>+7.1%} "
                  f"{seed * 1e3:>10.3f} {seed / true - 1:>+7.1%}")
    finally:
        stack.stop()
        server.should_exit = True
        thread.join(5)


if __name__ == "__main__":
    main()
