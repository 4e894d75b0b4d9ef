"""Fault drills: inject a fault, wait for the alert notification, measure the delay."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inferwatch.stack.inbox import read_inbox


def find_notification(inbox: Path, alertname: str, status: str, after: float
                      ) -> dict[str, Any] | None:
    """The first notification received after ``after`` whose alerts include ``alertname``
    in ``status`` ("firing" or "resolved")."""
    for record in read_inbox(inbox):
        if record["received_at"] < after:
            continue
        for alert in record["notification"].get("alerts", []):
            if alert.get("labels", {}).get("alertname") == alertname and \
                    alert.get("status") == status:
                return record
    return None


def wait_for_notification(inbox: Path, alertname: str, status: str, after: float,
                          timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_notification(inbox, alertname, status, after)
        if found is not None:
            return found
        time.sleep(0.1)
    raise TimeoutError(f"no {status} {alertname} notification within {timeout:g}s")
