"""Start and stop the local stack: real Prometheus, Alertmanager and node_exporter binaries,
the inference service, the alert inbox, the dashboard page and demo traffic, each a child
process listening on 127.0.0.1 unless told another bind address (the admin API: always
127.0.0.1). Around servers it monitors (``stack/monitor.py``) it runs no service and no
traffic: only the proxy, when asked, before one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import yaml

from inferwatch.secrets import read_secret_file, write_secret_file
from inferwatch.stack.addresses import (
    HOST,
    StackPorts,
    address,
    connect_host,
    free_ports,
    is_loopback,
)
from inferwatch.stack.addresses import url as _url
from inferwatch.stack.alerting import Receivers
from inferwatch.stack.config import Inference, write_stack_config
from inferwatch.stack.ha import (
    ALERTMANAGERS,
    PROMETHEUS_SERVERS,
    cluster_flags,
    render_ha_prometheus_config,
)
from inferwatch.stack.monitor import MonitoredServer, MonitorError, check_metrics
from inferwatch.stack.profiles import Profile
from inferwatch.stack.scaleout import (
    STORE_CONFIG,
    Store,
    check_retention,
    render_store_prometheus_config,
    store_remote_write,
    write_scaleout_config,
)
from inferwatch.stack.slo import SLO
from inferwatch.stack.webconfig import (
    BasicAuth,
    WebConfigError,
    check_web_config,
    write_web_config,
)
from inferwatch.stack.yamlfile import write_yaml

APT_PACKAGES = ("prometheus prometheus-alertmanager prometheus-node-exporter "
                "prometheus-pushgateway victoria-metrics")

# Debian's binary names first, then upstream's.
BINARIES = {
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "node_exporter": ("prometheus-node-exporter", "node_exporter"),
    "pushgateway": ("prometheus-pushgateway", "pushgateway"),
    "victoria-metrics": ("victoria-metrics", "victoria-metrics-prod"),
}
# VictoriaMetrics 1.79 reads a flag's value from the environment, never from a file: the
# store's password goes there (/proc/PID/environ is owner-only), not on its command line.
VM_ENV_PREFIX = "INFERWATCH_VM_"


class StackError(RuntimeError):
    pass


def find_binary(component: str) -> str:
    for name in BINARIES[component]:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(
        f"{component} not found on PATH (looked for {', '.join(BINARIES[component])}). "
        f"As root on Debian/Ubuntu: apt-get install -y {APT_PACKAGES} (or `make deps`); "
        "without root, put the upstream binaries from the Prometheus and VictoriaMetrics "
        "release archives on PATH."
    )


@dataclass
class Component:
    name: str
    argv: list[str]
    ready_url: str | None
    url: str | None = None
    auth: BasicAuth | None = None  # what the ready URL requires
    # Environment variables read from (secret) files at each start, never kept in argv.
    env_files: Mapping[str, Path] = field(default_factory=dict)


@dataclass
class StackOptions:
    run_dir: Path
    profile: Profile
    ports: StackPorts = field(default_factory=StackPorts)
    models: Sequence[str] = ("digits",)
    traffic_rate: float = 0.0  # demo requests per second; 0 for none
    resnet18_weights: Path | None = None
    receivers: Receivers | None = None  # email/Slack beside the inbox webhook
    replicas: int = 1  # services behind file_sd, and a remote_write store, when more than 1
    store: Store = "victoria-metrics"  # the store's kind, with replicas above 1 or ha
    store_retention: str = "90d"
    replica_ports: Sequence[int] = ()  # of replicas 2..N; free ones are picked when empty
    workers: int = 1  # service worker processes per replica; the admin API (chaos) needs 1
    serve_args: Sequence[str] = ()  # more `inferwatch serve` options, e.g. --queue-capacity
    bind: str = HOST  # every component's listen address, except the admin API's
    prometheus_user: str | None = None  # basic auth on Prometheus when set
    # From a 0600 file or the environment; a random one when None. Never a default.
    prometheus_password: str | None = field(default=None, repr=False)
    # /-/reload and /-/quit: unauthenticated without prometheus_user; SIGHUP reloads anyway.
    prometheus_lifecycle: bool = False
    # Servers watched instead of `serve`: the service, admin API and traffic are not started.
    monitored: Sequence[MonitoredServer] = ()
    slos: Sequence[SLO] | None = None  # None: the built-in file's
    # Two Prometheus servers and three gossiping Alertmanagers, writing to the store.
    ha: bool = False

    @property
    def service_ports(self) -> list[int]:
        return [self.ports.service, *self.replica_ports]

    @property
    def proxied(self) -> MonitoredServer | None:
        return next((s for s in self.monitored if s.proxied), None)

    @property
    def inference(self) -> Inference:
        """What Prometheus scrapes as the ``inference`` job."""
        if not self.monitored:
            return "service"
        return "proxy" if self.proxied else None

    @property
    def has_store(self) -> bool:
        return self.replicas > 1 or self.ha

    def unused_ports(self) -> set[str]:
        unused = set() if self.has_store else {"store"}
        if not self.ha:
            unused |= HA_PORTS
        if self.monitored:
            unused |= {"service", "admin"}
        if self.proxied is None:
            unused.add("proxy")
        return unused

    def service_name(self, index: int) -> str:
        return "service" if self.replicas == 1 else f"service-{index}"


def _private_dir(path: Path) -> Path:
    """``path``, created or narrowed to 0700: what the stack keeps there (metrics, alerts,
    logs) is what --prometheus-auth protects, so another local user may not read it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # an existing directory keeps its mode through mkdir
    return path


