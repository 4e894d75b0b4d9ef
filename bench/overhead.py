"""What the instrumentation costs: `inferwatch serve` with metrics on vs off, side by side.

    python bench/overhead.py [--rounds 7] [--seconds 4] [--connections 32]
                             [--model digits|resnet18] [--max-batch-size N]
                             [--services on,on-noq,...] [--against REV] [--one-process]
                             [--asgi [--requests 8000]]

Seven services, each its own process on its own port:
- ``on``: the default (`inferwatch serve`: metrics and quality tracking),
- ``on-noq``: metrics without quality tracking (`--no-quality`),
- ``off``: `--no-metrics` (no recorder, no instrument call per request, no /metrics),
- ``off-again``: a second ``off`` process, for how far two identical services differ in the
  same run: the noise floor under every other ratio,
- ``noq-percall``: as ``on-noq`` with each request's metric calls made as it ends (what a
  worker process does, see ``RequestRecorder``) instead of one record folded at scrape time,
  to see what the recorder buys in the running service,
- ``on-thread``: as ``on`` with two of quality tracking's changes of 2026-11-26 reverted:
  its flushes in a thread every 0.5 s, and each request sorting and storing its feedback
  answer,
- ``on-noanswers``: as ``on`` with no answer kept for labelled feedback (the feedback
  store's share of quality tracking).

``--model resnet18`` serves resnet18 instead (one torch thread, a 224x224 PNG on the TorchServe
route): what the same instrumentation costs beside a model call of tens of milliseconds.
Every round starts fresh processes, with the round's own PYTHONHASHSEED (see
harness.seed_round), since a process keeps its memory layout for life and two identical
processes can differ by a few percent: over rounds that averages out: five identical
``off`` processes measured 0.985x-1.004x of the first. Each
round starts and drives every service in turn, the order rotating between rounds, with wrk
(closed loop, --connections connections posting one OIP v2 digit, --seconds): requests/s,
and the CPU seconds the service spent per request (user + system from /proc,
every thread). CPU per request is the robust one: its inverse is the throughput of a
dedicated core, and it moves little when other processes take the cores that wrk's req/s
depends on. With the default batching, how many requests share a model call depends on
timing, and the digits model's call is a third of a request's CPU: ``--max-batch-size 1``
holds every service to one call per request, which isolates what the instrumentation costs.
Before that, in process: what one request's accounting costs, as the per-call path
(``MetricsMiddleware``'s calls, with prometheus_client's stock Histogram and with the
DeferredHistogram) and as a ``RequestRecorder`` record, its fold included.
Prints every round, then the medians and the ratios to ``off`` (throughput: higher is better,
so this/off; from CPU: off's CPU per request / this one's). ``--against REV`` also runs each
chosen service but ``off`` as git revision REV builds it (``on@REV``...): its tree checked
out with ``git worktree`` and imported through PYTHONPATH, with this environment's
dependencies; what a change costs or saves, measured side by side.

``--one-process`` serves the chosen services (those made by flags: on, on-noq, off,
off-again) from one process each round, each on its own port, on one event loop, built in
the round's order. Two processes differ by a few percent for life; services in one process
share that luck, so their ratios hold what their code does differently. What they share,
the collector's passes over every live object and the caches, is shared by both sides of
each ratio.

``--asgi`` drives the services' ASGI apps (those made by flags, and ``on-noanswers``) in
this process, without HTTP: --requests posts of the same digit per service and round, 16 at
a time, the rounds interleaved, CPU time per request from ``time.process_time``. No server,
client or kernel shares the cores with them; what it leaves out (uvicorn's HTTP, about a
third of a request) is the same with metrics on and off, so the microseconds it finds are
what the service pays, over a larger total. Every round builds its apps afresh, in the
round's order: an app keeps its objects' places in memory for life, and one kept through a
whole run measured 0.3-0.4 us a request from another running the same code. Over 40 rounds
a service's extra moves by about 0.2 us from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import uvicorn
from harness import (  # bench/, next to this
    cpu_seconds,
    free_port,
    running,
    seed_round,
    wait_ready,
)
from prometheus_client import CollectorRegistry, Histogram
from quantiles import resnet18_payloads

from inferwatch.httplimits import HttpLimits
from inferwatch.limitedhttp import uvicorn_options
from inferwatch.metrics import FeedbackStore, InferenceMetrics, QualityWorker, model_from_path
from inferwatch.metrics.instruments import RequestRecorder, _SharedRecorder
from inferwatch.operate.load import Payload, build_payloads
from inferwatch.serve.app import ServeConfig, create_app, prepare_serving_process
from inferwatch.serve.server import serve_options, serve_together

SERVICES = {"on": [], "on-noq": ["--no-quality"], "off": ["--no-metrics"],
            "off-again": ["--no-metrics"], "noq-percall": ["--per-call", "--no-quality"],
            "on-thread": ["--thread-quality"], "on-noanswers": ["--no-answers"]}
PER_CALL = "--per-call"  # bench only: every request's metric calls made as it ends
NO_ANSWERS = "--no-answers"  # bench only: no answer kept for feedback
ONE_PROCESS = "--one-process"
SERVE_ALL = "--serve-all"  # the process of --one-process: several services, see serve_all
THREAD_QUALITY = "--thread-quality"  # bench only: see thread_quality


def per_call_recorder(self: InferenceMetrics, model: str) -> RequestRecorder:
    return _SharedRecorder(self, model, self.in_flight_gauge(model))


def per_call() -> contextlib.AbstractContextManager[object]:
    return mock.patch.object(InferenceMetrics, "recorder", per_call_recorder)


def thread_quality() -> contextlib.ExitStack:
    """Quality tracking's flushes in a thread every 0.5 s, and each request sorting and
    storing its own feedback answer, as `serve` did before 2026-11-26 (its observation
    stays per batch)."""
    def start(self: QualityWorker) -> None:
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(0.5):
                for job in self.jobs:
                    job()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.thread = (thread, stop)  # type: ignore[attr-defined]

    async def stop(self: QualityWorker) -> None:
        thread, stop = self.thread  # type: ignore[attr-defined]
        stop.set()
        thread.join(5)
        for job in self.jobs:
            job()

    def defer(self: FeedbackStore, model: str, ids: list[str | None],
              probabilities: np.ndarray) -> None:
        for request_id, row in zip(ids, probabilities, strict=True):
            if request_id is not None:
                self.remember(request_id, model, np.argsort(row)[::-1][:self.top_k])

    patches = contextlib.ExitStack()
    patches.enter_context(mock.patch.object(QualityWorker, "start", start))
    patches.enter_context(mock.patch.object(QualityWorker, "stop", stop))
    patches.enter_context(mock.patch.object(FeedbackStore, "defer", defer))
    return patches


def keep_no_answer(*_: Any) -> None:
    """FeedbackStore.defer for ``on-noanswers``."""


def no_answers() -> contextlib.AbstractContextManager[object]:
    return mock.patch.object(FeedbackStore, "defer", keep_no_answer)


LAUNCHERS = {PER_CALL: per_call, THREAD_QUALITY: thread_quality, NO_ANSWERS: no_answers}
IN_PROCESS = {NO_ANSWERS}  # launchers --asgi applies to one app


def serve_config(flags: list[str], model: str) -> ServeConfig:
    """What `inferwatch serve` makes of the services' flags."""
    config = ServeConfig(models=(model,))
    given = iter(flags)
    for flag in given:
        if flag in ("--quality", "--no-quality", "--metrics", "--no-metrics"):
            setattr(config, flag.removeprefix("--").removeprefix("no-"),
                    not flag.startswith("--no-"))
        elif flag == "--max-batch-size":
            config.max_batch_size = int(next(given))
        else:
            raise SystemExit(f"{flag}: not a flag of a service that shares a process")
    return config


