"""The built-in dashboard page: ``panels.DASHBOARD`` drawn in the browser from Prometheus data.

The server is a narrow gateway, not a proxy: the page names a panel and the variable values,
the server writes the PromQL from ``panels.py`` and sends it to the one Prometheus it was
started with. Alertmanager is only asked for its active alerts.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from inferwatch.stack.panels import ALL, DASHBOARD, Dashboard, Panel, literal_regex
from inferwatch.stack.profiles import DEFAULT, Profile

STATIC = Path(__file__).parent / "static"
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series
# Only this origin's files run in the page: the charting library is served from the package.
_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class DashboardConfig:
    prometheus: str
    alertmanager: str | None = None
    profile: Profile = DEFAULT
    dashboard: Dashboard = field(default=DASHBOARD)
    timeout: float = 10.0
    # (user, password) sent to Prometheus and Alertmanager; never to the page.
    prometheus_auth: tuple[str, str] | None = field(default=None, repr=False)


def describe(config: DashboardConfig) -> dict[str, Any]:
    """The dashboard as the page needs it; the expressions are shown, never sent back."""
    return {
        "uid": config.dashboard.uid,
        "title": config.dashboard.title,
        "profile": {"name": config.profile.name, "rate_window": config.profile.rate_window,
                    "scrape_seconds": config.profile.scrape_seconds},
        "variables": [{"name": v.name, "title": v.title} for v in config.dashboard.variables],
        "rows": [{"key": row.key, "title": row.title,
                  "panels": [_describe_panel(p, config.profile) for p in row.panels]}
                 for row in config.dashboard.rows],
        "prometheus": config.prometheus,
        "alertmanager": config.alertmanager,
    }


def _describe_panel(panel: Panel, profile: Profile) -> dict[str, Any]:
    return {
        "key": panel.key, "title": panel.title, "unit": panel.unit, "kind": panel.kind,
        "legend": panel.legend, "width": panel.width, "description": panel.description,
        "thresholds": [{"value": t.value, "color": t.color} for t in panel.thresholds],
        "conditional": panel.requires is not None,
        "expr": panel.query(profile, "$model", "$instance"),
    }


class _BadRequest(ValueError):
    pass


def _number(request: Request, name: str) -> float:
    try:
        value = float(request.query_params[name])
    except (KeyError, ValueError):
        raise _BadRequest(f"query parameter {name!r} must be a number") from None
    if not math.isfinite(value):
        raise _BadRequest(f"query parameter {name!r} must be finite")
    return value


def _selection(request: Request, name: str) -> str:
    """The regex for a variable: every value when absent or empty, else exactly the value."""
    value = request.query_params.get(name, "")
    return literal_regex(value) if value else ALL


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "error": message}, status_code=status)


def create_dashboard_app(config: DashboardConfig,
                         transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The page and its JSON API; ``transport`` replaces the network in tests."""
    clients: dict[str, httpx.AsyncClient] = {}
    panels = {p.key: p for p in config.dashboard.panels}
    description = describe(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for name, base, auth in (("prometheus", config.prometheus, config.prometheus_auth),
                                     # The stack's Alertmanager shares Prometheus' user.
                                     ("alertmanager", config.alertmanager,
                                      config.prometheus_auth)):
                if base:
                    clients[name] = await stack.enter_async_context(httpx.AsyncClient(
                        base_url=base.rstrip("/"), timeout=config.timeout, transport=transport,
                        auth=auth))
            yield

    async def upstream(name: str, path: str, params: dict[str, Any]) -> httpx.Response:
        try:
            return await clients[name].get(path, params=params)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{name} at {clients[name].base_url} did not answer: "
                                  f"{exc!r}") from exc

    async def prometheus_data(path: str, params: dict[str, Any]) -> Response | Any:
        """Prometheus' ``data``, or the error response to pass on to the page."""
        try:
            response = await upstream("prometheus", path, params)
        except ConnectionError as exc:
            return _error(502, str(exc))
        try:
            body = response.json()
        except ValueError:
            return _error(502, f"Prometheus answered HTTP {response.status_code}, not JSON")
        if response.status_code != 200 or body.get("status") != "success":
            return _error(502 if response.status_code >= 500 else 400,
                          f"Prometheus: {body.get('error', response.status_code)}")
        return body["data"]

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})

    async def ready(request: Request) -> Response:
        return PlainTextResponse("ready")

    async def dashboard(request: Request) -> Response:
        return JSONResponse(description)

    async def variables(request: Request) -> Response:
        out: dict[str, list[str]] = {}
        for variable in config.dashboard.variables:
            data = await prometheus_data(f"/api/v1/label/{variable.label}/values",
                                         {"match[]": variable.metric})
            if isinstance(data, Response):
                return data
            out[variable.name] = variable.options(data)
        return JSONResponse(out)

    async def query_range(request: Request) -> Response:
        panel = panels.get(request.query_params.get("panel", ""))
        if panel is None:
            return _error(404, "unknown panel")
        try:
            start, end, step = (_number(request, n) for n in ("start", "end", "step"))
            if not (step > 0 and end >= start and (end - start) / step <= MAX_POINTS):
                raise _BadRequest(f"need step > 0, end >= start, at most {MAX_POINTS} points")
        except _BadRequest as exc:
            return _error(400, str(exc))
        model, instance = _selection(request, "model"), _selection(request, "instance")
        requirement = panel.requirement(config.profile, model, instance)
        if requirement is not None:
            data = await prometheus_data("/api/v1/query", {"query": requirement, "time": end})
            if isinstance(data, Response):
                return data
            if not data["result"]:
                return JSONResponse({"status": "success", "unavailable": panel.description,
                                     "data": {"resultType": "matrix", "result": []}})
        data = await prometheus_data("/api/v1/query_range", {
            "query": panel.query(config.profile, model, instance),
            "start": start, "end": end, "step": step})
        if isinstance(data, Response):
            return data
        return JSONResponse({"status": "success", "data": data})

    async def alerts(request: Request) -> Response:
        if "alertmanager" not in clients:
            return JSONResponse({"alerts": [], "alertmanager": None})
        try:
            response = await upstream("alertmanager", "/api/v2/alerts", {
                "active": "true", "silenced": "false", "inhibited": "false"})
        except ConnectionError as exc:
            return _error(502, str(exc))
        if response.status_code != 200:
            return _error(502, f"Alertmanager answered HTTP {response.status_code}")
        found = sorted(response.json(), key=lambda a: a.get("startsAt", ""), reverse=True)
        return JSONResponse({"alerts": [
            {"labels": a.get("labels", {}), "annotations": a.get("annotations", {}),
             "startsAt": a.get("startsAt"), "state": a.get("status", {}).get("state")}
            for a in found], "alertmanager": config.alertmanager, "at": time.time()})

    app = Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/-/ready", ready, methods=["GET"]),
        Route("/api/dashboard", dashboard, methods=["GET"]),
        Route("/api/variables", variables, methods=["GET"]),
        Route("/api/query_range", query_range, methods=["GET"]),
        Route("/api/alerts", alerts, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    app.router.redirect_slashes = False  # see inferwatch.stack.inbox
    return app