def _run_dir(path: Path) -> Path:
    """The run directory, 0700 when it is new, empty or an earlier stack's. Any other
    directory (``--run-dir /tmp``, ``~``) keeps its mode: narrowing it would lock others out;
    what the stack writes there is private all the same (``data``, ``logs``: 0700, files 0600).
    """
    earlier = (path / "prometheus.yml").exists() or (path / "data").is_dir()
    if not path.is_dir() or earlier or not any(path.iterdir()):
        return _private_dir(path)
    return path


def _open_private(path: Path, flags: int) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)


def admin_token_path(run_dir: Path) -> Path:
    return run_dir / "admin-token"


def web_config_path(run_dir: Path) -> Path:
    return run_dir / "web-config.yml"


def prometheus_auth(opts: StackOptions) -> BasicAuth | None:
    """The credentials Prometheus and Alertmanager require; the password file lives in the run
    directory."""
    if opts.prometheus_user is None:
        return None
    return BasicAuth(opts.prometheus_user, opts.run_dir / "prometheus-password")


def exposure_warnings(opts: StackOptions) -> list[str]:
    """What a bind address beyond loopback exposes, for the operator to read before it is
    too late."""
    if is_loopback(opts.bind):
        return []
    alertmanager = "Alertmanager, " if opts.prometheus_user is None else ""
    warnings = [f"binding {opts.bind}: the service, node_exporter, {alertmanager}the "
                "Pushgateway, the alert inbox and the dashboard page answer anyone who can "
                "reach this address, without authentication (see docs/security.md)"]
    if opts.prometheus_user is None:
        control = " and reload or shut it down" if opts.prometheus_lifecycle else ""
        warnings.insert(0, f"binding {opts.bind} without --prometheus-auth: anyone who can "
                           f"reach it can query Prometheus{control}")
    return warnings


def _prometheus(opts: StackOptions, config: Path, data: str, port: int,
                *extra: str) -> list[str]:
    argv = [find_binary("prometheus"), f"--config.file={config}",
            f"--storage.tsdb.path={opts.run_dir / 'data' / data}",
            f"--web.listen-address={address(port, opts.bind)}", *extra]
    if opts.prometheus_lifecycle:
        argv.append("--web.enable-lifecycle")
    if opts.prometheus_user is not None:
        argv.append(f"--web.config.file={web_config_path(opts.run_dir)}")
    return argv