def serve_all(model: str, services: list[str]) -> None:
    """Serve each of ``services`` (``PORT FLAG...``) on 127.0.0.1 from this process, as
    `inferwatch serve` serves one."""
    apps = []
    for service in services:
        port, *flags = service.split()
        apps.append((int(port), create_app(serve_config(flags, model))))
    prepare_serving_process()
    configs = [uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                              access_log=False, **serve_options(), **uvicorn_options(HttpLimits()))
               for port, app in apps]
    serve_together(uvicorn.Server(configs[0]), configs[1:])


async def drive(app: Any, payload: Payload, requests: int, concurrency: int = 16) -> None:
    """``requests`` posts of ``payload`` to the ASGI ``app``, ``concurrency`` at a time."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": payload.path,
             "raw_path": payload.path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", payload.content_type.encode()),
                         (b"content-length", str(len(payload.body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def one() -> None:
        sent = False
        status = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # the client stays connected
            sent = True
            return {"type": "http.request", "body": payload.body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"{payload.path} answered {status}")

    async def client(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))


def asgi_rounds(names: list[str], flags: dict[str, list[str]], model: str, payload: Payload,
                rounds: int, requests: int) -> None:
    """The ``--asgi`` measurement: every service's app in this process, driven in turn."""
    sent = requests // 16 * 16  # drive's clients share them out evenly

    def settle(app: Any) -> None:
        """What the service's quality task would do with this app's traffic in its time."""
        for d in app.state.service.deployments.values():
            if d.quality is not None:
                d.quality.flush()
        app.state.service.feedback.settle()

    def app_for(name: str) -> Any:
        app = create_app(serve_config([f for f in flags[name] if f not in IN_PROCESS], model))
        if NO_ANSWERS in flags[name]:
            app.state.service.feedback.defer = keep_no_answer
        return app

    async def run() -> dict[str, list[float]]:
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            apps = {n: app_for(n) for n in order}  # fresh every round: see the docstring
            async with contextlib.AsyncExitStack() as stack:
                for app in apps.values():
                    await stack.enter_async_context(app.state.service.lifespan(app))
                prepare_serving_process()
                for app in apps.values():  # warm-up
                    await drive(app, payload, min(requests, 2000))
                for n in order:
                    started = time.process_time()
                    await drive(apps[n], payload, requests)
                    settle(apps[n])  # its quality work, not the next service's
                    cpu[n].append((time.process_time() - started) / sent)
            gc.unfreeze()  # this round's apps may go, cycles included
            del apps
            gc.collect()
            print(f"round {r + 1} ({', '.join(order)}): " + "; ".join(
                f"{n} {cpu[n][-1] * 1e6:.1f} us/req" for n in names), flush=True)
        return cpu

    # serve's kind of loop (uvloop where installed); the config's app is never called
    factory = uvicorn.Config(lambda *_: None, **serve_options()).get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        cpu = runner.run(run())
    off = statistics.median(cpu["off"])
    print(f"\n{model}: in process, no HTTP, medians of {rounds} rounds of {sent} requests:")
    print(f"{'service':>12} {'CPU/req':>9} {'extra':>8} {'ratio':>6} {'per-round':>9}")
    for n in names:
        c = statistics.median(cpu[n])
        per_round = statistics.median(b / a for a, b in zip(cpu[n], cpu["off"], strict=True))
        print(f"{n:>12} {c * 1e6:>6.1f} us {(c - off) * 1e6:>+5.2f} us {off / c:>6.3f} "
              f"{per_round:>9.3f}")
    print("ratio: off's CPU per request / this one's; per-round: the median of the rounds' "
          "ratios")


