"""The ``inferwatch`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from inferwatch.httplimits import HttpLimits
from inferwatch.stack.addresses import HOST, StackPorts

if TYPE_CHECKING:
    from inferwatch.stack.inbox import InboxFollower

app = typer.Typer(help="Monitor real-time AI inference services with Prometheus.",
                  no_args_is_help=True, add_completion=False)
console = Console()

RunDir = Annotated[Path, typer.Option("--run-dir", help="Directory for config, data and logs.")]
SloFile = Annotated[Path | None, typer.Option("--slo",
                                              help="SLO file (default: the built-in one).")]
Monitor = Annotated[list[str] | None, typer.Option(
    "--monitor", metavar="KIND=HOST:PORT",
    help="Monitor a server you run (repeat, one per kind): KIND is torchserve, triton, "
         "mlserver, vllm, or proxy (any server, measured by the proxy only); HOST:PORT its "
         "inference API. Its metrics address defaults to the kind's port on that host "
         "(torchserve 8082, triton 8002, mlserver 8082, vllm: the API's); override with "
         "`,metrics=HOST:PORT` (TorchServe's model list: `,management=HOST:PORT`, default "
         "8081); `,proxy` puts the proxy before it. SLOs: one per model it lists.")]
ProxyBefore = Annotated[bool, typer.Option(
    "--proxy", help="With one --monitor: put `inferwatch proxy` before it (errors per model, "
                    "a latency histogram); clients then call the proxy.")]
PrometheusUser = Annotated[str | None, typer.Option(
    help="Prometheus basic-auth user; the password from --prometheus-password-file or "
         "$INFERWATCH_PROMETHEUS_PASSWORD (default: the stack's, with --run-dir).")]
PrometheusPasswordFile = Annotated[Path | None, typer.Option(
    help="File (mode 0600) holding the Prometheus password, with --prometheus-user.")]
# The limits of every HTTP server we run (see inferwatch.httplimits).
MaxHeaderBytes = Annotated[int, typer.Option(
    help="Largest request line and headers; beyond, 431.")]
HeaderTimeout = Annotated[float, typer.Option(
    help="Seconds a client has to send a request's headers (from connect or from its first "
         "byte); then the connection is closed.")]
KeepAliveTimeout = Annotated[float, typer.Option(
    help="Seconds an idle connection stays open between requests.")]
MaxConnections = Annotated[int, typer.Option(
    help="Open connections per process; one more is answered 503 and closed.")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def _http_limits(max_header_bytes: int, header_timeout: float, keep_alive_timeout: float,
                 max_connections: int) -> HttpLimits:
    try:
        return HttpLimits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _prometheus_credentials(user: str | None, password_file: Path | None,
                            state: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """Credentials for Prometheus: from the options, else from a stack's ``state``."""
    import os

    from inferwatch.secrets import SecretFileError, read_secret_file
    from inferwatch.stack.webconfig import PASSWORD_ENV

    if user is None:
        if password_file is not None:
            raise _fail("--prometheus-password-file needs --prometheus-user")
        saved = (state or {}).get("prometheus_auth")
        if not saved:
            return None
        user, password_file = saved["username"], Path(saved["password_file"])
    try:
        if password_file is not None:
            return user, read_secret_file(password_file, "--prometheus-password-file")
    except SecretFileError as exc:
        raise _fail(str(exc)) from None
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise _fail(f"--prometheus-user needs --prometheus-password-file or {PASSWORD_ENV}")
    return user, password


def _stack_url(state: dict[str, Any], component: str) -> str:
    from inferwatch.stack.addresses import url

    return url(state["ports"][component], state.get("host", HOST))


def _query_url(state: dict[str, Any], store: bool) -> str:
    """The stack's Prometheus, or with ``store`` its remote_write store."""
    if not store:
        return _stack_url(state, "prometheus")
    if not state.get("store"):
        raise _fail("this stack has no store: start it with --replicas above 1")
    return str(state["store"]["url"])


StoreOption = Annotated[bool, typer.Option(
    "--store", help="Query the stack's remote_write store (up --replicas above 1) instead "
                    "of its Prometheus; with --prometheus: that URL is a store.")]