def _victoria_metrics(opts: StackOptions, auth: BasicAuth | None) -> list[str]:
    argv = [find_binary("victoria-metrics"),
            f"-httpListenAddr={address(opts.ports.store, opts.bind)}",
            f"-storageDataPath={opts.run_dir / 'data' / 'store'}",
            f"-retentionPeriod={opts.store_retention}",
            # One sample per series per scrape interval: a writer's retried batch, or an HA
            # pair's second copy, is stored once.
            f"-dedup.minScrapeInterval={opts.profile.scrape_interval}",
            # Else every instant query near now is answered as of 30 s ago: doctor's clock,
            # load's counts and the newest points of every panel would lag.
            "-search.latencyOffset=0s"]
    if ":" in opts.bind:
        argv.append("-enableTCP6")  # else it listens on IPv4 only
    if auth is not None:
        argv += [f"-httpAuth.username={auth.username}", "-envflag.enable",
                 f"-envflag.prefix={VM_ENV_PREFIX}"]
    return argv


def store_component(opts: StackOptions) -> Component:
    """The remote_write receiver; started before any Prometheus that writes to it."""
    host, port, auth = connect_host(opts.bind), opts.ports.store, prometheus_auth(opts)
    if opts.store == "prometheus":
        return Component("store", _prometheus(
            opts, opts.run_dir / STORE_CONFIG, "store", port,
            "--web.enable-remote-write-receiver",
            f"--storage.tsdb.retention.time={opts.store_retention}",
        ), f"{_url(port, host)}/-/ready", _url(port, host), auth)
    # /health answers without the basic auth that the query and write APIs require.
    return Component("store", _victoria_metrics(opts, auth), f"{_url(port, host)}/health",
                     _url(port, host), env_files={
                         f"{VM_ENV_PREFIX}httpAuth_password": auth.password_file} if auth else {})


HA_PORTS = {"prometheus_b", "alertmanager_b", "alertmanager_c", "alertmanager_cluster",
            "alertmanager_b_cluster", "alertmanager_c_cluster"}


def _alertmanager_ports(opts: StackOptions) -> list[tuple[int, int]]:
    """(web, gossip) port of each Alertmanager: one without ``ha``, three with it."""
    p = opts.ports
    if not opts.ha:
        return [(p.alertmanager, p.alertmanager_cluster)]
    return [(p.alertmanager, p.alertmanager_cluster), (p.alertmanager_b, p.alertmanager_b_cluster),
            (p.alertmanager_c, p.alertmanager_c_cluster)]


def _prometheus_ports(opts: StackOptions) -> list[int]:
    return [opts.ports.prometheus, opts.ports.prometheus_b] if opts.ha else [opts.ports.prometheus]


def _config_name(name: str) -> str:
    return f"{name}.yml"