def service_argv(flags: list[str], model: str, port: int, src: Path | None = None
                 ) -> list[str]:
    """The command of one service; with ``src``, the package imported from there."""
    patched = [f for f in flags if f in LAUNCHERS]
    launcher = [__file__, *patched] if patched else ["-m", "inferwatch"]
    env = ["env", f"PYTHONPATH={src}"] if src else []  # env execs: the pid stays the service's
    return [*env, sys.executable, *launcher, "serve", "--port", str(port), "--model", model,
            *(f for f in flags if f not in LAUNCHERS), "--log-level", "warning"]


def checkout(revision: str, into: Path) -> Path:
    """The ``src`` directory of ``revision``, checked out into ``into``."""
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(into), revision],
                   check=True, cwd=Path(__file__).parent)
    return into / "src"


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


def median_interval(ratios: list[float], draws: int = 10_000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of ``ratios``: the median of as many rounds,
    drawn again with replacement, ``draws`` times."""
    medians = np.median(np.random.default_rng(0).choice(ratios, (draws, len(ratios))), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def metric_updates(rounds: int = 7, number: int = 20_000) -> None:
    """In process: one request's accounting, per call (stock and deferred histograms) and as
    a recorder's record."""
    with mock.patch("inferwatch.metrics.instruments.DeferredHistogram", Histogram):
        stock = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
    deferred = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
    recorder = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry()).recorder("digits")

    def per_call(metrics: InferenceMetrics) -> None:
        model = model_from_path("/v2/models/digits/infer")
        gauge = metrics.in_flight_gauge(model)
        gauge.inc()
        metrics.observe_stages("digits", (("preprocess", 1e-4), ("queue", 5e-5),
                                          ("compute", 2e-4)))
        metrics.observe_batch("digits", 1)
        metrics.observe_stage("digits", "postprocess", 3e-5)
        gauge.dec()
        metrics.observe_request(model, 200, 4e-4)

    def record() -> None:
        recorder.active += 1
        recorder.batch(1)
        recorder.succeeded(0.0, 1e-4, 5e-5, 2e-4, 0.0)
        recorder.active -= 1

    variants = {"per call, stock Histogram": lambda: per_call(stock),
                "per call, DeferredHistogram": lambda: per_call(deferred),
                "RequestRecorder": record}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timeit.timeit(fn, number=number) / number)
    first = statistics.median(times["per call, stock Histogram"])
    print("one request's accounting, in process (median of "
          f"{rounds} x {number}): " + ", ".join(
              f"{name} {statistics.median(t) * 1e6:.2f} us ({statistics.median(t) / first:.2f}x)"
              for name, t in times.items()))


