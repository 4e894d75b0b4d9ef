"""The proxy over loopback, in this process: our own serve and a scripted upstream."""

import asyncio
import contextlib
import http.client
import inspect
import json
import logging
import re
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from servers import serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.proxy import DiscoveryError, ProxyConfig, ProxyServer, discover_models
from inferwatch.serve.app import ServeConfig, create_app
from inferwatch.stack.panels import VARIABLES

CHUNKS = 4
CHUNK_GAP = 0.15


@contextmanager
def proxying(upstream: str, **options: Any) -> Iterator[tuple[str, CollectorRegistry]]:
    with running_proxy(upstream, **options) as proxy:
        yield f"http://127.0.0.1:{proxy.port}", proxy.registry


@contextmanager
def running_proxy(upstream: str, **options: Any) -> Iterator[ProxyServer]:
    """A ProxyServer on a free port, on its own event loop in a thread."""
    registry = CollectorRegistry()
    proxy = ProxyServer(ProxyConfig(upstream, port=0, **options), registry)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        loop.run_until_complete(proxy.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(proxy.close())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@dataclass
class Upstream:
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    """Lets a held stream (``/v1/completions`` with ``"hold"``) go on."""
    streamed: list[int] = field(default_factory=list)  # bytes each endless stream sent


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    record = Upstream()

    async def echo(request: Request) -> Response:
        body = await request.body()
        record.seen.append({"method": request.method, "path": request.url.path,
                            "headers": dict(request.headers), "body": body})
        model = request.path_params.get("model", "")
        if model == "fail500":
            return JSONResponse({"error": "boom"}, 500)
        if model == "fail404":
            return JSONResponse({"error": "no such model"}, 404)
        if model == "full":  # TorchServe's answers when it sheds load, and when a worker died
            return JSONResponse({"code": 503, "type": "ServiceUnavailableException",
                                 "message": "Model \"full\" has no worker to serve inference "
                                            "request. Please use scale workers API to add "
                                            "workers."}, 503)
        if model == "died":
            return JSONResponse({"code": 507, "type": "InternalServerException",
                                 "message": "Worker died."}, 507)
        if model == "buggy":  # TorchServe's answer when the handler raises
            return JSONResponse({"code": 503, "type": "InternalServerException",
                                 "message": "Prediction failed"}, 503)
        if model == "slow":
            await asyncio.sleep(1.0)
        return JSONResponse({"path": request.url.path, "query": request.url.query,
                             "length": len(body)},
                            headers={"X-Upstream": "yes", "Keep-Alive": "timeout=5",
                                     "Proxy-Authenticate": "Basic"})

    async def stream(request: Request) -> Response:
        await echo(request)

        async def events() -> AsyncIterator[bytes]:
            for i in range(CHUNKS):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(CHUNK_GAP)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def held(request: Request) -> Response:
        """An OpenAI-style stream that waits for ``release`` where its body's "hold" says:
        before its first token, between ``data: [DONE]`` and its end, or never ends."""
        hold = (await request.json())["hold"]

        async def events() -> AsyncIterator[bytes]:
            if hold == "first":
                await asyncio.to_thread(record.release.wait, 10)
            yield b'data: {"token": 1}\n\n'
            if hold == "endless":
                sent = 0
                try:
                    while sent < 100 << 20:
                        yield b"x" * 4096
                        sent += 4096
                        await asyncio.sleep(0.001)
                finally:
                    record.streamed.append(sent)
            yield b"data: [DONE]\n\n"
            if hold == "end":
                await asyncio.to_thread(record.release.wait, 10)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def oip_index(request: Request) -> Response:
        return JSONResponse([{"name": "m2", "version": "3", "state": "READY"}])

    app = Starlette(routes=[
        Route("/predictions/{model}", echo, methods=["POST", "PUT"]),
        Route("/explanations/{model}", echo, methods=["POST", "PUT"]),
        Route("/ping", echo, methods=["GET"]),
        Route("/v1/chat/completions", stream, methods=["POST"]),
        Route("/v1/completions", held, methods=["POST"]),
        Route("/v2/repository/index", oip_index, methods=["POST"]),
    ])
    with serving(app, lifespan="off", timeout_keep_alive=1) as url:
        record.url = url
        yield record


def value(registry: CollectorRegistry, name: str, model: str = "digits", version: str = "1",
          **labels: str) -> float:
    return registry.get_sample_value(name, {"model": model, "version": version, **labels}) or 0


def test_counts_match_serve_exactly_on_every_route() -> None:
    serve_registry = CollectorRegistry()
    n = 120
    with serving(create_app(ServeConfig(), serve_registry)) as serve_url, \
            proxying(serve_url, models=discover_models(serve_url)) as (url, registry):
        for route in ("predictions", "v2", "infer"):
            result = run_load_sync(LoadPlan(url=url, rate=400, count=n, route=route))
            assert result.ok == n, (route, result.statuses, result.transport_errors)
        direct = httpx.post(f"{serve_url}/v2/models/digits/infer", json={
            "id": "a", "inputs": [{"shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]})
        proxied = httpx.post(f"{url}/v2/models/digits/infer", json={
            "id": "a", "inputs": [{"shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]})
        assert proxied.status_code == 200 and proxied.json() == direct.json()
        total = 3 * n + 1
        for reg, proxied_total in ((registry, total), (serve_registry, total + 1)):
            assert value(reg, "inference_requests_total") == proxied_total
            assert value(reg, "inference_latency_seconds_count") == proxied_total
            assert value(reg, "inference_errors_total") == 0
        assert value(registry, "inference_stage_seconds_count", stage="compute") == total
        assert value(registry, "inference_in_flight_requests") == 0
        metrics = httpx.get(f"{url}/metrics").text
        assert 'inference_requests_total{model="digits",version="1"}' in metrics


def test_stream_is_passed_chunk_by_chunk_with_time_to_first_byte(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["llm"]) as (url, registry), \
            httpx.Client() as client:  # made before the clock starts: it takes up to 0.5 s
        arrivals = []
        start = time.perf_counter()
        with client.stream("POST", f"{url}/v1/chat/completions",
                           json={"model": "llm", "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            for chunk in response.iter_raw():
                arrivals.append((time.perf_counter() - start, chunk))
        assert b"".join(c for _, c in arrivals) == b"".join(
            f"data: {i}\n\n".encode() for i in range(CHUNKS))
        assert arrivals[0][0] < (CHUNKS - 1) * CHUNK_GAP / 2, arrivals  # not buffered
        assert len(arrivals) >= CHUNKS - 1
        assert value(registry, "inference_time_to_first_byte_seconds_count", "llm", "") == 1
        ttfb = value(registry, "inference_time_to_first_byte_seconds_sum", "llm", "")
        latency = value(registry, "inference_latency_seconds_sum", "llm", "")
        assert 0 < ttfb < latency and latency >= (CHUNKS - 1) * CHUNK_GAP

        # A model outside the known set is forwarded and counted as _unknown.
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "other"})
        assert r.status_code == 200
        assert value(registry, "inference_requests_total", "_unknown", "") == 1
        assert value(registry, "inference_requests_total", "llm", "") == 1


def test_upstream_failures_are_classified(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["fail500", "fail404", "slow"], timeout=0.3) as (
            url, registry):
        r = httpx.post(f"{url}/predictions/fail500", content=b"x")
        assert (r.status_code, r.json()) == (500, {"error": "boom"})  # relayed as is
        r = httpx.post(f"{url}/predictions/fail404", content=b"x")
        assert (r.status_code, r.json()) == (404, {"error": "no such model"})
        r = httpx.post(f"{url}/predictions/slow", content=b"x")
        assert r.status_code == 504
        assert r.json()["error"] == "upstream_timeout" and r.json()["code"] == 504
        for model, reason in (("fail500", "upstream_5xx"), ("fail404", "upstream_4xx"),
                              ("slow", "upstream_timeout")):
            assert value(registry, "inference_error_reasons_total", model, "",
                         reason=reason) == 1
        assert value(registry, "inference_errors_total", "fail500", "") == 1
        assert value(registry, "inference_errors_total", "fail404", "") == 0
        assert value(registry, "inference_errors_total", "slow", "") == 1

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with proxying(f"http://127.0.0.1:{closed_port}", models=["m"]) as (url, registry):
        r = httpx.post(f"{url}/predictions/m", content=b"x")
        assert r.status_code == 502 and r.json()["error"] == "upstream_connect"
        assert value(registry, "inference_error_reasons_total", "m", "",
                     reason="upstream_connect") == 1


def test_limits_and_hop_by_hop_headers(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m"], max_body_bytes=1000) as (url, registry):
        before = len(upstream.seen)
        r = httpx.post(f"{url}/predictions/m", content=b"x" * 1001)
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        assert len(upstream.seen) == before  # never forwarded
        assert value(registry, "inference_error_reasons_total", "m", "",
                     reason="body_too_large") == 1

        r = httpx.post(f"{url}/predictions/m?a=1", content=b"x" * 1000, headers={
            "Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=9",
            "TE": "trailers", "Proxy-Authorization": "Basic eA==", "X-End": "kept",
            "X-Forwarded-For": "10.9.9.9"})
        assert r.status_code == 200 and r.json() == {"path": "/predictions/m", "query": "a=1",
                                                     "length": 1000}
        sent = upstream.seen[-1]["headers"]
        for hop in ("x-hop", "keep-alive", "te", "proxy-authorization"):
            assert hop not in sent, hop
        assert sent["x-end"] == "kept"
        assert sent["host"] == upstream.url.removeprefix("http://")
        assert sent["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
        assert r.headers["x-upstream"] == "yes"
        assert "keep-alive" not in r.headers and "proxy-authenticate" not in r.headers


def raw_exchange(url: str, data: bytes, responses: int = 1) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < responses or not received.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_never_an_open_proxy(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m"]) as (url, _):
        before = len(upstream.seen)
        # An absolute-form target names another host: it still goes to the fixed upstream.
        answer = raw_exchange(url, b"GET http://elsewhere.invalid/ping HTTP/1.1\r\n"
                                   b"Host: elsewhere.invalid\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert upstream.seen[-1]["headers"]["host"] == upstream.url.removeprefix("http://")
        for path in ("/admin", "/predictions/..%2F..%2Fadmin", "/v2/repository/index"):
            r = httpx.post(url + path, content=b"x")
            assert r.status_code == 404 and r.json()["error"] == "not_found", path
        answer = raw_exchange(url, b"CONNECT elsewhere.invalid:443 HTTP/1.1\r\n"
                                   b"Host: elsewhere.invalid:443\r\n\r\n")
        assert not answer.startswith(b"HTTP/1.1 2")
        assert len(upstream.seen) == before + 1


def test_pipelined_requests_answered_in_order(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m", "slow"]) as (url, registry):
        requests = b"".join(
            b"POST /predictions/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d" % (m, i)
            for i, m in enumerate((b"slow", b"m", b"m")))
        answer = raw_exchange(url, requests, responses=3)
        assert answer.count(b"HTTP/1.1 200 OK") == 3
        assert answer.index(b"/predictions/slow") < answer.index(b"/predictions/m")
        assert value(registry, "inference_requests_total", "m", "") == 2


def test_pooled_connection_closed_by_upstream_is_retried(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m"]) as (url, registry):
        with httpx.Client() as client:
            assert client.post(f"{url}/predictions/m", content=b"1").status_code == 200
            time.sleep(1.3)  # the upstream's keep-alive timeout is 1 s
            assert client.post(f"{url}/predictions/m", content=b"2").status_code == 200
        assert value(registry, "inference_responses_total", "m", "", code="200") == 2


def test_discovery_probes_each_protocol(upstream: Upstream) -> None:
    assert discover_models(upstream.url) == {"m2": "3"}  # OIP v2 repository index

    async def openai(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "llm", "object": "model"}]})

    with serving(Starlette(routes=[Route("/v1/models", openai)]), lifespan="off") as url:
        assert discover_models(url) == {"llm": ""}
    with serving(Starlette(), lifespan="off") as url, \
            pytest.raises(DiscoveryError, match="--model"):
        discover_models(url)


def test_seed_route_decodes_base64_and_rejects_bad_input(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m"]) as (url, registry):
        r = httpx.post(f"{url}/infer", json={"image_base64": "aGVsbG8="})
        assert r.status_code == 200 and r.json()["path"] == "/predictions/m"
        assert upstream.seen[-1]["body"] == b"hello"
        for body, reason in ((b"", "empty_body"), (b"{", "invalid_json"),
                             (b'{"image": 1}', "invalid_json"), (b"\xff\xfe\x00", "invalid_json"),
                             (b"1" * 5000, "invalid_json"),
                             (b'{"image_base64": "@@"}', "invalid_image")):
            r = httpx.post(f"{url}/infer", content=body)
            assert r.status_code == 400 and r.json()["error"] == reason, body
            assert "0x" not in r.text and "\\x" not in r.text, r.text  # words, not bytes
        assert value(registry, "inference_requests_total", "m", "") == 7
        assert json.loads(httpx.get(f"{url}/ping").text)["path"] == "/ping"


def test_idle_and_slow_clients_are_closed(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m"], client_timeout=0.3) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        for partial in (b"", b"POST /predictions/m HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(partial)
                start = time.monotonic()
                for _ in range(8):  # a byte now and then does not keep a request alive
                    time.sleep(0.1)
                    try:
                        s.sendall(b"X-A: b\r\n" if partial else b"")
                    except OSError:
                        break
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(100) == b""  # closed by the proxy
                assert time.monotonic() - start < 2


def test_discovery_waits_for_an_upstream_that_starts_later() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DiscoveryError, match="ConnectError"):
        discover_models(f"http://127.0.0.1:{port}", wait=0)

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [{"modelName": "late", "modelVersion": "2"}]})

    found: list[dict[str, str]] = []
    thread = threading.Thread(target=lambda: found.append(
        discover_models(f"http://127.0.0.1:{port}", wait=20)))
    thread.start()
    time.sleep(1.2)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/models", models)]),
                                           log_level="warning", lifespan="off"))
    serving_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                      daemon=True)
    serving_thread.start()
    try:
        thread.join(20)
        assert found == [{"late": "2"}]
    finally:
        server.should_exit = True
        serving_thread.join(10)
        sock.close()


# Deeper than json.loads goes: the recursion limit on Python 3.11 (about 1,000 levels), the
# C recursion limit on 3.12+ (about 10,000).
DEEP = b"[" * 50_000 + b"]" * 50_000


def one_connection(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


def test_deep_json_is_a_client_error_on_a_connection_that_stays_usable(
        upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    with proxying(upstream.url, models=["m"]) as (url, registry):
        conn = one_connection(url)
        # A /v1 body the proxy cannot read for its model would crash a Python upstream too.
        for path, body, model in (
                ("/infer", DEEP, "m"),
                ("/v1/chat/completions", b'{"model": "m", "messages": %s}' % DEEP, "_unknown")):
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            assert (r.status, json.loads(r.read())) == (400, {
                "code": 400, "error": "invalid_json", "message": "invalid JSON: nested too deeply"})
            sock = conn.sock
            conn.request("POST", "/predictions/m", b"x")
            assert conn.getresponse().read() and conn.sock is sock  # kept alive, still usable
            assert value(registry, "inference_error_reasons_total", model, "",
                         reason="invalid_json") == 1
            assert value(registry, "inference_errors_total", model, "") == 0
            assert value(registry, "inference_in_flight_requests", model, "") == 0
        conn.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_bug_in_the_proxy_is_answered_500_and_logged(
        upstream: Upstream, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    with proxying(upstream.url, models=["m"]) as (url, registry):
        for n, where in enumerate(("inferwatch.proxy.connection._copy_headers",
                                   "inferwatch.proxy.exchange.Exchange.upstream_headers",
                                   "inferwatch.proxy.connection.classify"), 1):
            with monkeypatch.context() as patch:
                patch.setattr(where, broken)
                conn = one_connection(url)
                conn.request("POST", "/predictions/m", b"x")
                r = conn.getresponse()
                assert (r.status, r.getheader("connection")) == (500, "close"), where
                assert json.loads(r.read())["error"] == "proxy_internal"
                conn.close()
            failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(failures) == n and failures[-1].exc_info, where  # once, with traceback
            assert "proxy_internal" in failures[-1].getMessage()
        # classify failing, the request has no model yet: logged and answered, not counted.
        assert value(registry, "inference_error_reasons_total", "m", "",
                     reason="proxy_internal") == 2
        assert value(registry, "inference_errors_total", "m", "") == 2
        assert value(registry, "inference_in_flight_requests", "m", "") == 0
        assert httpx.post(f"{url}/predictions/m", content=b"x").status_code == 200


def test_pipelined_requests_are_read_one_ahead(upstream: Upstream) -> None:
    limit = 1 << 20
    read_size = 256 << 10  # what the event loop reads at once: part of the request behind
    with running_proxy(upstream.url, models=["m", "slow"], max_body_bytes=limit) as proxy:
        loop = proxy.pool.loop if proxy.pool else None
        assert loop is not None
        peak = {"queued": 0, "bytes": 0}

        def sample() -> None:  # on the proxy's loop, so it sees the state between reads
            for client in proxy.state.clients:
                partial = sum(map(len, client._body)) if client.current is not None else 0
                peak["queued"] = max(peak["queued"], len(client.queue))
                peak["bytes"] = max(peak["bytes"],
                                    sum(len(ex.body) for ex in client.queue) + partial)
            loop.call_later(0.002, sample)

        loop.call_soon_threadsafe(sample)
        models = [b"slow"] + [b"m"] * 5  # the first is answered after 1 s
        requests = b"".join(
            b"POST /predictions/%s?i=%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
                model, i, limit, b"x" * limit) for i, model in enumerate(models))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
            s.sendall(requests)
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < len(models) or not received.endswith(
                    b"}"):
                chunk = s.recv(65536)
                assert chunk, received
                received += chunk
        assert [int(i) for i in re.findall(rb'"query":"i=(\d)"', received)] == list(
            range(len(models)))  # answered in order
        assert peak["queued"] == 1  # one request read ahead, no more
        assert peak["bytes"] <= limit + read_size, peak


def test_a_client_is_not_timed_while_the_proxy_does_not_read(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m", "slow"], client_timeout=0.6) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        request = b"POST /predictions/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"
        with socket.create_connection((host, int(port)), timeout=10) as s:
            # The third request's head comes in part with the second one, while the first
            # (1 s) is active: the proxy stops reading, so its end waits unread, for longer
            # than client_timeout, and the client is not to blame.
            s.sendall(request % b"slow" + request % b"m" + b"POST /predictions/m HTTP/1.1\r\n")
            time.sleep(0.2)
            s.sendall(b"Host: x\r\nContent-Length: 1\r\n\r\n1")
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < 3 or not received.endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, received
                received += chunk


def test_torchserve_puts_explanations_and_refusals(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m", "full", "died", "buggy"]) as (url, registry):
        r = httpx.put(f"{url}/predictions/m", content=b"image")  # what `curl -T` sends
        assert r.status_code == 200 and r.json()["length"] == 5
        assert upstream.seen[-1]["method"] == "PUT"
        for method in ("POST", "PUT"):  # forwarded, not counted
            r = httpx.request(method, f"{url}/explanations/m", content=b"image")
            assert r.status_code == 200 and r.json()["path"] == "/explanations/m"
        assert value(registry, "inference_requests_total", "m", "") == 1
        assert value(registry, "inference_latency_seconds_count", "m", "") == 1

        r = httpx.post(f"{url}/predictions/full", content=b"x")  # relayed as is
        assert r.status_code == 503 and r.json()["type"] == "ServiceUnavailableException"
        r = httpx.post(f"{url}/predictions/died", content=b"x")
        assert r.status_code == 507 and r.json()["message"] == "Worker died."
        # A 503 is load shed: the reason InferenceRequestsShed counts.
        assert value(registry, "inference_error_reasons_total", "full", "",
                     reason="overloaded") == 1
        assert value(registry, "inference_responses_total", "full", "", code="503") == 1
        assert value(registry, "inference_error_reasons_total", "died", "",
                     reason="upstream_5xx") == 1
        assert value(registry, "inference_responses_total", "died", "", code="507") == 1
        assert value(registry, "inference_responses_total", "died", "", code="5xx") == 0
        # TorchServe answers a handler's exception 503 too: a failure, not load shed.
        assert httpx.post(f"{url}/predictions/buggy", content=b"x").status_code == 503
        assert value(registry, "inference_error_reasons_total", "buggy", "",
                     reason="upstream_5xx") == 1
        assert value(registry, "inference_error_reasons_total", "buggy", "",
                     reason="overloaded") == 0
        for model in ("full", "died", "buggy"):
            assert value(registry, "inference_errors_total", model, "") == 1


def test_default_body_limit_takes_torchserve_s_largest_request(upstream: Upstream) -> None:
    from inferwatch.cli.servers import proxy as proxy_command

    torchserve_max_request_size = 6_553_500
    default = inspect.signature(proxy_command).parameters["max_body_bytes"].default
    assert default == ProxyConfig("http://127.0.0.1:1").max_body_bytes
    with proxying(upstream.url, models=["m"]) as (url, registry):
        r = httpx.post(f"{url}/predictions/m", content=b"x" * torchserve_max_request_size)
        assert r.status_code == 200 and r.json()["length"] == torchserve_max_request_size
        assert value(registry, "inference_responses_total", "m", "", code="200") == 1


def test_model_info_names_the_model_set_for_the_dashboard(upstream: Upstream) -> None:
    for models, expected in ((["a", "b"], {("a", ""), ("b", "")}),
                             (discover_models(upstream.url), {("m2", "3")})):
        with proxying(upstream.url, models=models) as (url, _):
            text = httpx.get(f"{url}/metrics").text
        info = [s for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "inference_model_info"]
        assert {(s.labels["model"], s.labels["version"]) for s in info} == expected
        assert all(s.value == 1 for s in info)
        # The dashboard's variables list what this series holds.
        for variable in VARIABLES:
            assert variable.metric == "inference_model_info"
        model = next(v for v in VARIABLES if v.name == "model")
        assert model.options(s.labels["model"] for s in info) == sorted(m for m, _ in expected)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def released(upstream: Upstream) -> Iterator[Upstream]:
    """``upstream``, its held streams released after at most 5 s whatever the test does."""
    upstream.release.clear()
    failsafe = threading.Timer(5, upstream.release.set)
    failsafe.start()
    yield upstream
    failsafe.cancel()
    upstream.release.set()


def test_stream_head_is_passed_before_the_first_byte(released: Upstream) -> None:
    with proxying(released.url, models=["llm"]) as (url, registry), httpx.Client() as client:
        with client.stream("POST", f"{url}/v1/completions",
                           json={"model": "llm", "hold": "first"}) as response:
            held = not released.release.is_set()
            released.release.set()
            body = response.read()
        assert held  # the head came while the upstream still held its first token
        assert body == b'data: {"token": 1}\n\ndata: [DONE]\n\n'
        assert value(registry, "inference_responses_total", "llm", "", code="200") == 1
        assert value(registry, "inference_time_to_first_byte_seconds_count", "llm", "") == 1


def send_raw(port: int, path: bytes, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body))
    return s


def read_until(s: socket.socket, marker: bytes) -> None:
    received = b""
    while marker not in received:
        chunk = s.recv(65536)
        assert chunk, received
        received += chunk


def test_a_client_that_leaves_once_the_answer_began_is_counted_as_it_ends(
        released: Upstream) -> None:
    with running_proxy(released.url, models=["llm", "slow"]) as proxy:
        registry = proxy.registry
        # The openai SDK closes its stream at `data: [DONE]`, before the body's last bytes.
        with send_raw(proxy.port, b"/v1/completions", b'{"model": "llm", "hold": "end"}') as s:
            read_until(s, b"data: [DONE]")
        wait_until(lambda: not proxy.state.clients)  # the proxy saw the client go
        assert value(registry, "inference_requests_total", "llm", "") == 0  # still reading
        released.release.set()
        wait_until(lambda: value(registry, "inference_requests_total", "llm", "") == 1)
        assert value(registry, "inference_responses_total", "llm", "", code="200") == 1
        assert value(registry, "inference_latency_seconds_count", "llm", "") == 1
        assert value(registry, "inference_error_reasons_total", "llm", "",
                     reason="client_closed") == 0

        # Gone before the upstream answered: client_closed.
        with send_raw(proxy.port, b"/predictions/slow", b"x"):
            pass
        wait_until(lambda: value(registry, "inference_requests_total", "slow", "") == 1)
        assert value(registry, "inference_error_reasons_total", "slow", "",
                     reason="client_closed") == 1

        # An answer that goes on and on is read no further than a bound, then let go.
        with send_raw(proxy.port, b"/v1/completions",
                      b'{"model": "llm", "hold": "endless"}') as s:
            read_until(s, b'{"token": 1}')
        wait_until(lambda: value(registry, "inference_requests_total", "llm", "") == 2)
        assert value(registry, "inference_error_reasons_total", "llm", "",
                     reason="client_closed") == 1
        wait_until(lambda: bool(released.streamed))  # the upstream saw the proxy go
        assert value(registry, "inference_in_flight_requests", "llm", "") == 0


def test_a_header_field_without_end_is_refused_at_twice_the_limit(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m"], max_header_bytes=4096) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"POST /predictions/m HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(64):  # 64 x 1 KiB: the field never ends
                s.sendall(b"a" * 1024)
                if select.select([s], [], [], 0.01)[0]:
                    break  # answered: sending on would have the closed socket reset
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


def test_trailers_of_a_chunked_body_are_not_forwarded_as_headers(upstream: Upstream) -> None:
    with proxying(upstream.url, models=["m"]) as (url, _):
        answer = raw_exchange(url, b"POST /predictions/m HTTP/1.1\r\nHost: x\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n"
                                   b"5\r\nimage\r\n0\r\nX-Admin: 1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert upstream.seen[-1]["body"] == b"image"
        assert "x-admin" not in upstream.seen[-1]["headers"]
