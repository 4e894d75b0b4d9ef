"""What the benchmarks share: free ports, servers run as processes for the length of a
``with`` block, the CPU time a process spent, read from /proc, and each round's hash
seed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

_GIVEN_SEED = os.environ.get("PYTHONHASHSEED")


def seed_round(number: int) -> None:
    """Give the processes a round starts their own PYTHONHASHSEED, the round's number
    (unless one was set for the whole run). Every process of a round gets the same one.

    With one seed for every round (0, until 2026-11-26), a service's dict layouts, and
    with them where its objects fall in the caches, were alike in every round: that luck
    never averaged out. bench/overhead.py measured one tree's `on-noq` at 0.945x of `off`
    in two runs where the tree before it, the same code on that path, measured 0.965x and
    0.987x; with a seed per round, 0.971x and 0.961x.
    """
    os.environ["PYTHONHASHSEED"] = _GIVEN_SEED or str(number)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(argv: list[str], ready: str, log: Path | None = None,
            timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends, once ``ready`` answers 200; its output goes to
    ``log`` when given."""
    with log.open("ab") if log else contextlib.nullcontext() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if log else None,
                                stdin=subprocess.DEVNULL)
    try:
        if not wait_ready(ready, timeout, proc):
            tail = log.read_text()[-2000:] if log else ""
            raise RuntimeError(f"{' '.join(argv[:4])} did not start\n{tail}")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(url: str, timeout: float = 60,
               proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether ``url`` answered 200 within ``timeout`` seconds (and ``proc`` kept running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``, all its threads, and its children (nginx's
    worker)."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0.0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total
