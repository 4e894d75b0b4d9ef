"""What a proxy costs: direct vs inferwatch proxy vs a seed-style Flask proxy vs nginx.

    apt-get install -y nginx wrk                  # Debian packages
    .venv/bin/pip install flask requests          # the seed-style proxy only
    .venv/bin/python bench/proxy.py [--upstream serve|null] [--rounds 3] [--seconds 5]
                                    [--connections 32] [--rate 200]

One upstream for all: `inferwatch serve` with the digits model (`--upstream null`: a trivial
ASGI app that answers a fixed JSON, to show the proxies' own ceiling). Each proxy runs in its
own process and they are measured one after another, with the same two tools:
- throughput: wrk, closed loop, --connections connections posting one OIP v2 digit for
  --seconds; the proxy's CPU time per request is read from /proc, which does not depend on
  how the two cores were shared between wrk, the upstream and the proxy;
- latency: open loop at --rate per target for --seconds, the four targets' requests
  interleaved in one run (direct, proxy, seed-style, nginx, direct, ...), so that every
  target meets the same machine: the added p50/p99 is the proxy's minus direct's;
- sequential latency: one request at a time on one connection, 2 ms apart, 500 times.
All processes run throughout; each round measures every target in turn, and the table shows
the median of --rounds rounds, so that a drift of the shared machine hits all targets alike.
The seed-style proxy is the seed's exporter: Flask's server, `requests.post` without a
session (a new connection per request) and its three metrics; it forwards the same path.
nginx runs one worker (like the other proxies, one process) with upstream keep-alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from harness import cpu_seconds, free_port, running  # bench/, next to this script

from inferwatch.operate.load import build_payloads

NULL_BODY = (b'{"model_name":"digits","model_version":"1","outputs":[{"name":"label",'
             b'"datatype":"INT64","shape":[1],"data":[0]}]}')

NGINX_CONF = """worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream inference {{ server {upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://inference;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def wrk(url: str, script: Path, connections: int, seconds: float) -> tuple[float, str]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    rate = next(float(line.split()[1]) for line in out.splitlines()
                if line.startswith("Requests/sec:"))
    bad = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket" in line]
    return rate, "; ".join(bad)


async def interleaved_latency(urls: dict[str, str], path: str, body: bytes, rate: float,
                              seconds: float) -> dict[str, list[float]]:
    """Open loop at ``rate`` per target, the targets taking turns request by request: each
    target's latencies, from the scheduled send time (so a late send counts)."""
    names = list(urls)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    headers = {"Content-Type": "application/json"}
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
                for name in names}

    async def one(name: str, scheduled: float) -> None:
        async with sessions[name].post(urls[name] + path, data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{name}: HTTP {r.status}")
        latencies[name].append(time.perf_counter() - scheduled)

    tasks = []
    try:
        interval = 1.0 / (rate * len(names))
        t0 = time.perf_counter()
        for i in range(int(rate * seconds) * len(names)):
            scheduled = t0 + i * interval
            while (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(names[i % len(names)], scheduled)))
        await asyncio.gather(*tasks)
    finally:
        for session in sessions.values():
            await session.close()
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential_p50(url: str, path: str, body: bytes, count: int = 500) -> float:
    """Median round trip of one request at a time, 2 ms apart, on a keep-alive connection
    (a new one when the server closes it, as the seed's HTTP/1.0 server does): the added
    latency with no queueing and no load generator in the way."""
    host, port = url.removeprefix("http://").split(":")
    request = (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body))
    times = []
    conn: socket.socket | None = None
    try:
        for _ in range(count):
            start = time.perf_counter()
            if conn is None:
                conn = socket.create_connection((host, int(port)))
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(request)
            data = b""
            while True:
                chunk = conn.recv(65536)
                data += chunk
                head, sep, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if not chunk or (sep and length is not None and len(rest) >= length):
                    break
            times.append(time.perf_counter() - start)
            if not chunk or b"connection: close" in head.lower():
                conn.close()
                conn = None
            time.sleep(0.002)
    finally:
        if conn is not None:
            conn.close()
    return statistics.median(times)


