"""A webhook receiver for Alertmanager that prints and keeps every notification.

Anyone who reaches its port can post to it, so a body is read only up to its limit, only the
shape Alertmanager sends is kept, text is printed without terminal control characters, and the
file and its listing are bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from rich.console import Console

MAX_NOTIFICATION_BYTES = 1024 * 1024
# Beyond this the file becomes NAME.1, replacing the previous one: at most twice this on disk.
MAX_INBOX_BYTES = 16 * 1024 * 1024
DEFAULT_PAGE, MAX_PAGE = 100, 1000

logger = logging.getLogger(__name__)
# C0, DEL and C1: an ESC or CSI from a label value would drive the reader's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    r"""``text`` with each control character written as its escape.

    >>> printable("up\x1b[2J\nx")
    'up\\x1b[2J\\x0ax'
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _strings(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def is_notification(value: Any) -> bool:
    """Whether ``value`` has the shape of Alertmanager's webhook payload, as far as the inbox
    reads it: a list of alerts, each with string labels and annotations."""
    return (isinstance(value, dict) and isinstance(value.get("status", ""), str)
            and isinstance(value.get("alerts"), list)
            and all(isinstance(a, dict) and isinstance(a.get("status", ""), str)
                    and _strings(a.get("labels", {})) and _strings(a.get("annotations", {}))
                    for a in value["alerts"]))


def describe(notification: dict[str, Any]) -> str:
    """One line per notification: status, alert names and their model/instance/severity,
    without control characters."""
    parts = []
    for alert in notification.get("alerts", []):
        labels = alert.get("labels", {})
        where = " ".join(f"{k}={labels[k]}" for k in ("model", "instance", "severity")
                         if k in labels)
        parts.append(f"{alert.get('status', '?').upper()} {labels.get('alertname', '?')} "
                     f"{where}: {alert.get('annotations', {}).get('summary', '')}".rstrip(": "))
    return printable("; ".join(parts) or f"{notification.get('status', '?')} (no alerts)")


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _record(line: bytes) -> dict[str, Any] | None:
    """A line of the file as the inbox writes it, or None: a line still being written, or one
    that something else wrote."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    at = record.get("received_at")
    # time.localtime() refuses what is not a plausible time.
    if (not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at)
            or not 0 <= at < 2**32):
        return None
    return record if is_notification(record.get("notification")) else None


def read_inbox(path: Path) -> list[dict[str, Any]]:
    """Every record, oldest first, the rotated file's included."""
    records = []
    for p in (rotated(path), path):
        with contextlib.suppress(FileNotFoundError), p.open("rb") as f:
            records += [r for r in map(_record, f) if r is not None]
    return records


def _lines_backwards(path: Path, block: int = 64 * 1024) -> Iterator[bytes]:
    """The lines of ``path``, last first, reading no more of it than the caller takes."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        partial = b""
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            lines = (f.read(end - start) + partial).split(b"\n")
            end = start
            partial = lines.pop(0)  # its start may lie in the block before
            yield from reversed(lines)
        yield partial


def newest(path: Path, limit: int = DEFAULT_PAGE, offset: int = 0) -> list[dict[str, Any]]:
    """``limit`` records, newest first, after skipping the ``offset`` newest."""
    lines = itertools.chain(_lines_backwards(path), _lines_backwards(rotated(path)))
    records = (r for r in map(_record, lines) if r is not None)
    return list(itertools.islice(records, offset, offset + limit))


class InboxFollower:
    """The records appended since the last :meth:`new_records`, across a rotation, like
    ``tail -F``; a malformed line is logged and skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode: int | None = None
        self._offset = 0

    def new_records(self) -> list[dict[str, Any]]:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return []
        records = []
        with f:
            inode = os.fstat(f.fileno()).st_ino
            if inode != self._inode:
                if self._inode is not None:
                    records += self._rest_of_rotated()
                self._inode, self._offset = inode, 0
            records += self._read(f)
        return records

    def _rest_of_rotated(self) -> list[dict[str, Any]]:
        with contextlib.suppress(FileNotFoundError), rotated(self.path).open("rb") as f:
            if os.fstat(f.fileno()).st_ino == self._inode:
                return self._read(f)
        return []  # rotated twice since the last call: that file is gone

    def _read(self, f: Any) -> list[dict[str, Any]]:
        f.seek(self._offset)
        data = f.read()
        complete = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        records = []
        for line in data[:complete].split(b"\n")[:-1]:
            record = _record(line)
            if record is not None:
                records.append(record)
            elif line.strip():
                logger.warning("skipped a malformed record in %s at byte %d", self.path,
                               self._offset)
            self._offset += len(line) + 1
        return records


class InboxPrinter:
    """Prints the notifications that arrive in an inbox file, until SIGTERM or SIGINT: what
    ``up`` shows while its stack runs."""

    def __init__(self, path: Path, console: Console) -> None:
        self.follower = InboxFollower(path)
        self.console = console
        self.should_exit = False

    def handle_signals(self) -> None:
        # Handle SIGINT ourselves too: a shell that starts us in the background ignores it,
        # and Python then installs no KeyboardInterrupt handler.
        signal.signal(signal.SIGTERM, self._exit)
        signal.signal(signal.SIGINT, self._exit)

    def _exit(self, signum: int, frame: FrameType | None) -> None:
        self.should_exit = True

    def run(self, interval: float = 0.5) -> None:
        while not self.should_exit:
            self.print_new()
            time.sleep(interval)

    def print_new(self) -> None:
        from rich.text import Text

        for record in self.follower.new_records():
            stamp = time.strftime("%H:%M:%S", time.localtime(record["received_at"]))
            status = record["notification"].get("status")
            # A Text, not markup: label values are whatever was posted to the inbox.
            self.console.print(Text(f"{stamp} {describe(record['notification'])}",
                                    style="red" if status == "firing" else "green"))


def _open_private(path: Path) -> int:
    # Notifications tell another local user what is wrong where: owner only, like the run dir.
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit``: read chunk by chunk, never whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _page_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > maximum:
        raise ValueError(f"{name} must be an integer from 0 to {maximum}")
    return int(raw)


def create_inbox_app(path: Path, echo: bool = True,
                     max_file_bytes: int = MAX_INBOX_BYTES) -> Starlette:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(_open_private(path))  # there from the start, for GET /alerts and `inferwatch up`

    def keep(line: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            if size and size + len(line) > max_file_bytes:
                path.replace(rotated(path))
        fd = _open_private(path)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    async def receive(request: Request) -> Response:
        body = await _bounded_body(request, MAX_NOTIFICATION_BYTES)
        if body is None:
            return JSONResponse({"error": "body_too_large",
                                 "limit_bytes": MAX_NOTIFICATION_BYTES}, 413)
        try:
            notification = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            return JSONResponse({"error": "invalid_json"}, 400)
        if not is_notification(notification):
            return JSONResponse({"error": "expected an Alertmanager webhook payload: alerts, "
                                          "a list of objects with string labels and "
                                          "annotations"}, 400)
        received_at = time.time()
        try:
            line = json.dumps({"received_at": received_at, "notification": notification})
        except RecursionError:
            line = ""
        # The record nests one level deeper than the body: what parsed may not parse back,
        # and one such line would break every later listing.
        if _record(line.encode()) is None:
            return JSONResponse({"error": "invalid_json"}, 400)
        keep((line + "\n").encode())
        if echo:
            stamp = time.strftime("%H:%M:%S", time.localtime(received_at))
            print(f"[{stamp}] alert {describe(notification)}", file=sys.stdout, flush=True)
        return JSONResponse({"status": "ok"})

    async def listing(request: Request) -> Response:
        """The newest notifications first, a page at a time: ``?limit=`` and ``?offset=``."""
        try:
            limit = _page_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
            offset = _page_param(request, "offset", 0, sys.maxsize)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(newest(path, limit, offset))

    app = Starlette(routes=[
        Route("/alerts", receive, methods=["POST"]),
        Route("/alerts", listing, methods=["GET"]),
    ])
    # Starlette answers a path with a slash too many by a 307 to a URL built from the
    # client's Host header: an open redirect, on every server we run. A 404 instead.
    app.router.redirect_slashes = False
    return app