def components(opts: StackOptions) -> list[Component]:
    d, p, bind = opts.run_dir, opts.ports, opts.bind
    host = connect_host(bind)

    def url(port: int) -> str:
        return _url(port, host)

    def listen(port: int) -> str:
        return f"--web.listen-address={address(port, bind)}"

    auth = prometheus_auth(opts)
    # Alertmanager shares Prometheus' user: Prometheus sends alerts with it (config.py).
    web_config = [f"--web.config.file={web_config_path(d)}"] if auth else []
    python = [sys.executable, "-m", "inferwatch"]
    services = []
    proxied = opts.proxied
    if proxied is not None:
        services.append(Component("proxy", [
            *python, "proxy", "--upstream", f"http://{proxied.api}", "--host", bind,
            "--port", str(p.proxy), *(a for m in proxied.models for a in ("--model", m)),
        ], f"{url(p.proxy)}/metrics", url(p.proxy)))
    for index, port in enumerate([] if opts.monitored else opts.service_ports):
        serve = [*python, "serve", "--host", bind, "--port", str(port)]
        if opts.workers > 1:
            workers = "workers" if opts.replicas == 1 else f"workers-{index}"
            serve += ["--workers", str(opts.workers), "--worker-dir", str(d / workers)]
        elif index == 0:  # chaos drives the first replica
            serve += ["--admin-port", str(p.admin),
                      "--admin-token-file", str(admin_token_path(d))]
        for model in opts.models:
            serve += ["--model", model]
        if opts.resnet18_weights:
            serve += ["--resnet18-weights", str(opts.resnet18_weights)]
        serve += list(opts.serve_args)
        services.append(Component(opts.service_name(index), serve, f"{url(port)}/ping",
                                  url(port)))
    parts = [
        *services,
        Component("inbox", [*python, "inbox", "--host", bind, "--port", str(p.inbox),
                            "--file", str(d / "inbox.jsonl")],
                  f"{url(p.inbox)}/alerts", f"{url(p.inbox)}/alerts"),
        Component("node_exporter", [find_binary("node_exporter"), listen(p.node_exporter)],
                  f"{url(p.node_exporter)}/metrics", url(p.node_exporter)),
        Component("pushgateway", [
            find_binary("pushgateway"), listen(p.pushgateway),
            f"--persistence.file={d / 'data' / 'pushgateway.db'}",
        ], f"{url(p.pushgateway)}/-/ready", url(p.pushgateway)),
    ]
    am_ports = _alertmanager_ports(opts)
    for index, (name, (port, _)) in enumerate(zip(ALERTMANAGERS, am_ports, strict=False)):
        gossip = (cluster_flags(index, [c for _, c in am_ports], opts.profile.peer_timeout)
                  if opts.ha else ["--cluster.listen-address="])  # no gossip: one instance
        parts.append(Component(name, [
            find_binary("alertmanager"), f"--config.file={d / 'alertmanager.yml'}",
            f"--storage.path={d / 'data' / name}", listen(port), *web_config, *gossip,
        ], f"{url(port)}/-/ready", url(port), auth))
    # Exemplars: serve attaches the request id to latency, so a slow bucket leads to it.
    prometheus_flags = [f"--rules.alert.resend-delay={opts.profile.resend_delay}",
                        "--enable-feature=exemplar-storage"]
    if opts.has_store:
        parts.append(store_component(opts))
        # Both stop together: waiting a minute (the default) to flush to a receiver that is
        # gone would only delay the stop.
        prometheus_flags.append(
            f"--storage.remote.flush-deadline={opts.profile.remote_write_deadline}")
    for (name, _), port in zip(PROMETHEUS_SERVERS, _prometheus_ports(opts), strict=False):
        parts.append(Component(name, _prometheus(
            opts, d / _config_name(name), name, port, *prometheus_flags,
        ), f"{url(port)}/-/ready", url(port), auth))
    parts += [
        Component("dashboard", [
            *python, "dashboard", "--prometheus", url(p.prometheus),
            "--alertmanager", url(p.alertmanager), "--host", bind, "--port", str(p.dashboard),
            "--profile", opts.profile.name,
            *(["--prometheus-user", auth.username,
               "--prometheus-password-file", str(auth.password_file)] if auth else []),
        ], f"{url(p.dashboard)}/-/ready", url(p.dashboard)),
    ]
    if opts.traffic_rate > 0:
        # Feedback is scored by the worker that answered, so only one worker can take it.
        feedback = ["--feedback"] if opts.workers == 1 else []
        # No load balancer here: each replica gets its share of the demo traffic.
        for index, port in enumerate(opts.service_ports):
            name = "traffic" if opts.replicas == 1 else f"traffic-{index}"
            parts.append(Component(name, [
                *python, "load", "--url", url(port),
                "--rate", str(opts.traffic_rate / opts.replicas),
                "--duration", str(365 * 86400), "--quiet", *feedback,
            ], None))
    return parts


@dataclass
class RunningProcess:
    name: str
    pid: int
    argv: list[str]
    log: str
    url: str | None


