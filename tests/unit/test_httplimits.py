"""Every HTTP server we run, as its command starts it, against clients that would hold it:
oversized headers, slow headers, idle connections, too many connections."""

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from servers import free_port
from typer.testing import CliRunner

from inferwatch.cli import app

MAX_HEADER_BYTES = 8192
MAX_CONNECTIONS = 4
LIMITS = ["--max-header-bytes", str(MAX_HEADER_BYTES), "--header-timeout", "1",
          "--keep-alive-timeout", "1", "--max-connections", str(MAX_CONNECTIONS)]
CLOSED_WITHIN = 5.0  # seconds: well past the 1 s timeouts, for a loaded machine


@dataclass
class Server:
    kind: str
    port: int
    path: str  # a GET that answers 200
    post_path: str  # a POST route
    pid: int  # of the process that serves (with --workers, the supervisor's)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def head(self, extra: str = "") -> bytes:
        return f"GET {self.path} HTTP/1.1\r\nHost: x\r\n{extra}".encode()


COMMANDS = {  # kind: argv, path, post_path
    "serve": (["serve"], "/ping", "/predictions/digits"),
    "serve-workers": (["serve", "--workers", "2"], "/ping", "/predictions/digits"),
    "dashboard": (["dashboard", "--prometheus", "http://127.0.0.1:1", "--alertmanager", ""],
                  "/-/ready", "/"),
    "inbox": (["inbox", "--file", "{tmp}/inbox.jsonl"], "/alerts", "/alerts"),
}


@pytest.fixture(scope="module", params=list(COMMANDS))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    kind = request.param
    argv, path, post_path = COMMANDS[kind]
    tmp = tmp_path_factory.mktemp(kind)
    port = free_port()
    log = tmp / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferwatch", *(a.format(tmp=tmp) for a in argv),
             "--host", "127.0.0.1", "--port", str(port), *LIMITS],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240  # the first digits model trains: minutes when busy
        while True:
            assert proc.poll() is None, f"{kind} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{kind} not ready:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield Server(kind, port, path, post_path, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _read_until_closed(sock: socket.socket, timeout: float = CLOSED_WITHIN) -> bytes:
    """All the server sends until it closes; fails if it is still open after ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"still open after {timeout} s; received {data[:200]!r}")
    except ConnectionResetError:
        pass
    return data


def _error(response: bytes, status: int) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), response[:300]
    assert b"content-type: application/json" in head.lower()
    answer = json.loads(body)
    assert answer["code"] == status
    return str(answer["error"])


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_head_over_the_limit_gets_431(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(server.head(f"X-Big: {'a' * MAX_HEADER_BYTES}\r\n\r\n"))
        assert _error(_read_until_closed(sock), 431) == "headers_too_large"
    with server.connect() as sock:  # the limit is the head's, not a field's
        fields = "".join(f"X-{i}: {'a' * 100}\r\n" for i in range(MAX_HEADER_BYTES // 100))
        sock.sendall(server.head(fields + "\r\n"))
        assert _error(_read_until_closed(sock), 431) == "headers_too_large"
    big_but_allowed = {"X-Big": "a" * (MAX_HEADER_BYTES // 2)}
    url = f"http://127.0.0.1:{server.port}{server.path}"
    assert httpx.get(url, headers=big_but_allowed, timeout=10).status_code == 200


def test_a_64_mb_header_is_refused_before_it_is_read(server: Server) -> None:
    peak_before = _peak_rss_kib(server.pid)
    sent = 0
    with server.connect() as sock:
        try:
            sock.sendall(server.head("X-Big: "))
            for _ in range(64):
                sock.sendall(b"a" * (1 << 20))
                sent += 1 << 20
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _error(_read_until_closed(sock), 431) == "headers_too_large"
    assert sent < 32 << 20
    if server.kind != "serve-workers":  # there the supervisor never sees the request
        assert _peak_rss_kib(server.pid) - peak_before < 16 << 10


def test_a_body_is_no_part_of_the_head(server: Server) -> None:
    """A request's head and body come in one read: only the head counts."""
    body = b"x" * (MAX_HEADER_BYTES * 8)
    with server.connect() as sock:
        sock.sendall(f"POST {server.post_path} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        status = _read_until_closed(sock).split(b" ", 2)[1]
    assert status.isdigit() and int(status) != 431


def test_slow_or_silent_clients_are_dropped_after_the_header_timeout(server: Server) -> None:
    with server.connect() as silent, server.connect() as slow:
        start = time.monotonic()
        slow.sendall(server.head())
        try:
            while time.monotonic() - start < CLOSED_WITHIN:  # never idle, never done
                time.sleep(0.2)
                slow.sendall(b"X-Slow: yes\r\n")
            pytest.fail(f"a slow head still open after {CLOSED_WITHIN} s")
        except (BrokenPipeError, ConnectionResetError):
            assert time.monotonic() - start > 0.9  # not before the 1 s header timeout
        assert _error(_read_until_closed(slow), 408) == "header_timeout"
        assert _read_until_closed(silent) == b""


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(server.head("\r\n"))
        response = _read_until_closed(sock, 3.5)  # uvicorn's own default is 5 s
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in response.lower()  # the server kept it open, then closed


# Not with --workers: the cap is each worker's, and which worker accepts is the kernel's choice.
@pytest.mark.parametrize("server", [k for k in COMMANDS if k != "serve-workers"], indirect=True)
def test_a_connection_over_the_cap_gets_503(server: Server) -> None:
    held = [server.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        with server.connect() as refused:
            assert _error(_read_until_closed(refused), 503) == "too_many_connections"
    finally:
        for sock in held:
            sock.close()
    url = f"http://127.0.0.1:{server.port}{server.path}"
    deadline = time.monotonic() + CLOSED_WITHIN
    while True:
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                break
        except httpx.HTTPError:  # refused at connect, the request unread: a reset
            pass
        assert time.monotonic() < deadline, "still refused after the held connections closed"
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["serve", "dashboard", "inbox"])
def test_limits_must_be_positive(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--header-timeout", "0"])
    assert result.exit_code == 2
    assert "--header-timeout must be positive" in result.output
