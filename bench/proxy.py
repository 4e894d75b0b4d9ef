"""What a proxy costs: direct vs inferwatch proxy vs a seed-style Flask proxy vs nginx.

    apt-get install -y nginx wrk                  # Debian packages
    .venv/bin/pip install flask requests          # the seed-style proxy only
    .venv/bin/python bench/proxy.py [--upstream serve|null] [--seconds 10] [--rate 200]

One upstream for all: `inferwatch serve` with the digits model (`--upstream null`: a trivial
ASGI app that answers a fixed JSON, to show the proxies' own ceiling). Each proxy runs in its
own process and they are measured one after another, with the same two tools:
- throughput: wrk, closed loop, --connections connections posting one OIP v2 digit for
  --seconds; the proxy's CPU time per request is read from /proc, which does not depend on
  how the two cores were shared between wrk, the upstream and the proxy;
- latency: `inferwatch load`, open loop at --rate for --seconds (all 360 held-out digits);
  the added p50/p99 is the proxy's minus the mean of two direct runs (before and after).
The seed-style proxy is the seed's exporter: Flask's server, `requests.post` without a
session (a new connection per request) and its three metrics; it forwards the same path.
nginx runs one worker (like the other proxies, one process) with upstream keep-alive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from inferwatch.operate.load import LoadPlan, build_payloads, run_load_sync

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(argv: list[str], ready: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()[-2000:]}")
            try:
                httpx.get(ready, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children (nginx's worker)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wrk(url: str, script: Path, connections: int, seconds: float) -> tuple[float, str]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    rate = next(float(line.split()[1]) for line in out.splitlines()
                if line.startswith("Requests/sec:"))
    bad = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket" in line]
    return rate, "; ".join(bad)


def measure(name: str, url: str, pid: int | None, args: argparse.Namespace,
            script: Path) -> dict[str, Any]:
    path = build_payloads("v2")[0].path
    for _ in range(200):  # warm the connection pools
        httpx.post(url + path, content=script.with_suffix(".json").read_bytes())
    cpu0 = cpu_seconds(pid) if pid else 0.0
    start = time.perf_counter()
    rate, bad = wrk(url + path, script, args.connections, args.seconds)
    elapsed = time.perf_counter() - start
    cpu = (cpu_seconds(pid) - cpu0) / (rate * elapsed) * 1e6 if pid else None
    time.sleep(1)
    load = run_load_sync(LoadPlan(url=url, rate=args.rate, duration=args.seconds, route="v2"))
    row = {"name": name, "rps": rate, "cpu_us": cpu, "bad": bad, "ok": load.ok,
           "sent": load.sent, "p50": load.quantile(0.5), "p99": load.quantile(0.99)}
    print(f"  {name}: {rate:.0f} req/s, {load.ok}/{load.sent} ok at {args.rate:g}/s"
          + (f", {bad}" if bad else ""), flush=True)
    return row


def report(rows: list[dict[str, Any]], upstream: str) -> None:
    direct = [r for r in rows if r["name"] == "direct"]
    base_rps = sum(float(r["rps"]) for r in direct) / len(direct)
    base50 = sum(float(r["p50"]) for r in direct) / len(direct)
    base99 = sum(float(r["p99"]) for r in direct) / len(direct)
    print(f"\nupstream: {upstream}; one machine, {os.cpu_count()} cores shared by wrk, the "
          "upstream and the proxy")
    print(f"{'':14} {'req/s':>8} {'vs direct':>9} {'proxy CPU':>10} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'added p50':>9} {'added p99':>9}")
    by_name = {}
    for r in rows:
        by_name[r["name"]] = r
        cpu = "" if r["cpu_us"] is None else f"{r['cpu_us']:.0f} us/req"
        p50, p99 = float(r["p50"]) * 1e3, float(r["p99"]) * 1e3
        added = "" if r["name"] == "direct" else (
            f"{p50 - base50 * 1e3:+9.3f} {p99 - base99 * 1e3:+9.3f}")
        print(f"{r['name']:14} {float(r['rps']):8.0f} "
              f"{float(r['rps']) / base_rps:9.2f} {cpu:>10} {p50:7.3f} {p99:7.3f} {added}")
    ours, seed, nginx = (float(by_name[n]["rps"])
                         for n in ("inferwatch", "seed-flask", "nginx"))
    added50 = (float(by_name["inferwatch"]["p50"]) - base50) * 1e3
    print(f"\ninferwatch / seed-style throughput: {ours / seed:.1f}x (goal >= 10x)")
    print(f"inferwatch / nginx throughput:      {ours / nginx:.2f}x (goal >= 0.5x)")
    print(f"inferwatch added p50:               {added50:.3f} ms (goal <= 0.5 ms)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", choices=("serve", "null"), default="serve")
    parser.add_argument("--seconds", type=float, default=10)
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
    script.with_suffix(".json").write_bytes(body)
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
    rows = []
    with running(up_argv, f"{upstream}/v2/health/ready", log):
        print(f"upstream {described} on {upstream}; wrk -c{args.connections} for "
              f"{args.seconds:g}s, then {args.rate:g} req/s for {args.seconds:g}s each", flush=True)
        rows.append(measure("direct", upstream, None, args, script))
        port = free_port()
        with running([*python, "-m", "inferwatch", "proxy", "--upstream", upstream,
                      "--port", str(port), "--model", "digits"],
                     f"http://127.0.0.1:{port}/metrics", log) as proc:
            rows.append(measure("inferwatch", f"http://127.0.0.1:{port}", proc.pid, args, script))
        port = free_port()
        with running([*python, __file__, "--seed-proxy", str(port), upstream],
                     f"http://127.0.0.1:{port}/metrics", log) as proc:
            rows.append(measure("seed-flask", f"http://127.0.0.1:{port}", proc.pid, args, script))
        port = free_port()
        conf = tmp / "nginx"
        conf.mkdir()
        (conf / "nginx.conf").write_text(NGINX_CONF.format(
            d=conf, upstream=f"127.0.0.1:{up_port}", port=port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with running([nginx, "-p", str(conf), "-c", str(conf / "nginx.conf")],
                     f"http://127.0.0.1:{port}/v2/health/ready", log) as proc:
            rows.append(measure("nginx", f"http://127.0.0.1:{port}", proc.pid, args, script))
        rows.append(measure("direct", upstream, None, args, script))
    report(rows, described)
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
