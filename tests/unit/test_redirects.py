"""No server of ours builds a URL from the client's Host header (an open redirect)."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from inferwatch.serve.admin import create_admin_app
from inferwatch.serve.faults import Faults
from inferwatch.stack.dashboard.app import DashboardConfig, create_dashboard_app
from inferwatch.stack.inbox import create_inbox_app

APPS: dict[str, tuple[Callable[[Path], Starlette], str]] = {
    "admin": (lambda _: create_admin_app(Faults(), "t" * 32), "/admin/faults/"),
    "inbox": (lambda tmp: create_inbox_app(tmp / "inbox.jsonl", echo=False), "/alerts/"),
    "dashboard": (lambda _: create_dashboard_app(DashboardConfig("http://127.0.0.1:1")),
                  "/api/dashboard/"),
}


async def _get(app: Starlette, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get(path, headers={"host": "attacker.invalid",
                                               "authorization": "Bearer " + "t" * 32})


@pytest.mark.parametrize("name", APPS)
def test_a_slash_too_many_is_404_not_a_redirect_to_the_host_header(
        name: str, tmp_path: Path) -> None:
    build, path = APPS[name]
    r = asyncio.run(_get(build(tmp_path), path))
    assert r.status_code == 404, r.headers
    assert "location" not in r.headers