def warm(url: str, body: bytes) -> None:
    path = build_payloads("v2")[0].path
    with httpx.Client() as client:
        for _ in range(200):  # connection pools, the upstream's model, code paths
            client.post(url + path, content=body, headers={"Content-Type": "application/json"})


def report(results: dict[str, dict[str, list[float]]], described: str,
           args: argparse.Namespace) -> None:
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    base = med["direct"]
    print(f"\nupstream: {described}; medians of {args.rounds} rounds; one machine, "
          f"{os.cpu_count()} cores shared by wrk, the upstream, the proxy and this script")
    print(f"{'':12} {'req/s':>7} {'vs direct':>9} {'proxy CPU':>12} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'added p50':>9} {'added p99':>9} {'seq p50':>8} {'added':>7}")
    for name, m in med.items():
        cpu = f"{m['cpu_us']:.0f} us/req" if "cpu_us" in m else ""
        added = " " * 19 if name == "direct" else (
            f"{(m['p50'] - base['p50']) * 1e3:+9.3f} {(m['p99'] - base['p99']) * 1e3:+9.3f}")
        seq = "" if name == "direct" else f"{(m['seq'] - base['seq']) * 1e3:+7.3f}"
        print(f"{name:12} {m['rps']:7.0f} {m['rps'] / base['rps']:9.2f} {cpu:>12} "
              f"{m['p50'] * 1e3:7.3f} {m['p99'] * 1e3:7.3f} {added} {m['seq'] * 1e3:8.3f} {seq}")
    ours, seed, nginx = med["inferwatch"], med["seed-flask"], med["nginx"]
    print(f"\ninferwatch / seed-style throughput: {ours['rps'] / seed['rps']:.1f}x (goal >= 10x)")
    print(f"inferwatch / nginx throughput:      {ours['rps'] / nginx['rps']:.2f}x (goal >= 0.5x)")
    print(f"inferwatch added p50:               {(ours['p50'] - base['p50']) * 1e3:.3f} ms "
          f"at {args.rate:g} req/s, {(ours['seq'] - base['seq']) * 1e3:.3f} ms one at a time "
          "(goal <= 0.5 ms)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", choices=("serve", "null"), default="serve")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing: apt-get install -y nginx wrk")
    try:
        import flask  # noqa: F401
        import requests  # noqa: F401
    except ImportError:
        sys.exit("the seed-style proxy needs: .venv/bin/pip install flask requests")

    tmp = Path(tempfile.mkdtemp(prefix="iw-bench-proxy-"))
    log = tmp / "processes.log"
    body = build_payloads("v2")[0].body
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [[{body.decode()}]]\n")
    python = [sys.executable]
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    up_argv = [*python, "-m", "inferwatch", "serve", "--port", str(up_port)]
    if args.upstream == "null":
        up_argv = [*python, __file__, "--null-upstream", str(up_port)]
    described = ("inferwatch serve, digits model" if args.upstream == "serve"
                 else "null ASGI app under uvicorn")
    ports = {name: free_port() for name in ("inferwatch", "seed-flask", "nginx")}
    conf = tmp / "nginx"
    conf.mkdir()
    (conf / "nginx.conf").write_text(NGINX_CONF.format(
        d=conf, upstream=f"127.0.0.1:{up_port}", port=ports["nginx"]))
    commands = {
        "inferwatch": ([*python, "-m", "inferwatch", "proxy", "--upstream", upstream,
                        "--port", str(ports["inferwatch"]), "--model", "digits"], "/metrics"),
        "seed-flask": ([*python, __file__, "--seed-proxy", str(ports["seed-flask"]), upstream],
                       "/metrics"),
        "nginx": ([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(conf), "-c",
                   str(conf / "nginx.conf")], "/v2/health/ready"),
    }
    path = build_payloads("v2")[0].path
    with contextlib.ExitStack() as stack:
        stack.enter_context(running(up_argv, f"{upstream}/v2/health/ready", log))
        targets: dict[str, tuple[str, int | None]] = {"direct": (upstream, None)}
        for name, (argv, ready) in commands.items():
            url = f"http://127.0.0.1:{ports[name]}"
            targets[name] = (url, stack.enter_context(running(argv, url + ready, log)).pid)
        for url, _ in targets.values():
            warm(url, body)
        print(f"upstream {described} on {upstream}; per round and target: wrk -t1 "
              f"-c{args.connections} -d{args.seconds:g}s and the sequential run; then all "
              f"targets open loop, interleaved, {args.rate:g} req/s each for {args.seconds:g}s",
              flush=True)
        results: dict[str, dict[str, list[float]]] = {
            name: {"rps": [], "p50": [], "p99": [], "seq": []} for name in targets}
        for round_ in range(args.rounds):
            for name, (url, pid) in targets.items():
                cpu0 = cpu_seconds(pid) if pid else 0.0
                start = time.perf_counter()
                rate, bad = wrk(url + path, script, args.connections, args.seconds)
                elapsed = time.perf_counter() - start
                if pid:
                    cpu = (cpu_seconds(pid) - cpu0) / (rate * elapsed) * 1e6
                    results[name].setdefault("cpu_us", []).append(cpu)
                results[name]["rps"].append(rate)
                results[name]["seq"].append(sequential_p50(url, path, body))
                if bad:
                    print(f"  round {round_ + 1} {name}: {bad}", flush=True)
            time.sleep(0.5)
            latencies = asyncio.run(interleaved_latency(
                {name: url for name, (url, _) in targets.items()}, path, body, args.rate,
                args.seconds))
            for name, values in latencies.items():
                r = results[name]
                r["p50"].append(quantile(values, 0.5))
                r["p99"].append(quantile(values, 0.99))
                print(f"  round {round_ + 1} {name:10} {r['rps'][-1]:7.0f} req/s  p50 "
                      f"{r['p50'][-1] * 1e3:.3f} ms  p99 {r['p99'][-1] * 1e3:.3f} ms  "
                      f"sequential p50 {r['seq'][-1] * 1e3:.3f} ms", flush=True)
    report(results, described, args)
    shutil.rmtree(tmp, ignore_errors=True)


