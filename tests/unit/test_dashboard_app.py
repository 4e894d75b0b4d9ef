import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from inferwatch.stack.dashboard import DashboardConfig, create_dashboard_app
from inferwatch.stack.dashboard.app import STATIC
from inferwatch.stack.panels import DASHBOARD, GPU_PRESENT
from inferwatch.stack.profiles import FAST

PROM = "http://prometheus.test:9090"
AM = "http://alertmanager.test:9093"


class Upstreams:
    """Answers like Prometheus and Alertmanager, and records what was asked."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.gpu = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, q = request.url.path, parse_qs(urlsplit(str(request.url)).query)
        if request.url.host == "alertmanager.test" and path == "/api/v2/alerts":
            return httpx.Response(200, json=[{
                "labels": {"alertname": "HighInferenceErrorRate", "severity": "critical"},
                "annotations": {"summary": "s"}, "startsAt": "2026-01-01T00:00:00Z",
                "status": {"state": "active"}}])
        if path == "/api/v1/label/model/values":
            return httpx.Response(200, json={"status": "success", "data": ["b", "a"]})
        if path == "/api/v1/label/instance/values":
            return httpx.Response(200, json={"status": "success",
                                             "data": ["10.0.0.1:8080", "10.0.0.1:9100"]})
        if path == "/api/v1/query":
            result = [{"metric": {}, "value": [1, "1"]}] if self.gpu else []
            return httpx.Response(200, json={"status": "success",
                                             "data": {"resultType": "vector", "result": result}})
        if path == "/api/v1/query_range":
            if "bad" in q["query"][0]:
                return httpx.Response(400, json={"status": "error", "error": "parse error"})
            return httpx.Response(200, json={"status": "success", "data": {
                "resultType": "matrix",
                "result": [{"metric": {"model": "a"}, "values": [[1, "2"]]}]}})
        return httpx.Response(404)


Client = httpx.AsyncClient
Test = Callable[[Client, Upstreams], Coroutine[Any, Any, None]]


def run(test: Test, config: DashboardConfig | None = None,
        upstream: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
    upstreams = Upstreams()
    app = create_dashboard_app(config or DashboardConfig(PROM, AM, FAST),
                               httpx.MockTransport(upstream or upstreams))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await test(c, upstreams)

    asyncio.run(main())


def query_of(request: httpx.Request) -> str:
    return parse_qs(urlsplit(str(request.url)).query)["query"][0]


def test_page_and_assets_are_served_with_a_strict_policy() -> None:
    async def test(c: Client, up: Upstreams) -> None:
        page = await c.get("/")
        assert page.status_code == 200 and "static/dashboard.js" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "//" not in page.text  # every asset from this origin: no CDN
        for asset in ("dashboard.js", "dashboard.css", "vendor/uPlot.iife.min.js",
                      "vendor/uPlot.min.css", "vendor/uPlot.LICENSE"):
            assert (await c.get(f"/static/{asset}")).status_code == 200, asset
        assert (await c.get("/-/ready")).text == "ready"

    run(test)


def test_description_lists_every_panel_with_its_query_for_display() -> None:
    async def test(c: Client, up: Upstreams) -> None:
        body = (await c.get("/api/dashboard")).json()
        keys = [p["key"] for row in body["rows"] for p in row["panels"]]
        assert keys == [p.key for p in DASHBOARD.panels]
        assert body["profile"]["rate_window"] == FAST.rate_window
        qps = body["rows"][0]["panels"][0]
        assert qps["expr"] == DASHBOARD.panel("qps").query(FAST, "$model", "$instance")
        assert not up.requests

    run(test)


def test_query_range_writes_the_panel_query_with_escaped_values() -> None:
    async def test(c: Client, up: Upstreams) -> None:
        r = await c.get("/api/query_range", params={
            "panel": "qps", "model": "a.b", "instance": "10.0.0.1", "start": 0, "end": 60,
            "step": 1})
        assert r.status_code == 200
        assert r.json()["data"]["result"][0]["metric"] == {"model": "a"}
        sent = up.requests[-1]
        assert sent.url.host == "prometheus.test" and sent.url.path == "/api/v1/query_range"
        assert query_of(sent) == DASHBOARD.panel("qps").query(
            FAST, "a\\\\.b", "10\\\\.0\\\\.0\\\\.1")
        r = await c.get("/api/query_range", params={
            "panel": "qps", "model": "", "start": 0, "end": 60, "step": 1})
        assert r.status_code == 200
        assert query_of(up.requests[-1]) == DASHBOARD.panel("qps").query(FAST)

    run(test)


def test_only_known_panels_sane_ranges_and_get() -> None:
    async def test(c: Client, up: Upstreams) -> None:
        r = await c.get("/api/query_range",
                        params={"panel": "nope", "start": 0, "end": 1, "step": 1})
        assert r.status_code == 404
        for bad in ({"start": 0, "end": 1, "step": 0}, {"start": 5, "end": 1, "step": 1},
                    {"start": 0, "end": 10 ** 9, "step": 1}, {"start": "x", "end": 1, "step": 1},
                    {"start": "nan", "end": 1, "step": 1}, {"end": 1, "step": 1}):
            r = await c.get("/api/query_range", params={"panel": "qps", **bad})
            assert r.status_code == 400, bad
        assert (await c.post("/api/query_range", params={"panel": "qps"})).status_code == 405
        assert (await c.get("/api/v1/query", params={"query": "up"})).status_code == 404
        assert (await c.get("/api/v1/query_range")).status_code == 404
        assert not up.requests  # nothing reached Prometheus

    run(test)


def test_gpu_panels_say_unavailable_without_a_gpu() -> None:
    async def test(c: Client, up: Upstreams) -> None:
        params = {"panel": "gpu_utilization", "start": 0, "end": 60, "step": 1}
        body = (await c.get("/api/query_range", params=params)).json()
        assert body["unavailable"] and body["data"]["result"] == []
        assert query_of(up.requests[-1]) == GPU_PRESENT.replace("$instance", ".+")
        up.gpu = True
        body = (await c.get("/api/query_range", params=params)).json()
        assert "unavailable" not in body and body["data"]["result"]

    run(test)


def test_variables_and_alerts() -> None:
    async def test(c: Client, up: Upstreams) -> None:
        assert (await c.get("/api/variables")).json() == {"model": ["a", "b"],
                                                          "instance": ["10.0.0.1"]}
        alerts = (await c.get("/api/alerts")).json()
        assert alerts["alerts"][0]["labels"]["alertname"] == "HighInferenceErrorRate"
        assert alerts["alerts"][0]["state"] == "active"

    run(test)


def test_upstream_errors_reach_the_page_as_json() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def test(c: Client, up: Upstreams) -> None:
        r = await c.get("/api/query_range",
                        params={"panel": "qps", "start": 0, "end": 1, "step": 1})
        assert r.status_code == 502 and "prometheus.test" in r.json()["error"]
        assert (await c.get("/api/variables")).status_code == 502
        assert (await c.get("/api/alerts")).json() == {"alerts": [], "alertmanager": None}

    run(test, DashboardConfig(PROM, None, FAST), down)


def test_vendored_uplot_is_the_version_web_locks() -> None:
    lock = json.loads((Path(__file__).parents[2] / "web" / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/uplot"]["version"]
    banner = (STATIC / "vendor" / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{version})" in banner, "run `make assets` after changing web/package.json"
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
