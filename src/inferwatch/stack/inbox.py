"""A webhook receiver for Alertmanager that prints and keeps every notification."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_NOTIFICATION_BYTES = 1024 * 1024


def describe(notification: dict[str, Any]) -> str:
    """One line per notification: status, alert names and their model/instance/severity."""
    parts = []
    for alert in notification.get("alerts", []):
        labels = alert.get("labels", {})
        where = " ".join(f"{k}={labels[k]}" for k in ("model", "instance", "severity")
                         if k in labels)
        parts.append(f"{alert.get('status', '?').upper()} {labels.get('alertname', '?')} "
                     f"{where}: {alert.get('annotations', {}).get('summary', '')}".rstrip(": "))
    return "; ".join(parts) or f"{notification.get('status', '?')} (no alerts)"


def read_inbox(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def create_inbox_app(path: Path, echo: bool = True) -> Starlette:
    path.parent.mkdir(parents=True, exist_ok=True)

    async def receive(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_NOTIFICATION_BYTES:
            return JSONResponse({"error": "body_too_large"}, 413)
        try:
            notification = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return JSONResponse({"error": "invalid_json"}, 400)
        if not isinstance(notification, dict) or not isinstance(
                notification.get("alerts"), list):
            return JSONResponse({"error": "expected an Alertmanager webhook payload"}, 400)
        received_at = time.time()
        record = {"received_at": received_at, "notification": notification}
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if echo:
            stamp = time.strftime("%H:%M:%S", time.localtime(received_at))
            print(f"[{stamp}] alert {describe(notification)}", file=sys.stdout, flush=True)
        return JSONResponse({"status": "ok"})

    async def listing(request: Request) -> Response:
        return JSONResponse(read_inbox(path))

    return Starlette(routes=[
        Route("/alerts", receive, methods=["POST"]),
        Route("/alerts", listing, methods=["GET"]),
    ])
