"""Which HTTP stack for the proxy? Minimal forwarding proxies on each candidate, same load.

    apt-get install -y nginx wrk
    .venv/bin/pip install --target /tmp/granian granian   # optional: PYTHONPATH=/tmp/granian
    .venv/bin/python bench/proxy_stacks.py [--seconds 5]

Each candidate forwards POST bodies to the same null upstream (bench/proxy.py's) with a
pooled keep-alive client and no metrics; `inferwatch proxy` runs as shipped, metrics and all.
wrk, closed loop, 32 connections; "proxy CPU" is the candidate's CPU time per request.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import cpu_seconds, free_port, running
from proxy import NGINX_CONF, wrk

from inferwatch.operate.load import build_payloads

CANDIDATES = ("aiohttp-server+aiohttp-client", "uvicorn+aiohttp-client", "uvicorn+httpx",
              "granian+aiohttp-client")


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _asgi_app(forward: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        ctype = dict(scope["headers"]).get(b"content-type", b"").decode()
        status, ctype_out, data = await forward(scope["path"], await _body(receive), ctype)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype_out.encode())]})
        await send({"type": "http.response.body", "body": data})

    return app


def aiohttp_forward(upstream: str) -> Any:
    import aiohttp

    session: list[aiohttp.ClientSession] = []

    async def forward(path: str, body: bytes, ctype: str) -> tuple[int, str, bytes]:
        if not session:
            session.append(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False))
        async with session[0].post(upstream + path, data=body,
                                   headers={"content-type": ctype}) as r:
            return r.status, r.headers.get("content-type", ""), await r.read()

    return forward


def httpx_forward(upstream: str) -> Any:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None))

    async def forward(path: str, body: bytes, ctype: str) -> tuple[int, str, bytes]:
        r = await client.post(upstream + path, content=body, headers={"content-type": ctype})
        return r.status_code, r.headers.get("content-type", ""), r.content

    return forward


def candidate(name: str, port: int, upstream: str) -> None:
    if name == "aiohttp-server+aiohttp-client":
        from aiohttp import web

        forward = aiohttp_forward(upstream)

        async def handle(request: web.Request) -> web.Response:
            status, ctype, data = await forward(request.path, await request.read(),
                                                request.headers.get("content-type", ""))
            return web.Response(body=data, status=status, headers={"content-type": ctype})

        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", handle)
        import uvloop

        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                    loop=uvloop.new_event_loop())
    elif name.startswith("uvicorn"):
        import uvicorn

        forward = httpx_forward(upstream) if name.endswith("httpx") else aiohttp_forward(
            upstream)
        uvicorn.run(_asgi_app(forward), host="127.0.0.1", port=port, log_level="warning",
                    access_log=False, loop="uvloop", http="httptools")
    else:
        from granian import Granian

        Granian(f"proxy_stacks:granian_app_{port}", address="127.0.0.1", port=port,
                interface="asgi", workers=1, runtime_threads=1, loop="uvloop",
                log_enabled=False).serve()


def __getattr__(name: str) -> Any:  # granian imports the app by name in its worker
    if name.startswith("granian_app_"):
        return _asgi_app(aiohttp_forward(sys.argv[4]))
    raise AttributeError(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="iw-bench-stacks-"))
    log = tmp / "processes.log"
    payload = build_payloads("v2")[0]
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [[{payload.body.decode()}]]\n")
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    bench = str(Path(__file__).with_name("proxy.py"))
    rows: list[tuple[str, float, float]] = []
    with running([sys.executable, bench, "--null-upstream", str(up_port)],
                 f"{upstream}/", log):
        runs: list[tuple[str, list[str], str]] = [
            (name, [sys.executable, __file__, "--candidate", name, "{port}", upstream], "")
            for name in CANDIDATES
            if name != "granian+aiohttp-client" or importlib.util.find_spec("granian")]
        runs.append(("inferwatch proxy", [sys.executable, "-m", "inferwatch", "proxy",
                                          "--upstream", upstream, "--port", "{port}",
                                          "--model", "digits"], "/metrics"))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        runs.append(("nginx", [nginx, "-p", "{dir}", "-c", "{dir}/nginx.conf"], ""))
        for name, argv, ready in runs:
            port = free_port()
            conf = tmp / f"nginx-{port}"
            conf.mkdir()
            (conf / "nginx.conf").write_text(NGINX_CONF.format(
                d=conf, upstream=f"127.0.0.1:{up_port}", port=port))
            argv = [a.format(port=port, dir=conf) for a in argv]
            with running(argv, f"http://127.0.0.1:{port}{ready}", log) as proc:
                url = f"http://127.0.0.1:{port}{payload.path}"
                wrk(url, script, 32, 1)  # warm-up
                cpu0 = cpu_seconds(proc.pid)
                rate, bad = wrk(url, script, 32, args.seconds)
                cpu = (cpu_seconds(proc.pid) - cpu0) / (rate * args.seconds) * 1e6
            rows.append((name, rate, cpu))
            print(f"  {name}: {rate:.0f} req/s, {cpu:.0f} us CPU/request {bad}", flush=True)
    nginx_rate = rows[-1][1]
    print(f"\n{'stack':32} {'req/s':>8} {'vs nginx':>8} {'proxy CPU':>12}")
    for name, rate, cpu in rows:
        print(f"{name:32} {rate:8.0f} {rate / nginx_rate:8.2f} {cpu:9.0f} us")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--candidate"]:
        candidate(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