class Stack:
    """The stack of one run directory; ``state.json`` there lets another process stop it."""

    def __init__(self, opts: StackOptions) -> None:
        self.opts = opts
        self.processes: list[RunningProcess] = []
        self._popen: dict[int, subprocess.Popen[bytes]] = {}
        self._components: dict[str, Component] = {}

    @property
    def state_path(self) -> Path:
        return self.opts.run_dir / "state.json"

    def start(self, timeout: float = 90.0) -> None:
        existing = read_state(self.opts.run_dir)
        if existing and any(alive(p) for p in existing):
            raise StackError(f"a stack is already running from {self.opts.run_dir}; "
                             "stop it with `inferwatch down` first")
        if self.opts.replicas < 1:
            raise StackError("replicas must be at least 1")
        if self.opts.monitored:
            self._check_monitored()
        try:
            check_retention(self.opts.store_retention)
        except ValueError as exc:
            raise StackError(str(exc)) from None
        if len(self.opts.replica_ports) != self.opts.replicas - 1:
            self.opts.replica_ports = free_ports(self.opts.replicas - 1)
        busy = self.opts.ports.busy(skip=self.opts.unused_ports(), bind=self.opts.bind)
        if busy:
            raise StackError("port(s) already in use: " + ", ".join(
                f"{port} ({name})" for name, port in busy
            ) + ". Stop what listens there or choose other ports (see `inferwatch up --help`).")
        parts = components(self.opts)
        self.write_config()
        self.start_components(parts, timeout)

    def _check_monitored(self) -> None:
        opts = self.opts
        if opts.replicas > 1 or opts.workers > 1 or opts.traffic_rate > 0:
            raise StackError("replicas, workers and demo traffic are the built-in service's; "
                             "a monitored server gets its clients' requests")
        try:
            for server in opts.monitored:
                check_metrics(server)
        except MonitorError as exc:
            raise StackError(str(exc)) from None

    def write_config(self) -> None:
        """Configuration and secrets of the run directory; a web config promtool refuses
        stops the start here, with promtool's message."""
        opts, host = self.opts, connect_host(self.opts.bind)
        auth = prometheus_auth(opts)
        _run_dir(opts.run_dir)
        _private_dir(opts.run_dir / "data")  # the components' own files: umask 077, _spawn
        known = {s.kind: s.metrics for s in opts.monitored if s.metrics is not None}
        written = write_stack_config(opts.run_dir, opts.profile, opts.ports, opts.receivers,
                                     opts.slos, known, host=host, auth=auth,
                                     inference=opts.inference)
        if opts.replicas > 1:
            written.update(write_scaleout_config(
                opts.run_dir, opts.profile, opts.ports, opts.service_ports, host=host,
                auth=auth, store=opts.store))
        if opts.ha:
            written.update(self._write_ha_config(written["prometheus"], host, auth))
        for path in written.values():
            path.chmod(0o600)
            if path.parent != opts.run_dir:  # rules/, file_sd/: the run dir is _run_dir's
                path.parent.chmod(0o700)
        # A fresh token per stack: chaos needs it, and it never leaves the run directory.
        write_secret_file(admin_token_path(opts.run_dir), secrets.token_urlsafe(32))
        if auth is not None:
            password = opts.prometheus_password or secrets.token_urlsafe(24)
            write_secret_file(auth.password_file, password)
            write_web_config(web_config_path(opts.run_dir), auth.username, password)
            try:
                check_web_config(web_config_path(opts.run_dir))
            except WebConfigError as exc:
                raise StackError(str(exc)) from None

    def _write_ha_config(self, single: Path, host: str,
                         auth: BasicAuth | None) -> dict[str, Path]:
        """Each HA Prometheus' file, from the single server's ``single``; the replicas
        path has already added remote_write to the store, a single service has not."""
        opts = self.opts
        config = yaml.safe_load(single.read_text())
        written = {}
        if "remote_write" not in config:
            config["remote_write"] = [store_remote_write(opts.profile, opts.ports, host, auth)]
            if opts.store == "prometheus":
                written["store"] = write_yaml(opts.run_dir / STORE_CONFIG,
                                              render_store_prometheus_config(opts.profile))
        members = [address(port, host) for port in _prometheus_ports(opts)]
        alertmanagers = [address(port, host) for port, _ in _alertmanager_ports(opts)]
        for name, replica in PROMETHEUS_SERVERS:
            written[name] = write_yaml(opts.run_dir / _config_name(name),
                                       render_ha_prometheus_config(config, replica, members,
                                                                   alertmanagers))
        return written

    def start_components(self, parts: Sequence[Component], timeout: float = 90.0) -> None:
        """Start ``parts`` in order and wait until each answers its ready URL."""
        try:
            for part in parts:
                self.processes.append(self._spawn(part))
                self._write_state()
            deadline = time.monotonic() + timeout
            for part, running in zip(parts, self.processes[-len(parts):], strict=True):
                if part.ready_url:
                    self._wait_ready(part, running, deadline)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, part: Component) -> RunningProcess:
        _run_dir(self.opts.run_dir)
        log_path = _private_dir(self.opts.run_dir / "logs") / f"{part.name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name, path in part.env_files.items():
            env[name] = read_secret_file(path, f"{part.name}'s {name}")
        with os.fdopen(_open_private(log_path, os.O_APPEND), "ab") as log:
            # umask 077: what each component creates (TSDB, silences, inbox) is owner-only.
            proc = subprocess.Popen(part.argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, umask=0o077)
        self._popen[proc.pid] = proc
        self._components[part.name] = part
        return RunningProcess(part.name, proc.pid, part.argv, str(log_path), part.url)

    def stop_component(self, name: str, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop one component: SIGTERM (a clean shutdown; Prometheus closes its TSDB) or,
        with ``kill``, SIGKILL (a crash). It keeps its place for :meth:`start_component`."""
        running = self.process(name)
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.pid, signal.SIGKILL)
        stop_processes([running], timeout)  # after SIGKILL: only waits until it is gone
        proc = self._popen.pop(running.pid, None)
        if proc is not None:
            proc.wait(timeout)

    def start_component(self, name: str, timeout: float = 90.0) -> None:
        """Start a stopped component again with the same argv: the same port, data directory
        and log file (appended to). Returns once it answers its ready URL."""
        index = next(i for i, p in enumerate(self.processes) if p.name == name)
        if alive(self.processes[index]):
            raise StackError(f"{name} is still running (pid {self.processes[index].pid})")
        part = self._components[name]
        running = self._spawn(part)
        self.processes[index] = running
        self._write_state()
        if part.ready_url:
            try:
                self._wait_ready(part, running, time.monotonic() + timeout)
            except StackError:
                stop_processes([running])
                raise

    def restart(self, name: str, kill: bool = False, timeout: float = 90.0) -> None:
        self.stop_component(name, kill=kill)
        self.start_component(name, timeout)

    def _wait_ready(self, part: Component, running: RunningProcess, deadline: float) -> None:
        assert part.ready_url is not None
        while time.monotonic() < deadline:
            proc = self._popen[running.pid]
            if proc.poll() is not None:
                tail = Path(running.log).read_text(errors="replace")[-2000:]
                raise StackError(f"{part.name} exited with {proc.returncode}; "
                                 f"log {running.log}:\n{tail}")
            try:
                auth = part.auth.credentials() if part.auth else None
                if httpx.get(part.ready_url, timeout=1.0, auth=auth).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise StackError(f"{part.name} not ready at {part.ready_url}; log: {running.log}")

    def _write_state(self) -> None:
        auth = prometheus_auth(self.opts)
        state = {"profile": self.opts.profile.name, "ports": asdict(self.opts.ports),
                 "replicas": self.opts.replicas, "bind": self.opts.bind,
                 "host": connect_host(self.opts.bind), "inference": self.opts.inference,
                 "monitored": [asdict(s) for s in self.opts.monitored],
                 "prometheus_auth": auth and {"username": auth.username,
                                              "password_file": str(auth.password_file)},
                 "store": self._store_state(),
                 "ha": self.opts.ha,
                 "processes": [asdict(p) for p in self.processes]}
        with os.fdopen(_open_private(self.state_path, os.O_TRUNC), "w") as f:
            f.write(json.dumps(state, indent=2))

    def _store_state(self) -> dict[str, str] | None:
        if not self.opts.has_store:
            return None
        return {"kind": self.opts.store, "retention": self.opts.store_retention,
                "url": _url(self.opts.ports.store, connect_host(self.opts.bind))}

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        stop_processes(self.processes, timeout)
        for proc in self._popen.values():
            proc.poll()  # reap
        self.processes.clear()
        self.state_path.unlink(missing_ok=True)

    def process(self, name: str) -> RunningProcess:
        return next(p for p in self.processes if p.name == name)


def read_state(run_dir: Path) -> list[RunningProcess]:
    path = run_dir / "state.json"
    if not path.exists():
        return []
    return [RunningProcess(**p) for p in json.loads(path.read_text())["processes"]]


def stop_processes(processes: Sequence[RunningProcess], timeout: float = 10.0) -> None:
    """SIGTERM in reverse start order, SIGKILL whatever is left after ``timeout``."""
    live = [p for p in reversed(processes) if alive(p)]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in live:
        if alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


def alive(p: RunningProcess) -> bool:
    """True while ``p.pid`` is running the same program (a reused pid is not ours)."""
    try:
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode(errors="replace")
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return os.path.basename(argv0) == os.path.basename(p.argv[0])

