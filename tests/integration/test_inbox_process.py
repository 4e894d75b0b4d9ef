"""`inferwatch inbox` as the stack runs it, a process of its own: what anyone who reaches its
port can send costs it no more than a notification's worth of memory, and reaches its log
without terminal control characters."""

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from inferwatch.stack.addresses import free_ports
from inferwatch.stack.inbox import MAX_NOTIFICATION_BYTES

BIG = 50 * 1024 * 1024


@dataclass
class Inbox:
    url: str
    process: subprocess.Popen[bytes]
    file: Path
    log: Path

    def peak_rss_kib(self) -> int:
        """VmHWM: the most memory the process ever held, however briefly."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines()
                        if line.startswith("VmHWM:")).split()[1])


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inbox]:
    d = tmp_path_factory.mktemp("inbox")
    port = free_ports(1)[0]
    with (d / "inbox.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "inferwatch", "inbox", "--port",
                                    str(port), "--file", str(d / "inbox.jsonl")],
                                   stdout=log, stderr=subprocess.STDOUT)
    running = Inbox(f"http://127.0.0.1:{port}/alerts", process, d / "inbox.jsonl",
                    d / "inbox.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, \
                (d / "inbox.log").read_text()
            try:
                httpx.get(running.url).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield running
    finally:
        process.terminate()
        process.wait(10)


def alert(**labels: str) -> dict[str, object]:
    return {"status": "firing", "alerts": [{"status": "firing", "labels": labels,
                                            "annotations": {"summary": "x"}}]}


def test_a_huge_body_is_refused_without_being_read_whole(inbox: Inbox) -> None:
    httpx.post(inbox.url, json=alert(alertname="Warm")).raise_for_status()
    before, size = inbox.peak_rss_kib(), inbox.file.stat().st_size
    body = b"x" * BIG
    declared = httpx.post(inbox.url, content=body, timeout=60)
    assert declared.status_code == 413, declared.text
    assert declared.json() == {"error": "body_too_large", "limit_bytes": MAX_NOTIFICATION_BYTES}
    # Chunked, without a Content-Length to refuse up front: reading stops past the limit.
    chunked = httpx.post(inbox.url, content=(body[i:i + 65536] for i in range(0, BIG, 65536)),
                         timeout=60)
    assert chunked.status_code == 413, chunked.text
    grown = inbox.peak_rss_kib() - before
    assert grown < 8 * 1024, f"peak RSS grew {grown} KiB for a {BIG >> 20} MiB body"
    assert inbox.file.stat().st_size == size
    assert httpx.get(inbox.url).status_code == 200


def test_control_characters_never_reach_the_log(inbox: Inbox) -> None:
    assert httpx.post(inbox.url, json={"alerts": [1]}).status_code == 400
    httpx.post(inbox.url, json=alert(alertname="Esc", model="\x1b[2J\x1b]0;owned\x07\x9bm\n"
                                     )).raise_for_status()
    deadline = time.monotonic() + 10
    while "Esc" not in inbox.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "no echo of the notification"
        time.sleep(0.05)
    log = inbox.log.read_bytes()
    assert b"model=\\x1b[2J\\x1b]0;owned\\x07\\x9bm\\x0a" in log
    assert not any(c < 0x20 and c != 0x0A for c in log) and "\x9b" not in log.decode()
    assert b"Traceback" not in log
