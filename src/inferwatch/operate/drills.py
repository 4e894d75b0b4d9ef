"""Fault drills: inject a fault, wait for the alert notification, measure the delay."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferwatch.stack.inbox import read_inbox


def find_notification(inbox: Path, alertname: str, status: str, after: float,
                      labels: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The first notification received after ``after`` whose alerts include ``alertname``
    in ``status`` ("firing" or "resolved"), with ``labels`` when given (e.g. a job)."""
    want = {"alertname": alertname, **(labels or {})}
    for record in read_inbox(inbox):
        if record["received_at"] < after:
            continue
        for alert in record["notification"].get("alerts", []):
            have = alert.get("labels", {})
            if alert.get("status") == status and all(have.get(k) == v for k, v in want.items()):
                return record
    return None


def wait_for_notification(inbox: Path, alertname: str, status: str, after: float,
                          timeout: float, labels: Mapping[str, str] | None = None
                          ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_notification(inbox, alertname, status, after, labels)
        if found is not None:
            return found
        time.sleep(0.1)
    where = f" {dict(labels)}" if labels else ""
    raise TimeoutError(f"no {status} {alertname}{where} notification within {timeout:g}s")