def seed_proxy(port: int, upstream: str) -> None:
    """The seed's exporter, generalised to forward any path: Flask + requests, no session."""
    import logging

    import requests
    from flask import Flask, Response, request
    from prometheus_client import Counter, Histogram, generate_latest

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    latency = Histogram("inference_latency_seconds", "Latency.", buckets=[0.1, 0.5, 1.0, 2.0])
    errors = Counter("inference_errors_total", "Errors.")
    count = Counter("inference_requests_total", "Requests.")
    app = Flask("seed")

    @app.route("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), content_type="text/plain")

    @app.route("/<path:path>", methods=["POST", "GET"])
    def forward(path: str) -> Response:
        start = time.time()
        count.inc()
        try:
            r = requests.post(f"{upstream}/{path}", data=request.get_data(),
                              headers={"Content-Type": request.content_type or ""})
            r.raise_for_status()
            latency.observe(time.time() - start)
            return Response(r.content, status=r.status_code, content_type="application/json")
        except Exception as exc:
            errors.inc()
            return Response(str(exc), status=500)

    app.run(host="127.0.0.1", port=port, debug=False)


def null_upstream(port: int) -> None:
    import uvicorn

    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(NULL_BODY)).encode())]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        while message.get("more_body"):
            message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": NULL_BODY})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="off", loop="uvloop", http="httptools")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seed-proxy"]:
        seed_proxy(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:2] == ["--null-upstream"]:
        null_upstream(int(sys.argv[2]))
    else:
        main()
