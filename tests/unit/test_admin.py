import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferwatch.models.digits import digit_png
from inferwatch.secrets import SecretFileError, write_secret_file
from inferwatch.serve.admin import ADMIN_HOST, TOKEN_ENV, admin_token, create_admin_app
from inferwatch.serve.faults import FaultError, Faults

TOKEN = "t" * 32


def call(app, method: str, path: str, token: str | None = TOKEN, **kw):  # type: ignore[no-untyped-def]
    async def run() -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            return await c.request(method, path, headers=headers, **kw)
    return asyncio.run(run())


def test_admin_needs_the_token() -> None:
    app = create_admin_app(Faults(), TOKEN)
    assert call(app, "GET", "/admin/faults", token=None).status_code == 401
    assert call(app, "POST", "/admin/faults/errors", token="x" * 32,
                json={"ratio": 1}).status_code == 401
    assert call(app, "GET", "/admin/faults").status_code == 200
    with pytest.raises(ValueError):
        create_admin_app(Faults(), "short")


def test_admin_is_off_without_a_port_whatever_token_is_set(tmp_path: Path) -> None:
    token_file = write_secret_file(tmp_path / "token", TOKEN)
    assert admin_token(None, token_file, {TOKEN_ENV: TOKEN}) is None
    assert admin_token(9097, token_file, {}) == TOKEN
    assert admin_token(9097, None, {TOKEN_ENV: TOKEN}) == TOKEN
    with pytest.raises(ValueError, match=TOKEN_ENV):
        admin_token(9097, None, {})


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token_file = write_secret_file(tmp_path / "token", TOKEN)
    for mode in (0o644, 0o640, 0o604):
        token_file.chmod(mode)
        with pytest.raises(SecretFileError, match="chmod 600"):
            admin_token(9097, token_file, {})


def test_admin_listens_on_loopback_only_and_not_on_the_service_app() -> None:
    from prometheus_client import CollectorRegistry

    from inferwatch.serve.app import ServeConfig, create_app

    assert ADMIN_HOST == "127.0.0.1"
    service = create_app(ServeConfig(), CollectorRegistry())
    assert call(service, "GET", "/admin/faults").status_code == 404
    assert call(service, "POST", "/admin/kill").status_code in (404, 405)


def test_fault_requests_are_validated_and_clearable() -> None:
    faults = Faults()
    app = create_admin_app(faults, TOKEN)
    assert call(app, "POST", "/admin/faults/errors", json={"ratio": 2}).status_code == 422
    assert call(app, "POST", "/admin/faults/latency",
                json={"stage": "nope", "seconds": 1}).status_code == 422
    assert call(app, "POST", "/admin/faults/errors", content=b"{").status_code == 400
    r = call(app, "POST", "/admin/faults/latency", json={"stage": "compute", "seconds": 0.2})
    assert r.json()["latency_seconds"] == {"compute": 0.2}
    assert call(app, "DELETE", "/admin/faults").json()["latency_seconds"] == {}


def test_error_ratio_is_exact_and_evenly_spread() -> None:
    faults = Faults()
    faults.set_error_ratio(0.25)
    outcomes = [faults.should_fail() for _ in range(100)]
    assert sum(outcomes) == 25
    assert all(sum(outcomes[i:i + 4]) == 1 for i in range(0, 100, 4))
    with pytest.raises(FaultError):
        faults.set_error_ratio(-0.1)


def test_cpu_hog_processes_stop_on_clear() -> None:
    faults = Faults()
    faults.start_cpu_hog(1, 30)
    assert faults.describe()["cpu_hog"]["workers"] == 1
    procs = list(faults._hogs)
    faults.clear()
    assert all(p.poll() is not None for p in procs)
    assert faults.describe()["cpu_hog"] is None


def test_injected_faults_reach_the_service_and_its_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from inferwatch.serve.app import ServeConfig, create_app

    registry = CollectorRegistry()
    app = create_app(ServeConfig(), registry)
    png = digit_png(np.zeros((8, 8), np.float32))

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            app.state.service.faults.set_error_ratio(0.5)
            app.state.service.faults.set_latency("compute", 0.02)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t") as c:
                return [(await c.post("/predictions/digits", content=png)).status_code
                        for _ in range(10)]

    codes = asyncio.run(run())
    assert codes.count(500) == 5 and codes.count(200) == 5
    labels = {"model": "digits", "version": "1"}
    assert registry.get_sample_value("inference_error_reasons_total",
                                     {**labels, "reason": "injected"}) == 5
    assert registry.get_sample_value("inference_errors_total", labels) == 5
    compute_sum = registry.get_sample_value("inference_stage_seconds_sum",
                                            {**labels, "stage": "compute"})
    assert compute_sum is not None and compute_sum >= 5 * 0.02


def test_the_admin_server_runs_on_the_service_loop_and_stops_with_it() -> None:
    """`serve --admin-port` runs both servers with serve_together: on the service's kind of
    loop (uvloop when installed; asyncio.run would give asyncio's), stopped together."""
    import socket
    import threading
    import time

    import uvicorn

    from inferwatch.serve.server import serve_options, serve_together

    loops: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        loops.append(type(asyncio.get_running_loop()).__module__)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    main = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=ports[0], lifespan="off",
                                         log_level="warning", **serve_options()))
    side = uvicorn.Config(app, host="127.0.0.1", port=ports[1], lifespan="off",
                          log_level="warning")
    thread = threading.Thread(target=serve_together, args=(main, [side]), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        for port in ports:
            while True:
                assert thread.is_alive() and time.monotonic() < deadline
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
        assert len(loops) == 2 and loops[0] == loops[1]
        expected = "uvloop" if serve_options()["loop"] == "uvloop" else "asyncio.unix_events"
        assert loops[0] == expected
    finally:
        main.should_exit = True
        thread.join(10)
    assert not thread.is_alive()  # the follower stopped with the main server
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{ports[1]}/", timeout=1)