def _stack_state(run_dir: Path) -> dict[str, Any]:
    """The state of the stack in ``run_dir``, for commands given no --prometheus URL."""
    from inferwatch.stack.runner import read_state_info

    state = read_state_info(run_dir)
    if not state.get("ports"):
        raise _fail(f"no stack in {run_dir}: pass --prometheus URL")
    return state


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = HOST,
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Model to serve (repeat): digits, resnet18.")] = None,
    resnet18_weights: Annotated[Path | None, typer.Option(
        help="Path of the official resnet18-f37072fd.pth weight file.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(
        help="Largest batch per model call (default: the model's own).")] = None,
    max_wait_ms: Annotated[float, typer.Option(
        help="Longest wait to fill a batch; 0 batches only what queued while the model was "
             "busy, so an idle service adds no delay.")] = 0.0,
    queue_capacity: Annotated[int, typer.Option(
        help="Samples that may wait per model; beyond, 503 with Retry-After.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 4 << 20,
    max_image_pixels: Annotated[int, typer.Option(
        min=1, help="Largest image, in pixels, beyond which 413 image_too_large, checked "
                    "before decoding: a small PNG can declare gigabytes. The default, "
                    "4096x4096, holds a 12 Mpx photo; the models take 8x8 and 224x224.")
    ] = 4096 * 4096,
    quality: Annotated[bool, typer.Option(
        help="Track confidence, class mix, drift and feedback accuracy.")] = True,
    metrics: Annotated[bool, typer.Option(
        help="Count and time requests and serve /metrics. --no-metrics is for benchmarking "
             "only: it measures what the instrumentation costs (quality tracking goes too).")
    ] = True,
    admin_port: Annotated[int | None, typer.Option(
        help="Enable the fault-injection admin API on 127.0.0.1:PORT (needs a token).")
    ] = None,
    admin_token_file: Annotated[Path | None, typer.Option(
        help="File (mode 0600) holding the admin bearer token; or set INFERWATCH_ADMIN_TOKEN.")
    ] = None,
    workers: Annotated[int, typer.Option(
        min=1, help="Worker processes sharing the port; a worker that dies is restarted and "
                    "counts stay exact across workers and restarts.")] = 1,
    worker_dir: Annotated[Path | None, typer.Option(
        help="With --workers > 1: directory of the workers' shared metric files "
             "(default: a new temporary directory, removed at exit).")] = None,
    max_header_bytes: MaxHeaderBytes = HttpLimits.max_header_bytes,
    header_timeout: HeaderTimeout = HttpLimits.header_timeout,
    keep_alive_timeout: KeepAliveTimeout = HttpLimits.keep_alive_timeout,
    max_connections: MaxConnections = HttpLimits.max_connections,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Run the inference service (TorchServe and Open Inference Protocol v2 routes)."""
    import uvicorn

    from inferwatch.secrets import SecretFileError
    from inferwatch.serve.admin import ADMIN_HOST, admin_token, create_admin_app
    from inferwatch.serve.app import ServeConfig, create_app, prepare_serving_process

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(
        models=tuple(model or ["digits"]), resnet18_weights=resnet18_weights,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
        queue_capacity=queue_capacity, max_body_bytes=max_body_bytes, quality=quality,
        metrics=metrics, max_image_pixels=max_image_pixels,
    )
    limits = _http_limits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    if workers > 1:
        raise typer.Exit(_serve_workers(config, host, port, workers, worker_dir, admin_port,
                                        log_level, serve_options(), limits))
    if worker_dir is not None:
        raise _fail("--worker-dir needs --workers > 1")
    try:
        token = admin_token(admin_port, admin_token_file)
        asgi = create_app(config)
        admin = create_admin_app(asgi.state.service.faults, token) if token else None
    except (ValueError, ImportError, OSError, SecretFileError) as exc:
        raise _fail(str(exc)) from None
    prepare_serving_process()
    main = uvicorn.Server(uvicorn.Config(
        asgi, host=host, port=port, log_level="warning", access_log=False, **serve_options(),
        **limits.uvicorn_options()))
    if admin is None or admin_port is None:
        main.run()
        return
    side = uvicorn.Config(admin, host=ADMIN_HOST, port=admin_port, log_level="warning",
                          access_log=False, **limits.uvicorn_options())
    serve_together(main, [side])


def serve_options() -> dict[str, Any]:
    """How `serve` runs uvicorn, beside its HttpLimits (which choose the HTTP protocol: a
    worker process gets them apart, as they are no JSON). The service never reads client
    addresses, so it trusts no X-Forwarded-* header and skips uvicorn's middleware for them;
    no Server header tells scanners what runs here."""
    return {"loop": _best("uvloop", "auto"), "proxy_headers": False, "server_header": False}


def serve_together(main: Any, others: list[Any]) -> None:
    """Run the uvicorn server ``main`` and servers of the configs ``others`` on one event
    loop (``main``'s kind: uvloop for `serve`) until ``main`` stops; ``main`` handles the
    signals and stops the others."""
    import asyncio

    import uvicorn

    class Follower(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    followers = [Follower(config) for config in others]

    async def together() -> None:
        tasks = [asyncio.create_task(f.serve()) for f in followers]
        try:
            await main.serve()
        finally:
            for f in followers:
                f.should_exit = True
            await asyncio.gather(*tasks)

    with asyncio.Runner(loop_factory=main.config.get_loop_factory()) as runner:
        runner.run(together())


@app.command()
def proxy(
    upstream: Annotated[str, typer.Option(
        help="The inference server to forward to, e.g. http://127.0.0.1:8080.")],
    host: Annotated[str, typer.Option(help="Bind address.")] = HOST,
    port: Annotated[int, typer.Option(help="Port.")] = 8090,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Known model (repeat); default: listed by the upstream at start.")
    ] = None,
    default_model: Annotated[str | None, typer.Option(
        help="Model of the seed's POST /infer route (default: the first known model).")
    ] = None,
    timeout: Annotated[float, typer.Option(
        help="Longest wait for the upstream's next byte, in seconds; then 504.")] = 60.0,
    connect_timeout: Annotated[float, typer.Option(help="Upstream connect timeout, s.")
                               ] = 5.0,
    max_body_bytes: Annotated[int, typer.Option(
        help="Largest request body; beyond, 413. The default is above TorchServe's "
             "max_request_size (6,553,500).")] = 8 << 20,
    discover_wait: Annotated[float, typer.Option(
        help="Without --model: how long to wait for an unreachable upstream, in seconds.")
    ] = 60.0,
) -> None:
    """Forward to an inference server (TorchServe, OIP v2, OpenAI-style) and export metrics."""
    from inferwatch.proxy import DiscoveryError, ProxyConfig, ProxyServer, discover_models

    try:
        models = dict.fromkeys(model, "") if model else discover_models(upstream,
                                                                        wait=discover_wait)
        server = ProxyServer(ProxyConfig(
            upstream=upstream, host=host, port=port, models=models, default_model=default_model,
            timeout=timeout, connect_timeout=connect_timeout, max_body_bytes=max_body_bytes))
    except (ValueError, DiscoveryError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"proxy http://{host}:{port} -> {upstream}; models: {', '.join(models)}; "
                  f"metrics: http://{host}:{port}/metrics")
    try:
        server.run()
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc}") from None


def _serve_workers(config: Any, host: str, port: int, workers: int, worker_dir: Path | None,
                   admin_port: int | None, log_level: str, uvicorn_options: dict[str, Any],
                   limits: HttpLimits) -> int:
    from inferwatch.serve.workers import Supervisor

    if admin_port is not None:
        # Faults live in one process; injected into one worker they would hit 1/N of traffic.
        raise _fail("--admin-port works with --workers 1 only")
    supervisor = Supervisor(config, host=host, port=port, workers=workers,
                            directory=worker_dir, log_level=log_level,
                            uvicorn_options=uvicorn_options, http_limits=limits)
    try:
        return supervisor.run()
    except OSError as exc:
        raise _fail(f"cannot serve on {host}:{port}: {exc}") from None


def _best(module: str, fallback: str) -> Any:
    import importlib.util

    return module if importlib.util.find_spec(module) else fallback


@app.command()
def inbox(
    host: Annotated[str, typer.Option(help="Bind address.")] = HOST,
    port: Annotated[int, typer.Option(help="Port.")] = 9095,
    file: Annotated[Path, typer.Option(help="Where notifications are kept (JSON lines).")] =
        Path("inbox.jsonl"),
    max_header_bytes: MaxHeaderBytes = HttpLimits.max_header_bytes,
    header_timeout: HeaderTimeout = HttpLimits.header_timeout,
    keep_alive_timeout: KeepAliveTimeout = HttpLimits.keep_alive_timeout,
    max_connections: MaxConnections = HttpLimits.max_connections,
) -> None:
    """Receive Alertmanager webhook notifications, print and keep them."""
    import uvicorn

    from inferwatch.stack.inbox import create_inbox_app

    limits = _http_limits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    uvicorn.run(create_inbox_app(file), host=host, port=port, log_level="warning",
                access_log=False, **limits.uvicorn_options())


def _ports(auto: bool, **ports: int) -> StackPorts:
    return StackPorts.free() if auto else StackPorts(**ports)


@app.command()
def up(
    run_dir: RunDir = Path("run"),
    profile: Annotated[str, typer.Option(
        help="default: the seed's 10 s scrape/evaluation; fast: 1 s, short alert delays.")
    ] = "default",
    fast: Annotated[bool, typer.Option("--fast", help="Shorthand for --profile fast.")] = False,
    monitor: Monitor = None,
    proxy: ProxyBefore = False,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Model(s) to serve; with --monitor, the server's models (default: "
                        "the ones it lists).")] = None,
    slo: SloFile = None,
    resnet18_weights: Annotated[Path | None, typer.Option()] = None,
    traffic: Annotated[float | None, typer.Option(
        help="Demo requests per second to the built-in service (0: none; default 20, none "
             "with --monitor).")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d",
                                         help="Start and return; stop with `down`.")] = False,
    auto_ports: Annotated[bool, typer.Option("--auto-ports", help="Use free ports.")] = False,
    service_port: int = 8080,
    prometheus_port: int = 9090,
    alertmanager_port: int = 9093,
    node_exporter_port: int = 9100,
    inbox_port: int = 9095,
    dashboard_port: int = 9096,
    admin_port: Annotated[int, typer.Option(help="Fault-injection admin API (127.0.0.1).")
                          ] = 9097,
    workers: Annotated[int, typer.Option(
        min=1, help="Service worker processes (`serve --workers`); chaos needs 1.")] = 1,
    pushgateway_port: int = 9091,
    replicas: Annotated[int, typer.Option(
        min=1, help="Service replicas, discovered by Prometheus through file_sd; above 1, a "
                    "long-term store receives remote_write (see docs/deploy.md).")] = 1,
    store: Annotated[str | None, typer.Option(
        help="The remote_write store, with --replicas above 1: victoria-metrics (default) or "
             "prometheus.")] = None,
    store_retention: Annotated[str | None, typer.Option(
        help="How long the store keeps samples, e.g. 90d (default), 2w, 1y.")] = None,
    store_port: Annotated[int, typer.Option(help="The store, with --replicas above 1.")
                          ] = 9190,
    ha: Annotated[bool, typer.Option(
        "--ha", help="Two Prometheus servers (prometheus_replica a, b) writing to the store and "
                     "three Alertmanagers gossiping on 127.0.0.1 (see docs/deploy.md).")] = False,
    proxy_port: Annotated[int, typer.Option(help="The proxy, with --proxy.")] = 8090,
    bind: Annotated[str, typer.Option(
        help="Listen address of every component but the admin API (always 127.0.0.1). "
             "Beyond loopback, add --prometheus-auth and read docs/security.md.")] = HOST,
    prometheus_auth: Annotated[str | None, typer.Option(
        metavar="USER",
        help="Require HTTP basic auth on Prometheus for USER; the password from "
             "--prometheus-password-file or $INFERWATCH_PROMETHEUS_PASSWORD, else a random "
             "one written to RUN_DIR/prometheus-password (mode 0600).")] = None,
    prometheus_password_file: Annotated[Path | None, typer.Option(
        help="File (mode 0600) holding the Prometheus password, with --prometheus-auth.")
    ] = None,
    prometheus_lifecycle: Annotated[bool, typer.Option(
        "--prometheus-lifecycle",
        help="Enable Prometheus' /-/reload and /-/quit (off: anyone who reaches the port "
             "could stop monitoring); `kill -HUP` reloads without it.")] = False,
) -> None:
    """Start the service, Prometheus, Alertmanager, node_exporter, a Pushgateway, an alert
    inbox and the dashboard page; with --monitor, all but the service and its traffic, around
    a server you run (docs/proxy.md)."""
    from inferwatch.secrets import SecretFileError
    from inferwatch.stack.alerting import AlertingConfigError, receivers_from_env
    from inferwatch.stack.monitor import MonitorError
    from inferwatch.stack.profiles import ProfileError, profile_named
    from inferwatch.stack.runner import (
        Stack,
        StackError,
        StackOptions,
        exposure_warnings,
    )
    from inferwatch.stack.runner import prometheus_auth as stack_auth
    from inferwatch.stack.scaleout import STORES
    from inferwatch.stack.slo import SLOError
    from inferwatch.stack.webconfig import WebConfigError, given_password

    if prometheus_password_file is not None and prometheus_auth is None:
        raise _fail("--prometheus-password-file needs --prometheus-auth USER")
    if replicas == 1 and not ha and (store is not None or store_retention is not None):
        raise _fail("--store and --store-retention need --replicas above 1 or --ha")
    store_kind = next((s for s in STORES if s == (store or STORES[0])), None)
    if store_kind is None:
        raise _fail(f"--store must be one of {', '.join(STORES)}")
    try:
        servers, slos = _monitored(monitor, proxy, model, slo)
        opts = StackOptions(
            run_dir=run_dir.resolve(), profile=profile_named("fast" if fast else profile),
            ports=_ports(auto_ports, service=service_port, prometheus=prometheus_port,
                         alertmanager=alertmanager_port, node_exporter=node_exporter_port,
                         inbox=inbox_port, dashboard=dashboard_port, admin=admin_port,
                         pushgateway=pushgateway_port,
                         store=store_port, proxy=proxy_port),
            models=tuple(model or ["digits"]),
            traffic_rate=(0.0 if servers else 20.0) if traffic is None else traffic,
            resnet18_weights=resnet18_weights, receivers=receivers_from_env(),
            workers=workers, replicas=replicas, bind=bind, prometheus_user=prometheus_auth,
            prometheus_password=given_password(prometheus_password_file)
            if prometheus_auth else None, prometheus_lifecycle=prometheus_lifecycle,
            monitored=servers, slos=slos, store=store_kind,
            store_retention=store_retention or "90d", ha=ha,
        )
        for warning in exposure_warnings(opts):
            console.print(f"[bold yellow]warning:[/] {warning}")
        stack = Stack(opts)
        with console.status("starting the stack..."):
            stack.start()
    except (StackError, ProfileError, AlertingConfigError, WebConfigError, SecretFileError,
            MonitorError, SLOError) as exc:
        raise _fail(str(exc)) from None
    auth = stack_auth(opts)
    if auth is not None:
        console.print(f"Prometheus requires basic auth: user {auth.username}, password in "
                      f"{auth.password_file}")
    if detach:
        _print_stack(opts.run_dir)
        console.print(f"Detached. Stop with: inferwatch down --run-dir {run_dir}")
        return
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    from inferwatch.stack.inbox import InboxFollower

    inbox = InboxFollower(opts.run_dir / "inbox.jsonl")
    try:
        # Handle SIGINT ourselves too: a shell that starts us in the background ignores it,
        # and Python then installs no KeyboardInterrupt handler.
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        _print_stack(opts.run_dir)
        console.print("Alert notifications appear below. Ctrl-C stops everything.")
        while not stopping:
            _print_new_notifications(inbox)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass  # arrived before our handler was installed
    finally:
        with console.status("stopping..."):
            stack.stop()
        console.print("stopped.")


def _monitored(monitor: list[str] | None, proxy: bool, models: list[str] | None,
               slo: Path | None) -> tuple[list[Any], list[Any] | None]:
    """The servers of --monitor with their models, and SLOs for those models (None: the
    built-in SLO file's, for the built-in service)."""
    from inferwatch.stack.monitor import (
        coverage_notes,
        discover,
        monitored_slos,
        parse_monitors,
    )
    from inferwatch.stack.slo import load_slos

    if not monitor:
        if proxy:
            raise _fail("--proxy needs --monitor")
        return [], None if slo is None else load_slos(slo)
    servers = [discover(s, models or ()) for s in parse_monitors(monitor, proxy)]
    for note in coverage_notes(servers):
        console.print(f"[yellow]note:[/] {note}")
    slos = monitored_slos(servers, slo)
    for s in servers:
        console.print(f"monitoring {s.kind} at {s.api} (metrics: {s.metrics or 'the proxy'}); "
                      f"models: {', '.join(s.models)}")
    return servers, slos


def _print_new_notifications(inbox: InboxFollower) -> None:
    from rich.text import Text

    from inferwatch.stack.inbox import describe

    for record in inbox.new_records():
        stamp = time.strftime("%H:%M:%S", time.localtime(record["received_at"]))
        status = record["notification"].get("status")
        # A Text, not markup: label values are whatever was posted to the inbox.
        console.print(Text(f"{stamp} {describe(record['notification'])}",
                           style="red" if status == "firing" else "green"))


def _print_stack(run_dir: Path) -> None:
    from inferwatch.stack.runner import alive, read_state, read_state_info

    info = read_state_info(run_dir)
    table = Table(title=f"inferwatch stack ({info.get('profile', '?')} profile)")
    for column in ("component", "pid", "state", "url"):
        table.add_column(column, no_wrap=True)
    for p in read_state(run_dir):
        state = "[green]running[/]" if alive(p) else "[red]stopped[/]"
        table.add_row(p.name, str(p.pid), state, p.url or "")
    console.print(table)
    console.print(f"config, data and logs: {run_dir}")
    ports = info.get("ports")
    if ports:
        console.print(f"Prometheus UI: {_stack_url(info, 'prometheus')}/graph")
        inference = info.get("inference", "service")  # None: monitored servers only
        if inference:
            console.print(f"{inference} metrics: {_stack_url(info, inference)}/metrics")
        for server in info.get("monitored", []):
            console.print(f"monitored {server['kind']}: http://{server['api']}, metrics "
                          f"{server['metrics'] or 'from the proxy'}")
        console.print(f"Alertmanager UI: {_stack_url(info, 'alertmanager')}/#/alerts")
        if info.get("ha"):
            console.print(f"HA: second Prometheus {_stack_url(info, 'prometheus_b')}/graph; "
                          f"Alertmanagers {_stack_url(info, 'alertmanager_b')}, "
                          f"{_stack_url(info, 'alertmanager_c')}")
        if "pushgateway" in ports:
            console.print(f"Pushgateway (batch jobs): {_stack_url(info, 'pushgateway')}")
        store = info.get("store")
        if store:
            ui = "/vmui/" if store["kind"] == "victoria-metrics" else "/graph"
            console.print(f"store ({store['kind']}, remote_write receiver, retention "
                          f"{store['retention']}): {store['url']}{ui}; query it with "
                          "--store (doctor, diagnose) or --prometheus URL")
        if "dashboard" in ports:
            console.print(f"[bold]dashboard: {_stack_url(info, 'dashboard')}/[/]")


@app.command()
def down(run_dir: RunDir = Path("run")) -> None:
    """Stop a stack started with `up --detach`."""
    from inferwatch.stack.runner import read_state, stop_processes

    processes = read_state(run_dir)
    if not processes:
        raise _fail(f"no stack state in {run_dir}")
    stop_processes(processes)
    (run_dir / "state.json").unlink(missing_ok=True)
    console.print(f"stopped {len(processes)} processes.")


@app.command()
def status(run_dir: RunDir = Path("run")) -> None:
    """Show the processes of a running stack; exit 1 when one has stopped."""
    from inferwatch.stack.runner import alive, read_state

    processes = read_state(run_dir)
    if not processes:
        raise _fail(f"no stack state in {run_dir}")
    _print_stack(run_dir)
    if not all(alive(p) for p in processes):
        raise typer.Exit(1)


@app.command()
def load(
    url: Annotated[str, typer.Option(help="Base URL of the inference service.")] =
        f"http://{HOST}:8080",
    model: str = "digits",
    route: Annotated[str, typer.Option(help="predictions | v2 | infer")] = "predictions",
    rate: Annotated[float, typer.Option(help="Requests per second (open loop).")] = 50.0,
    count: Annotated[int | None, typer.Option(help="Stop after this many requests.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")
                        ] = None,
    prometheus: Annotated[str | None, typer.Option(
        help="Prometheus URL: compare its latency estimate with the client's.")] = None,
    scrape_interval: Annotated[float, typer.Option(help="Prometheus scrape interval, s.")
                               ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or table.")] = False,
    feedback: Annotated[bool, typer.Option(
        help="Send each held-out digit's true label to POST /feedback after its answer.")
    ] = False,
    prometheus_user: PrometheusUser = None,
    prometheus_password_file: PrometheusPasswordFile = None,
) -> None:
    """Send open-loop, constant-rate traffic; report client percentiles next to Prometheus'."""
    from inferwatch.operate.load import (
        LoadPlan,
        report,
        run_load_sync,
        run_with_progress,
    )
    from inferwatch.operate.promapi import PrometheusAPI

    if count is None and duration is None:
        count = 1000
    try:
        plan = LoadPlan(url=url, model=model, route=route, rate=rate,  # type: ignore[arg-type]
                        count=count, duration=duration, feedback=feedback)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if quiet:
        run_load_sync(plan)
        return
    prom = PrometheusAPI(prometheus, auth=_prometheus_credentials(
        prometheus_user, prometheus_password_file)) if prometheus else None
    before = _first_count(prom, model, scrape_interval) if prom else None
    result = run_with_progress(plan, console)
    figures = report(result, console, prom, model=model, scrape_interval=scrape_interval,
                     prom_count_before=before)
    if feedback:
        figures["feedback"] = result.feedback
        figures["feedback_accuracy"] = result.feedback_accuracy
        accuracy = result.feedback_accuracy
        console.print(f"feedback: {result.feedback}, accuracy "
                      f"{'-' if accuracy is None else f'{accuracy:.3f}'}")
    if as_json:
        print(json.dumps(figures, default=str))
    if result.ok == 0:
        raise typer.Exit(1)


def _first_count(prom: Any, model: str, scrape_interval: float) -> float | None:
    """The request count once Prometheus has scraped the service at least once."""
    from inferwatch.operate.load import prometheus_count
    from inferwatch.operate.promapi import PrometheusError

    deadline = time.monotonic() + 3 * scrape_interval + 5
    while time.monotonic() < deadline:
        try:
            count = prometheus_count(prom, model)
        except PrometheusError as exc:
            raise _fail(str(exc)) from None
        if count is not None:
            return count
        time.sleep(min(scrape_interval, 1.0))
    console.print("[yellow]Prometheus has no sample of the service yet; counts are approximate")
    return None


@app.command()
def dashboard(
    prometheus: Annotated[str, typer.Option(help="Prometheus URL the panels query.")] =
        f"http://{HOST}:9090",
    alertmanager: Annotated[str, typer.Option(
        help="Alertmanager URL for the active alerts; empty for none.")] = f"http://{HOST}:9093",
    host: Annotated[str, typer.Option(help="Bind address.")] = HOST,
    port: Annotated[int, typer.Option(help="Port.")] = 9096,
    profile: Annotated[str, typer.Option(help="Timing profile: sets the rate window.")] =
        "default",
    prometheus_user: PrometheusUser = None,
    prometheus_password_file: PrometheusPasswordFile = None,
    max_header_bytes: MaxHeaderBytes = HttpLimits.max_header_bytes,
    header_timeout: HeaderTimeout = HttpLimits.header_timeout,
    keep_alive_timeout: KeepAliveTimeout = HttpLimits.keep_alive_timeout,
    max_connections: MaxConnections = HttpLimits.max_connections,
) -> None:
    """Serve the built-in dashboard page: the Grafana dashboard's panels, without Grafana."""
    import uvicorn

    from inferwatch.stack.dashboard import DashboardConfig, create_dashboard_app
    from inferwatch.stack.profiles import ProfileError, profile_named

    try:
        config = DashboardConfig(
            prometheus=prometheus, alertmanager=alertmanager or None,
            profile=profile_named(profile),
            prometheus_auth=_prometheus_credentials(prometheus_user, prometheus_password_file))
    except ProfileError as exc:
        raise _fail(str(exc)) from None
    limits = _http_limits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    uvicorn.run(create_dashboard_app(config), host=host, port=port, log_level="warning",
                access_log=False, **limits.uvicorn_options())


render_app = typer.Typer(help="Write configuration: the local stack's (default), Docker "
                         "Compose's or Kubernetes'.")
app.add_typer(render_app, name="render")


@render_app.callback(invoke_without_command=True)
def render(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("generated"),
    profile: str = "default",
    slo: SloFile = None,
    scrape: Annotated[list[str] | None, typer.Option(
        "--scrape", help="Also scrape a known server's own metrics (repeat): torchserve, "
                         "triton, vllm or mlserver, optionally =HOST:PORT.")] = None,
    monitor: Monitor = None,
    proxy: Annotated[bool, typer.Option(
        "--proxy", help="With one --monitor: scrape `inferwatch proxy` before it, on port "
                        "8090, as the inference job.")] = False,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="With --monitor: the server's models (default: the ones it lists).")
    ] = None,
) -> None:
    """Write Prometheus config, rules, promtool rule tests, Alertmanager config and the
    Grafana dashboard with its provisioning files; with --monitor, for a server you run
    instead of `inferwatch serve` (as `up --monitor` does).

    Email and Slack receivers are configured from INFERWATCH_* environment variables
    (see docs/alerting.md); credentials stay in files that Alertmanager reads.
    `render compose` and `render k8s` write the deployments instead (docs/deploy.md).
    """
    if ctx.invoked_subcommand is not None:
        return
    from inferwatch.stack.alerting import AlertingConfigError, receivers_from_env
    from inferwatch.stack.config import Inference, write_stack_config
    from inferwatch.stack.grafana import write_grafana_files
    from inferwatch.stack.profiles import profile_named
    from inferwatch.stack.slo import SLOError, load_slos

    try:
        chosen = profile_named(profile)
        servers, slos = _monitored(monitor, proxy, model, slo)
        known: dict[str, str | None] = {s.kind: s.metrics for s in servers if s.metrics}
        known.update((name, target or None) for name, _, target in
                     (item.partition("=") for item in scrape or []))
        inference: Inference = "service" if not servers else "proxy" if any(
            s.proxied for s in servers) else None
        paths = write_stack_config(out, chosen, StackPorts(), receivers_from_env(),
                                   load_slos(slo) if slos is None else slos,
                                   known_servers=known, inference=inference)
        paths.update(write_grafana_files(out / "grafana", chosen))
    except (SLOError, AlertingConfigError, ValueError) as exc:  # ProfileError too
        raise _fail(str(exc)) from None
    _print_paths(paths)


def _print_paths(paths: dict[str, Path]) -> None:
    for name, path in paths.items():
        console.print(f"{name}: {path}")


def _profile_and_slos(profile: str, slo: Path | None) -> tuple[Any, Any]:
    from inferwatch.stack.profiles import ProfileError, profile_named
    from inferwatch.stack.slo import SLOError, load_slos

    try:
        return profile_named(profile), load_slos(slo)
    except (ProfileError, SLOError) as exc:
        raise _fail(str(exc)) from None


RunbookBaseUrl = Annotated[str | None, typer.Option(
    help="Absolute URL of docs/runbooks.md that each alert's runbook_url links to (default: "
         "from the repository URL in pyproject.toml, if it declares one).")]


@render_app.command("compose")
def render_compose(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("generated/compose"),
    profile: str = "default",
    slo: SloFile = None,
    context: Annotated[Path, typer.Option(
        help="Directory of inferwatch's Dockerfile (the repository's root).")] = Path("."),
    runbook_base_url: RunbookBaseUrl = None,
) -> None:
    """Write docker-compose.yml and the files it mounts: service, inbox, Prometheus,
    Alertmanager, node_exporter, Pushgateway, Grafana; profiles proxy, batch and gpu (DCGM);
    and docker-compose.prometheus3.yml, an override that runs Prometheus 3.

    Grafana's admin password comes from GF_SECURITY_ADMIN_PASSWORD, with no default.
    """
    from inferwatch.stack.compose import write_compose

    chosen, slos = _profile_and_slos(profile, slo)
    if not (context / "Dockerfile").is_file():
        raise _fail(f"no Dockerfile in {context}: pass the repository's root as --context")
    try:
        _print_paths(write_compose(out, chosen, slos, context, runbook_base_url))
    except ValueError as exc:
        raise _fail(str(exc)) from None


@render_app.command("k8s")
def render_k8s(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("generated/k8s"),
    profile: str = "default",
    slo: SloFile = None,
    namespace: Annotated[str, typer.Option(help="Namespace of the service.")] = "inferwatch",
    monitoring_namespace: Annotated[str, typer.Option(
        help="Namespace of kube-prometheus-stack (Grafana's ConfigMaps go there).")] =
        "monitoring",
    release: Annotated[str, typer.Option(
        help="kube-prometheus-stack's Helm release: the `release` label its Prometheus "
             "selects ServiceMonitors and PrometheusRules by.")] = "kube-prometheus-stack",
    image: Annotated[str, typer.Option(help="The inferwatch image.")] = "inferwatch:0.1.0",
    replicas: Annotated[int, typer.Option(min=1, help="Least replicas.")] = 2,
    max_replicas: Annotated[int, typer.Option(min=1, help="Most replicas.")] = 10,
    queue_target: Annotated[int, typer.Option(
        min=1, help="Average queued samples per pod the autoscaler aims at.")] = 8,
    model: Annotated[list[str] | None, typer.Option("--model", help="Model(s) to serve.")
                     ] = None,
    runbook_base_url: RunbookBaseUrl = None,
    sample_limit: Annotated[int, typer.Option(
        min=1, help="Most series one pod may expose: the ServiceMonitor's sampleLimit.")] = 2000,
    cluster: Annotated[str | None, typer.Option(
        help="The `cluster` external label of kube-prometheus-stack's Prometheus.")] = None,
    remote_write_url: Annotated[str | None, typer.Option(
        help="Where Prometheus sends its samples (default: nowhere).")] = None,
    remote_write_kind: Annotated[str, typer.Option(
        help="What receives them: thanos (Receive), mimir (needs --cluster) or "
             "victoriametrics.")] = "thanos",
) -> None:
    """Write a kustomize directory: Deployment, Service, ServiceMonitor, PrometheusRule,
    HorizontalPodAutoscaler on the queue depth, Grafana dashboard and datasource ConfigMaps;
    and the Helm values of prometheus-adapter and kube-prometheus-stack (HA, remote_write)."""
    from inferwatch.stack.kubernetes import KubernetesOptions, write_kubernetes

    chosen, slos = _profile_and_slos(profile, slo)
    if max_replicas < replicas:
        raise _fail("--max-replicas must be at least --replicas")
    options = KubernetesOptions(
        namespace=namespace, monitoring_namespace=monitoring_namespace, release=release,
        image=image, replicas=replicas, max_replicas=max_replicas, queue_target=queue_target,
        models=tuple(model or ["digits"]), runbook_base=runbook_base_url,
        sample_limit=sample_limit, cluster=cluster, remote_write_url=remote_write_url,
        remote_write_kind=remote_write_kind)
    try:
        _print_paths(write_kubernetes(out, chosen, options, slos))
    except ValueError as exc:
        raise _fail(str(exc)) from None


@app.command()
def batch(
    source: Annotated[str, typer.Option(
        "--input", help="'digits' (the held-out digits) or a directory of image files.")],
    job: Annotated[str, typer.Option(help="Job name: the `job` label of the pushed metrics.")
                   ] = "inferwatch-batch",
    instance: Annotated[str | None, typer.Option(
        help="The `instance` label of the pushed metrics (default: this host's name).")
    ] = None,
    pushgateway: Annotated[str, typer.Option(
        help="Pushgateway URL; empty to push nothing.")] = f"http://{HOST}:9091",
    model: Annotated[str, typer.Option(help="Model to run: digits, resnet18.")] = "digits",
    resnet18_weights: Annotated[Path | None, typer.Option()] = None,
    output: Annotated[Path | None, typer.Option(
        help="Write one JSON line per scored input here.")] = None,
    max_failure_ratio: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="The run fails when more inputs than this share fail.")] = 0.1,
) -> None:
    """Score a folder of images (or the held-out digits) once and push the job's metrics:
    duration, items, failures and, when it succeeds, the time of this success."""
    import socket

    from inferwatch.metrics.batch_job import BatchJobMetrics
    from inferwatch.models import load_model
    from inferwatch.serve.batch_job import read_inputs, run_batch

    started = time.perf_counter()
    try:
        inputs = read_inputs(source)
        served = load_model(model, resnet18_weights=resnet18_weights)
    except (ValueError, ImportError, OSError) as exc:
        raise _fail(str(exc)) from None
    metrics = BatchJobMetrics(served.card.name)
    result = run_batch(served, inputs, metrics)
    metrics.duration.set(time.perf_counter() - started)
    succeeded = result.succeeded(max_failure_ratio)
    if output:
        output.write_text("".join(json.dumps(p) + "\n" for p in result.predictions))
    accuracy = "" if result.accuracy is None else f", accuracy {result.accuracy:.4f}"
    console.print(f"{job}: {result.items} inputs, {result.failed} failed "
                  f"{result.failures or ''}{accuracy}: "
                  f"{'succeeded' if succeeded else 'FAILED'}")
    if pushgateway:
        try:
            metrics.push(pushgateway, job, instance or socket.gethostname(), succeeded)
        except OSError as exc:
            raise _fail(f"cannot push to {pushgateway}: {exc}") from None
        console.print(f"pushed to {pushgateway} (job={job})")
    if not succeeded:
        raise typer.Exit(1)


chaos_app = typer.Typer(help="Inject faults into a running service (admin API), and clear them.",
                        no_args_is_help=True)
app.add_typer(chaos_app, name="chaos")


def _chaos(run_dir: Path, admin_url: str | None, token_file: Path | None) -> Any:
    from inferwatch.operate.chaos import ChaosClient, ChaosError
    from inferwatch.secrets import SecretFileError, read_secret_file

    try:
        if admin_url:
            if token_file is None:
                raise ChaosError("--admin-url needs --token-file")
            return ChaosClient(admin_url, read_secret_file(token_file, "--token-file"))
        return ChaosClient.from_run_dir(run_dir)
    except (ChaosError, SecretFileError) as exc:
        raise _fail(str(exc)) from None


AdminUrl = Annotated[str | None, typer.Option(help="Admin API URL (default: from --run-dir).")]
TokenFile = Annotated[Path | None, typer.Option(help="Admin token file, with --admin-url.")]


def _show(call: Any) -> None:
    from inferwatch.operate.chaos import ChaosError

    try:
        console.print_json(data=call())
    except ChaosError as exc:
        raise _fail(str(exc)) from None


@chaos_app.command("errors")
def chaos_errors(ratio: Annotated[float, typer.Option(help="Share of requests to fail.")] = 1.0,
                 run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
                 token_file: TokenFile = None) -> None:
    """Fail this share of inference requests with 500 (reason `injected`)."""
    _show(lambda: _chaos(run_dir, admin_url, token_file).errors(ratio))


@chaos_app.command("latency")
def chaos_latency(
    stage: Annotated[str, typer.Option(help="queue | preprocess | compute | postprocess")] =
        "compute",
    seconds: Annotated[float, typer.Option(help="Added to the stage; 0 removes it.")] = 0.1,
    run_dir: RunDir = Path("run"), admin_url: AdminUrl = None, token_file: TokenFile = None,
) -> None:
    """Add latency to one stage of every request."""
    _show(lambda: _chaos(run_dir, admin_url, token_file).latency(stage, seconds))


@chaos_app.command("cpu")
def chaos_cpu(workers: Annotated[int, typer.Option(help="Busy processes.")] = 2,
              seconds: Annotated[float, typer.Option(help="They stop by themselves after.")
                                 ] = 60.0,
              run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
              token_file: TokenFile = None) -> None:
    """Hog the CPU with busy processes next to the service."""
    _show(lambda: _chaos(run_dir, admin_url, token_file).cpu(workers, seconds))


@chaos_app.command("drift")
def chaos_drift(
    kind: Annotated[str, typer.Option(help="noise | rotate | invert")] = "noise",
    strength: Annotated[float, typer.Option(
        help="Share of inputs rotated/inverted, or the noise level, in (0, 1].")] = 1.0,
    run_dir: RunDir = Path("run"), admin_url: AdminUrl = None, token_file: TokenFile = None,
) -> None:
    """Shift the inputs the model sees, as a changed client population would."""
    _show(lambda: _chaos(run_dir, admin_url, token_file).drift(kind, strength))


@chaos_app.command("kill")
def chaos_kill(run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
               token_file: TokenFile = None) -> None:
    """Kill the service process (SIGKILL), as a crash would."""
    _show(lambda: _chaos(run_dir, admin_url, token_file).kill())


@chaos_app.command("clear")
def chaos_clear(run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
                token_file: TokenFile = None) -> None:
    """Remove every injected fault."""
    _show(lambda: _chaos(run_dir, admin_url, token_file).clear())


@chaos_app.command("status")
def chaos_status(run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
                 token_file: TokenFile = None) -> None:
    """Show the faults in effect."""
    _show(lambda: _chaos(run_dir, admin_url, token_file).status())


@app.command()
def doctor(
    run_dir: RunDir = Path("run"),
    prometheus: Annotated[str | None, typer.Option(
        help="Prometheus URL (default: the stack of --run-dir).")] = None,
    alertmanager: Annotated[str | None, typer.Option(
        help="Alertmanager URL that Prometheus must send to.")] = None,
    grafana_provisioning: Annotated[Path | None, typer.Option(
        help="Grafana provisioning directory whose datasource URLs to check.")] = None,
    containers: Annotated[bool, typer.Option(
        help="The stack runs in containers (compose, Kubernetes): localhost URLs are wrong.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")
                       ] = False,
    prometheus_user: PrometheusUser = None,
    prometheus_password_file: PrometheusPasswordFile = None,
    store: StoreOption = False,
) -> None:
    """Check a running stack: Prometheus, targets, rules, Alertmanager, receivers, datasources,
    TSDB disk and clock; a store (--store, or a VictoriaMetrics URL): its writers, series, disk
    and clock. Exits 1 when something is wrong, with a fix for each problem."""
    from inferwatch.operate.doctor import Doctor, failed
    from inferwatch.operate.doctor import as_json as findings_json

    state = None
    if prometheus is None:
        state = _stack_state(run_dir)
        prometheus = _query_url(state, store)
        alertmanager = alertmanager or _stack_url(state, "alertmanager")
        if grafana_provisioning is None and (run_dir / "grafana" / "provisioning").is_dir():
            grafana_provisioning = run_dir / "grafana" / "provisioning"
    auth = _prometheus_credentials(prometheus_user, prometheus_password_file, state)
    findings = Doctor(prometheus, alertmanager, grafana_provisioning, containers,
                      auth=auth, store=store).run()
    if as_json:
        print(json.dumps(findings_json(findings)))
    else:
        table = Table(title="inferwatch doctor")
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column)
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for f in findings:
            table.add_row(f.check, f"[{colours[f.status]}]{f.status}[/]", f.detail, f.fix)
        console.print(table)
    if failed(findings):
        raise typer.Exit(1)


