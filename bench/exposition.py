"""Time to render `/metrics` against the number of models served, side by side.

    python bench/exposition.py [--models 1,10,100] [--rounds 7] [--scrapes 20]

For each model count N, builds the service as `inferwatch serve` does (`create_app`, the
default registry with process, platform, GC and GPU collectors, quality tracking on), then
registers N - 1 more models beside `digits` (same labels, quality reference and features) and
gives every model traffic through the same calls a request makes: successes with latencies
and stage timings, batches, 400s and 503s with their reasons, quality (real digit
predictions) and feedback, so every histogram, counter and drift gauge has its series.

Two measures, rounds alternating between the model counts:
1. in process: the exposition serve's `/metrics` writes (`render_exposition` with
   Prometheus' Accept header: OpenMetrics) next to prometheus_client's own encoder of the
   same registry (tests/unit/test_exposition.py pins that both write the same bytes),
   each after 10 more requests per model so every render also folds pending observations;
2. over HTTP: a GET of `/metrics` from one subprocess per N (uvicorn as `inferwatch serve`
   runs it, traffic given before it starts listening), one keep-alive connection.
Prints series (sample lines), bytes and the median and p95 milliseconds of each.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import httpx
import numpy as np
from harness import free_port, running  # bench/, next to this script
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette

from inferwatch.metrics.exposition import render_exposition
from inferwatch.metrics.quality import QualityMonitor
from inferwatch.models.digits import heldout_digits
from inferwatch.serve.app import ServeConfig, create_app

# What Prometheus 2.42 sends when it scrapes.
ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
          "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


class ModelTraffic:
    """N models in one service, and the metric calls of the requests they answer."""

    def __init__(self, n: int) -> None:
        self.app = create_app(ServeConfig())
        service = self.app.state.service
        metrics = service.metrics
        assert metrics is not None
        digits = service.deployments["digits"]
        model, card = digits.model, digits.model.card
        self.names = ["digits"] + [f"digits-{i:03d}" for i in range(1, n)]
        self.monitors = [digits.quality]
        for name in self.names[1:]:
            metrics.add_model(name, card.version)
            metrics.set_model_loaded(name, runtime=card.runtime, load_seconds=card.load_seconds,
                                     accuracy=card.heldout_accuracy)
            metrics.watch_queue(name, lambda: 0, 256)
            self.monitors.append(QualityMonitor(
                service.quality_metrics, name, card.version, card.labels,
                model.quality_reference, model.features))
        images = heldout_digits().images[:50]
        self.samples = images
        self.probabilities = model.predict_proba(images)
        self.rng = np.random.default_rng(0)
        self.sent = 0

    def requests(self, per_model: int) -> None:
        metrics = self.app.state.service.metrics
        assert metrics is not None
        for name, monitor in zip(self.names, self.monitors, strict=True):
            latencies = self.rng.lognormal(np.log(4e-4), 0.5, per_model)
            for i, seconds in enumerate(latencies):
                self.sent += 1
                if i % 50 == 49:
                    metrics.observe_request(name, 503, seconds, "overloaded")
                    continue
                if i % 50 == 48:
                    metrics.observe_request(name, 400, seconds, "invalid_image")
                    continue
                metrics.observe_stages(name, (("preprocess", seconds * 0.2),
                                              ("queue", seconds * 0.1),
                                              ("compute", seconds * 0.6)))
                metrics.observe_stage(name, "postprocess", seconds * 0.1)
                metrics.observe_batch(name, 1 + i % 8)
                metrics.observe_request(name, 200, seconds)
                k = self.sent % len(self.samples)
                assert monitor is not None
                monitor.observe(self.probabilities[k:k + 1], self.samples[k:k + 1])
                if i % 10 == 0:
                    monitor.record_feedback([int(self.probabilities[k].argmax())], i % 10)
            monitor.flush()


def render(app: Starlette) -> bytes:
    """What serve's `/metrics` writes."""
    return render_exposition(app.state.service.scrape_registry, ACCEPT)[0]


def render_stock(app: Starlette) -> bytes:
    """prometheus_client's own encoder, for comparison."""
    encoder, _ = choose_encoder(ACCEPT)
    return bytes(encoder(app.state.service.scrape_registry))


def series(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def serve(n: int, port: int) -> None:
    import uvicorn

    traffic = ModelTraffic(n)
    traffic.requests(200)
    uvicorn.run(traffic.app, host="127.0.0.1", port=port, log_level="warning",
                loop="uvloop", http="httptools")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="1,10,100")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scrapes", type=int, default=20, help="per round and model count")
    parser.add_argument("--serve", nargs=2, type=int, metavar=("N", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    counts = [int(n) for n in args.models.split(",")]
    in_process = {n: ModelTraffic(n) for n in counts}
    for t in in_process.values():
        t.requests(200)
    render_ms: dict[int, list[float]] = {n: [] for n in counts}
    stock_ms: dict[int, list[float]] = {n: [] for n in counts}
    get_ms: dict[int, list[float]] = {n: [] for n in counts}
    sizes: dict[int, tuple[int, int, int]] = {}
    with contextlib.ExitStack() as stack:
        services = {}
        for n in counts:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            argv = [sys.executable, __file__, "--serve", str(n), str(port)]
            services[n] = (stack.enter_context(running(argv, f"{base}/ping", timeout=120)),
                           base)
        clients = {n: httpx.Client(base_url=base, headers={"Accept": ACCEPT})
                   for n, (_, base) in services.items()}
        for n in counts:  # warm-up, and what each exposes
            text = render(in_process[n].app)
            assert series(text) == series(render_stock(in_process[n].app))
            body = clients[n].get("/metrics").content
            sizes[n] = (series(text), len(text), len(body))
        for r in range(args.rounds):
            for n in counts[r % len(counts):] + counts[:r % len(counts)]:
                traffic = in_process[n]
                for _ in range(args.scrapes):
                    traffic.requests(10)
                    start_time = time.perf_counter()
                    render(traffic.app)
                    render_ms[n].append((time.perf_counter() - start_time) * 1e3)
                    traffic.requests(10)
                    start_time = time.perf_counter()
                    render_stock(traffic.app)
                    stock_ms[n].append((time.perf_counter() - start_time) * 1e3)
                    start_time = time.perf_counter()
                    response = clients[n].get("/metrics")
                    get_ms[n].append((time.perf_counter() - start_time) * 1e3)
                    assert response.status_code == 200

    print(f"{args.rounds} rounds x {args.scrapes} scrapes per model count, OpenMetrics "
          "(Prometheus' Accept header)")
    print(f"{'models':>6} {'series':>7} {'bytes':>8} {'render ms':>10} {'p95':>6} "
          f"{'stock ms':>9} {'p95':>6} {'stock/render':>12} {'GET ms':>7} {'p95':>6}")
    for n in counts:
        count, size, http_size = sizes[n]
        ours, stock = statistics.median(render_ms[n]), statistics.median(stock_ms[n])
        print(f"{n:>6} {count:>7} {size:>8} {ours:>10.2f} {p95(render_ms[n]):>6.2f} "
              f"{stock:>9.2f} {p95(stock_ms[n]):>6.2f} {stock / ours:>11.1f}x "
              f"{statistics.median(get_ms[n]):>7.2f} {p95(get_ms[n]):>6.2f}"
              + ("" if abs(http_size - size) < size * 0.05 else f" (HTTP {http_size} bytes)"))


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


if __name__ == "__main__":
    main()