def main() -> None:
    if sys.argv[1:2] == [SERVE_ALL]:
        serve_all(sys.argv[2], sys.argv[3:])
        return
    if sys.argv[1:2] and sys.argv[1] in LAUNCHERS:
        from inferwatch.cli import app

        with LAUNCHERS[sys.argv[1]]():
            app(sys.argv[2:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--model", choices=("digits", "resnet18"), default="digits")
    parser.add_argument("--services",
                        help="which of the services to run, comma-separated; off is always "
                             "run (default: all, or with --one-process or --asgi all those "
                             "made by flags)")
    parser.add_argument("--max-batch-size", type=int, default=0,
                        help="passed to every service; 1 makes every request one model call, "
                             "so that batch sizes cannot differ between services")
    parser.add_argument("--against", metavar="REV",
                        help="also run the services but off as git revision REV builds them")
    parser.add_argument(ONE_PROCESS, action="store_true",
                        help="serve the services from one process each round")
    parser.add_argument("--asgi", action="store_true",
                        help="drive the services' apps in this process, without HTTP")
    parser.add_argument("--requests", type=int, default=8000,
                        help="with --asgi: requests per service and round")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    os.environ.setdefault("INFERWATCH_TORCH_THREADS", "1")  # the services share two cores
    payload = (build_payloads("v2")[0] if args.model == "digits"
               else resnet18_payloads(1)[0])  # the 8x8 digits are below resnet18's minimum
    tmp = Path(tempfile.mkdtemp(prefix="iw-bench-overhead-"))
    (tmp / "body").write_bytes(payload.body)  # a PNG for resnet18: read as bytes, not text
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = '
                      f'"{payload.content_type}"\nlocal f = io.open("{tmp / "body"}", "rb")\n'
                      'wrk.body = f:read("*all")\nf:close()\n')

    metric_updates()
    # Launchers patch a whole process: --one-process cannot take them, --asgi only those it
    # applies to one app.
    unusable = set(LAUNCHERS) - (IN_PROCESS if args.asgi else set())
    chosen = (args.services.split(",") if args.services else
              [n for n, f in SERVICES.items() if not set(f) & unusable]
              if args.one_process or args.asgi else list(SERVICES))
    names = [n for n in SERVICES if n in {*chosen, "off"}]
    flags = {n: SERVICES[n] for n in names}
    if (args.one_process or args.asgi) and (args.against or any(
            set(flags[n]) & unusable for n in names)):
        sys.exit(f"{ONE_PROCESS} and --asgi take services made by flags, and no --against")
    sources: dict[str, Path] = {}
    if args.against:
        old = checkout(args.against, tmp / "against")
        for n in [n for n in names if n != "off"]:
            names.append(f"{n}@{args.against}")
            flags[names[-1]], sources[names[-1]] = SERVICES[n], old
    extra = ["--max-batch-size", str(args.max_batch_size)] if args.max_batch_size else []
    if args.asgi:
        asgi_rounds(names, {n: [*flags[n], *extra] for n in names}, args.model, payload,
                    args.rounds, args.requests)
        return
    rps: dict[str, list[float]] = {n: [] for n in names}
    wrk_cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        seed_round(r)
        with contextlib.ExitStack() as stack:  # fresh processes every round
            services = {}
            ports = {name: free_port() for name in order}
            if args.one_process:
                proc = stack.enter_context(running(
                    [sys.executable, __file__, SERVE_ALL, args.model,
                     *(" ".join([str(ports[n]), *flags[n], *extra]) for n in order)],
                    f"http://127.0.0.1:{ports[order[0]]}/ping"))
            for name in order:  # started in the round's order too: see the docstring
                base = f"http://127.0.0.1:{ports[name]}"
                if args.one_process:
                    if not wait_ready(f"{base}/ping", proc=proc):
                        raise RuntimeError(f"{name} did not start")
                    services[name] = (proc, base)
                    continue
                argv = service_argv([*flags[name], *extra], args.model, ports[name],
                                    sources.get(name))
                services[name] = (stack.enter_context(running(argv, f"{base}/ping")), base)
            for proc, base in services.values():  # warm-up
                wrk(proc.pid, base + payload.path, script, args.connections, 2)
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
          f"{args.seconds:g} s{', --max-batch-size ' + str(args.max_batch_size) if extra else ''}"
          f"{', one process' if args.one_process else ''}):")
    width = max(9, *map(len, names))
    print(f"{'service':>{width}} {'req/s':>7} {'ratio':>6} {'per-round':>9} {'95% interval':>12} "
          f"{'CPU/req':>9} {'ratio':>6} {'per-round':>9}")
    off_rps, off_cpu = statistics.median(rps["off"]), statistics.median(wrk_cpu["off"])
    for n in names:
        t, c = statistics.median(rps[n]), statistics.median(wrk_cpu[n])
        ratios = [a / b for a, b in zip(rps[n], rps["off"], strict=True)]
        low, high = median_interval(ratios)
        cpu_rounds = statistics.median(b / a for a, b in zip(wrk_cpu[n], wrk_cpu["off"],
                                                              strict=True))
        print(f"{n:>{width}} {t:>7.0f} {t / off_rps:>6.3f} {statistics.median(ratios):>9.3f} "
              f"{low:>6.3f}-{high:.3f} {c * 1e6:>6.0f} us {off_cpu / c:>6.3f} {cpu_rounds:>9.3f}")
    print("ratio: throughput relative to off, req/s / off's and off's CPU per request / this "
          "one's; per-round: the median of the rounds' ratios; 95% interval: of the req/s "
          "per-round median, rounds drawn again with replacement")
    if args.against:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "against")],
                       check=True, cwd=Path(__file__).parent)


if __name__ == "__main__":
    main()