@app.command()
def diagnose(
    run_dir: RunDir = Path("run"),
    prometheus: Annotated[str | None, typer.Option(
        help="Prometheus URL (default: the stack of --run-dir).")] = None,
    model: Annotated[str | None, typer.Option(help="Model to diagnose (default: all).")
                     ] = None,
    since: Annotated[str, typer.Option(help="Look-back window, e.g. 2m, 15m, 1h.")] = "15m",
    symptom: Annotated[str | None, typer.Option(
        help="latency, errors or accuracy (default: the one that changed most).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diagnosis as JSON.")
                       ] = False,
    prometheus_user: PrometheusUser = None,
    prometheus_password_file: PrometheusPasswordFile = None,
    store: StoreOption = False,
) -> None:
    """Rank the likely causes of the current symptom (latency up, errors up, accuracy down)
    with the numbers, the queries and how far each signal led the symptom."""
    from inferwatch.operate.diagnose import Diagnoser
    from inferwatch.operate.diagnose import as_json as diagnosis_json
    from inferwatch.operate.promapi import PrometheusAPI, PrometheusError
    from inferwatch.stack.profiles import parse_duration

    if symptom not in (None, "latency", "errors", "accuracy"):
        raise _fail("--symptom must be latency, errors or accuracy")
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    state = None
    if prometheus is None:
        state = _stack_state(run_dir)
        prometheus = _query_url(state, store)
    prom = PrometheusAPI(prometheus, auth=_prometheus_credentials(
        prometheus_user, prometheus_password_file, state))
    try:
        result = Diagnoser(prom, model, seconds, symptom=symptom).run()
    except PrometheusError as exc:
        raise _fail(str(exc)) from None
    finally:
        prom.close()
    if as_json:
        print(json.dumps(diagnosis_json(result)))
        return
    s = result.symptom
    if s is None:
        console.print(f"no symptom over the last {since}: latency, errors and accuracy held "
                      "steady; causes below are ranked by their own change")
    else:
        at = time.strftime("%H:%M:%S", time.localtime(s.changed_at))
        console.print(f"symptom: [bold]{s.signal}[/] {s.before:.4g} -> {s.after:.4g} "
                      f"(shift {s.z:.1f} sd) from {at}")
    table = Table(title=f"inferwatch diagnose (step {result.step:g}s, rate window "
                        f"{result.rate_window})")
    for column in ("rank", "cause", "score", "lead", "evidence", "query"):
        table.add_column(column, overflow="fold")
    for rank, cause in enumerate(result.causes, 1):
        ev = cause.evidence[0]
        lead = "" if ev.lead_s is None else f"{ev.lead_s:+.0f}s"
        corr = "" if ev.correlation is None else f", r {ev.correlation:.2f}"
        numbers = f"{ev.signal}: {ev.before:.4g} -> {ev.after:.4g} (shift {ev.z:.1f} sd{corr})"
        if cause.detail:
            numbers += f"; {cause.detail}"
        table.add_row(str(rank), cause.name, f"{cause.score:.2f}", lead, numbers, ev.query)
    console.print(table)
    if result.skipped:
        console.print("no data for: " + ", ".join(result.skipped))


@app.command()
def version() -> None:
    """Print the version."""
    import inferwatch

    print(inferwatch.__version__)
