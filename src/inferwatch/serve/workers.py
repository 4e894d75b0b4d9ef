"""``inferwatch serve --workers N``: one listening socket, N worker processes.

The supervisor binds the port once and starts N workers, each a fresh interpreter (a loaded
model's threads or CUDA context are never forked) that accepts connections on the inherited
socket. A worker that dies is replaced in its slot at once; its counts survive in the slot's
files (see :mod:`inferwatch.metrics.workers`). Any worker answers ``/metrics`` with the sum
over all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.values import close_all_multiprocess_files

from inferwatch.httplimits import HttpLimits
from inferwatch.limitedhttp import uvicorn_options
from inferwatch.metrics.workers import (
    SUPERVISOR,
    CollectorPublisher,
    announce_slot,
    release_slot,
    scrape_registry,
    slot_pids,
    use_slot,
)
from inferwatch.serve.app import ServeConfig, create_app, prepare_serving_process

log = logging.getLogger("inferwatch.serve.workers")

__all__ = ["Supervisor", "WorkerStartError", "worker_main"]

_TEMP_PREFIX = "inferwatch-workers-"
_STOP_SECONDS = 10.0
_MAX_BACKOFF = 30.0
_WORKER_CODE = "from inferwatch.serve.workers import worker_main; worker_main()"


class WorkerStartError(RuntimeError):
    """A worker of the first generation exited before it served: the others would too."""


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def prune_stale_directories(root: Path | None = None) -> list[Path]:
    """Remove default worker directories whose supervisor is gone (killed with SIGKILL)."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{_TEMP_PREFIX}*-*"):
        pid = path.name[len(_TEMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass
class _Slot:
    name: str
    process: subprocess.Popen[bytes] | None = None
    served: bool = False  # a worker of this slot announced itself at least once
    failures: int = 0  # consecutive workers that died before serving
    start_at: float = 0.0  # when to start the next worker (backoff)


class Supervisor:
    """Starts ``workers`` processes on one socket, restarts the ones that die.

    ``config`` is sent to the workers as JSON; ``directory`` holds the shared metric files
    (default: a new temporary directory, removed at exit); each worker serves under
    ``http_limits``.
    """

    def __init__(self, config: ServeConfig, *, host: str, port: int, workers: int,
                 directory: Path | None = None, log_level: str = "info",
                 uvicorn_options: dict[str, Any] | None = None,
                 http_limits: HttpLimits | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.config = config
        self.host, self.port = host, port
        self.slots = [_Slot(str(i)) for i in range(workers)]
        self.given_directory = directory
        self.directory = directory or Path()
        self.log_level = log_level
        self.uvicorn_options = uvicorn_options or {}
        self.http_limits = http_limits or HttpLimits()
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 1 when the first workers cannot start."""
        sock = listen(self.host, self.port)
        self.directory = self._prepare_directory()
        use_slot(self.directory, SUPERVISOR)
        announce_slot(self.directory, SUPERVISOR)
        restarts = Counter("inferwatch_worker_restarts", "Workers started again after one died.",
                           ["worker"], registry=None)
        for slot in self.slots:
            restarts.labels(slot.name)
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM,
                                                                    signal.SIGINT)}
        try:
            for slot in self.slots:
                self._start(slot, sock)
            log.info("serving on http://%s:%d with %d workers; shared metrics in %s",
                     self.host, self.port, len(self.slots), self.directory)
            if self.config.quality:
                log.warning("POST /feedback is scored only by the worker that answered the "
                            "request: with %d workers most feedback is refused as "
                            "unknown_request_id; accuracy from feedback needs --workers 1",
                            len(self.slots))
            while not self._stopping:
                for slot in self.slots:
                    self._check(slot, sock, restarts)
                time.sleep(0.05)
        except WorkerStartError as exc:
            log.error("%s", exc)
            return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_workers()
            sock.close()
            close_all_multiprocess_files()
            self._remove_directory()
        return 0

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _check(self, slot: _Slot, sock: socket.socket, restarts: Any) -> None:
        proc = slot.process
        if proc is None:
            if time.monotonic() >= slot.start_at:
                self._start(slot, sock)
            return
        code = proc.poll()
        if code is None:
            if not slot.served and slot_pids(self.directory).get(slot.name) == proc.pid:
                slot.served, slot.failures = True, 0
            return
        served = slot_pids(self.directory).get(slot.name) == proc.pid
        release_slot(self.directory, slot.name)
        slot.process = None
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if not served and not slot.served:
            raise WorkerStartError(f"worker {slot.name} (pid {proc.pid}) exited with {how} "
                                   "before it served; see its log above")
        slot.failures = 0 if served else slot.failures + 1
        delay = min(_MAX_BACKOFF, 2.0 ** (slot.failures - 1)) if slot.failures else 0.0
        slot.start_at = time.monotonic() + delay
        restarts.labels(slot.name).inc()
        log.warning("worker %s (pid %d) exited with %s; restarting it%s", slot.name, proc.pid,
                    how, f" in {delay:g} s" if delay else "")

    def _start(self, slot: _Slot, sock: socket.socket) -> None:
        spec = {"slot": slot.name, "fd": sock.fileno(), "directory": str(self.directory),
                "supervisor": os.getpid(), "config": config_to_json(self.config),
                "log_level": self.log_level, "uvicorn": self.uvicorn_options,
                "http_limits": dataclasses.asdict(self.http_limits)}
        slot.process = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, json.dumps(spec)],
                                        pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL)
        log.info("worker %s started (pid %d)", slot.name, slot.process.pid)

    def _stop_workers(self) -> None:
        running = [s.process for s in self.slots if s.process is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_SECONDS
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for slot in self.slots:
            slot.process = None

    def _prepare_directory(self) -> Path:
        if self.given_directory is None:
            prune_stale_directories()
            return Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-"))
        self.given_directory.mkdir(parents=True, exist_ok=True)
        self._remove_files(self.given_directory)  # counts start at zero with the service
        return self.given_directory

    def _remove_directory(self) -> None:
        if self.given_directory is None:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            self._remove_files(self.directory)

    @staticmethod
    def _remove_files(directory: Path) -> None:
        for pattern in ("*.db", "*.pid"):
            for path in directory.glob(pattern):
                path.unlink(missing_ok=True)


def config_to_json(config: ServeConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def config_from_json(data: dict[str, Any]) -> ServeConfig:
    weights, buckets = data.get("resnet18_weights"), data.get("latency_buckets")
    return ServeConfig(**{**data, "models": tuple(data["models"]),
                          "resnet18_weights": Path(weights) if weights else None,
                          "latency_buckets": tuple(buckets) if buckets else None})


def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of one worker: ``python -c ... SPEC_JSON``, started by the supervisor."""
    import uvicorn

    spec = json.loads((argv or sys.argv[1:])[0])
    slot, directory = spec["slot"], Path(spec["directory"])
    logging.basicConfig(level=spec["log_level"].upper(),
                        format=f"%(asctime)s %(levelname)s worker {slot} %(name)s: %(message)s")
    _exit_with(spec["supervisor"])
    use_slot(directory, slot)  # before the first metric is created
    app = create_app(config_from_json(spec["config"]), CollectorRegistry(),
                     scrape_registry=scrape_registry(directory, announce_gpu=slot == "0"))
    prepare_serving_process()

    class WorkerServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                announce_slot(directory, slot)  # ready: the supervisor counts it as serving

    server = WorkerServer(uvicorn.Config(
        app, log_level="warning", access_log=False, **spec["uvicorn"],
        **uvicorn_options(HttpLimits(**spec["http_limits"]))))
    stop_publishing = _publish(CollectorPublisher(app.state.service.quality_metrics.collector))
    try:
        server.run(sockets=[socket.socket(fileno=spec["fd"])])
    finally:
        stop_publishing()


def _publish(publisher: CollectorPublisher, interval: float = 0.5) -> Callable[[], None]:
    """Publish every ``interval`` seconds (quality is folded as often); returns the stop."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            publisher.publish()

    thread = threading.Thread(target=run, name="inferwatch-publish", daemon=True)
    thread.start()

    def stop_and_flush() -> None:
        stop.set()
        thread.join(5)
        publisher.publish()

    return stop_and_flush


def _exit_with(supervisor: int) -> None:
    """Stop this worker when its supervisor is gone, even if it was killed with SIGKILL."""
    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
