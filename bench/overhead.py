"""What the instrumentation costs: `inferwatch serve` with metrics on vs off, side by side.

    python bench/overhead.py [--rounds 7] [--seconds 4] [--connections 32]
                             [--model digits|resnet18]

Four services run throughout, each its own process on its own port:
- ``on``: the default (`inferwatch serve`: metrics and quality tracking),
- ``on-noq``: metrics without quality tracking (`--no-quality`),
- ``off``: `--no-metrics` (no middleware, no instrument call per request, no /metrics),
- ``noq-stock``: as ``on-noq`` with prometheus_client's stock ``Histogram`` in place of
  ``DeferredHistogram``, to see what that change bought in the running service.

``--model resnet18`` serves resnet18 instead (one torch thread, a 224x224 PNG on the TorchServe
route):
what the same instrumentation costs beside a model call of tens of milliseconds.
Each round drives every service in turn, the order rotating between rounds, with wrk
(closed loop, --connections connections posting one OIP v2 digit, --seconds): requests/s,
and the CPU seconds the service spent per request (user + system from /proc, every thread).
CPU per request is the robust one: its inverse is the throughput of a dedicated core, and it
moves little when other processes take the cores that wrk's req/s depends on.
Before that, in process: the metric calls one request makes, with the DeferredHistogram that
InferenceMetrics uses and with prometheus_client's stock Histogram in its place.
Prints every round, then the medians and the ratios to ``off`` (throughput: higher is better,
so this/off; from CPU: off's CPU per request / this one's).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from unittest import mock

from harness import cpu_seconds, free_port, running  # bench/, next to this script
from prometheus_client import CollectorRegistry, Histogram
from quantiles import resnet18_payloads

from inferwatch.metrics import InferenceMetrics, model_from_path
from inferwatch.operate.load import build_payloads

SERVICES = {"on": [], "on-noq": ["--no-quality"], "off": ["--no-metrics"],
            "noq-stock": ["--stock-histogram", "--no-quality"]}
STOCK = "--stock-histogram"  # bench only: prometheus_client's Histogram, as before


def service_argv(flags: list[str], model: str, port: int) -> list[str]:
    launcher = [__file__, STOCK] if STOCK in flags else ["-m", "inferwatch"]
    return [sys.executable, *launcher, "serve", "--port", str(port), "--model", model,
            *(f for f in flags if f != STOCK), "--log-level", "warning"]


def wrk(pid: int, url: str, script: Path, connections: int,
        seconds: float) -> tuple[float, float]:
    before = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - before
    lines = out.splitlines()
    if any("Non-2xx" in line for line in lines):
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rate = next(float(line.split()[1]) for line in lines if line.startswith("Requests/sec:"))
    count = next(int(line.split()[0]) for line in lines if " requests in " in line)
    return rate, cpu / max(count, 1)


def metric_updates(rounds: int = 7, number: int = 20_000) -> None:
    """In process: the metric calls one request makes, DeferredHistogram vs the stock one."""
    with mock.patch("inferwatch.metrics.instruments.DeferredHistogram", Histogram):
        variants = {"stock Histogram": InferenceMetrics({"digits": "1"},
                                                        registry=CollectorRegistry())}
    variants["DeferredHistogram"] = InferenceMetrics({"digits": "1"},
                                                     registry=CollectorRegistry())

    def request(metrics: InferenceMetrics) -> None:
        model = model_from_path("/v2/models/digits/infer")
        gauge = metrics.in_flight_gauge(model)
        gauge.inc()
        metrics.observe_stages("digits", (("preprocess", 1e-4), ("queue", 5e-5),
                                          ("compute", 2e-4)))
        metrics.observe_batch("digits", 1)
        metrics.observe_stage("digits", "postprocess", 3e-5)
        gauge.dec()
        metrics.observe_request(model, 200, 4e-4)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, metrics in variants.items():
            times[name].append(timeit.timeit(lambda m=metrics: request(m), number=number)
                               / number)
    stock = statistics.median(times["stock Histogram"])
    print("metric updates of one request, in process (median of "
          f"{rounds} x {number}): " + ", ".join(
              f"{name} {statistics.median(t) * 1e6:.2f} us ({statistics.median(t) / stock:.2f}x)"
              for name, t in times.items()))


def main() -> None:
    if sys.argv[1:2] == [STOCK]:
        from inferwatch.cli import app

        with mock.patch("inferwatch.metrics.instruments.DeferredHistogram", Histogram):
            app(sys.argv[2:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--model", choices=("digits", "resnet18"), default="digits")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    os.environ.setdefault("INFERWATCH_TORCH_THREADS", "1")  # four services share two cores
    payload = (build_payloads("v2")[0] if args.model == "digits"
               else resnet18_payloads(1)[0])  # the 8x8 digits are below resnet18's minimum
    tmp = Path(tempfile.mkdtemp(prefix="iw-bench-overhead-"))
    (tmp / "body").write_bytes(payload.body)  # a PNG for resnet18: read as bytes, not text
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = '
                      f'"{payload.content_type}"\nlocal f = io.open("{tmp / "body"}", "rb")\n'
                      'wrk.body = f:read("*all")\nf:close()\n')

    metric_updates()
    names = list(SERVICES)
    rps: dict[str, list[float]] = {n: [] for n in names}
    wrk_cpu: dict[str, list[float]] = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        services = {}
        for name, flags in SERVICES.items():
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = stack.enter_context(running(service_argv(flags, args.model, port),
                                               f"{base}/ping"))
            services[name] = (proc, base)
        for proc, base in services.values():  # warm-up
            wrk(proc.pid, base + payload.path, script, args.connections, 2)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                proc, base = services[name]
                rate, per_request = wrk(proc.pid, base + payload.path, script,
                                        args.connections, args.seconds)
                rps[name].append(rate)
                wrk_cpu[name].append(per_request)
            print(f"round {r + 1} ({', '.join(order)}): " + "; ".join(
                f"{n} {rps[n][-1]:.0f} req/s {wrk_cpu[n][-1] * 1e6:.0f} us/req" for n in names),
                flush=True)

    print(f"\n{args.model}: medians of {args.rounds} rounds (wrk -c{args.connections}, "
          f"{args.seconds:g} s):")
    print(f"{'service':>9} {'req/s':>7} {'ratio':>6} {'per-round':>9} {'CPU/req':>9} "
          f"{'ratio':>6} {'per-round':>9}")
    off_rps, off_cpu = statistics.median(rps["off"]), statistics.median(wrk_cpu["off"])
    for n in names:
        t, c = statistics.median(rps[n]), statistics.median(wrk_cpu[n])
        rate_rounds = statistics.median(a / b for a, b in zip(rps[n], rps["off"], strict=True))
        cpu_rounds = statistics.median(b / a for a, b in zip(wrk_cpu[n], wrk_cpu["off"],
                                                              strict=True))
        print(f"{n:>9} {t:>7.0f} {t / off_rps:>6.3f} {rate_rounds:>9.3f} {c * 1e6:>6.0f} us "
              f"{off_cpu / c:>6.3f} {cpu_rounds:>9.3f}")
    print("ratio: throughput relative to off, req/s / off's and off's CPU per request / this "
          "one's; per-round: the median of the rounds' ratios")


if __name__ == "__main__":
    main()
