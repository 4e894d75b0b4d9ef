"""The ``inferwatch`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from inferwatch.stack.config import HOST, StackPorts

app = typer.Typer(help="Monitor real-time AI inference services with Prometheus.",
                  no_args_is_help=True, add_completion=False)
console = Console()

RunDir = Annotated[Path, typer.Option("--run-dir", help="Directory for config, data and logs.")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


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
    admin_port: Annotated[int | None, typer.Option(
        help="Enable the fault-injection admin API on 127.0.0.1:PORT (needs a token).")
    ] = None,
    admin_token_file: Annotated[Path | None, typer.Option(
        help="File (mode 0600) holding the admin bearer token; or set INFERWATCH_ADMIN_TOKEN.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Run the inference service (TorchServe and Open Inference Protocol v2 routes)."""
    import asyncio
    import os

    import uvicorn

    from inferwatch.secrets import SecretFileError, read_secret_file
    from inferwatch.serve.admin import ADMIN_HOST, create_admin_app
    from inferwatch.serve.app import ServeConfig, create_app

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(
        models=tuple(model or ["digits"]), resnet18_weights=resnet18_weights,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
        queue_capacity=queue_capacity, max_body_bytes=max_body_bytes,
    )
    try:
        token = (read_secret_file(admin_token_file, "--admin-token-file") if admin_token_file
                 else os.environ.get("INFERWATCH_ADMIN_TOKEN"))
        if admin_port is not None and not token:
            raise ValueError("--admin-port needs --admin-token-file or INFERWATCH_ADMIN_TOKEN")
        asgi = create_app(config)
        admin = create_admin_app(asgi.service.faults, token) if admin_port and token else None
    except (ValueError, ImportError, OSError, SecretFileError) as exc:
        raise _fail(str(exc)) from None
    main = uvicorn.Server(uvicorn.Config(
        asgi, host=host, port=port, log_level="warning", access_log=False,
        loop=_best("uvloop", "auto"), http=_best("httptools", "auto")))
    if admin is None or admin_port is None:
        main.run()
        return

    class AdminServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the main server handles signals and stops this one

    side = AdminServer(uvicorn.Config(admin, host=ADMIN_HOST, port=admin_port,
                                      log_level="warning", access_log=False))

    async def both() -> None:
        task = asyncio.create_task(side.serve())
        try:
            await main.serve()
        finally:
            side.should_exit = True
            await task

    asyncio.run(both())


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
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body; beyond, 413.")
                              ] = 4 << 20,
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


def _best(module: str, fallback: str) -> Any:
    import importlib.util

    return module if importlib.util.find_spec(module) else fallback


@app.command()
def inbox(
    host: Annotated[str, typer.Option(help="Bind address.")] = HOST,
    port: Annotated[int, typer.Option(help="Port.")] = 9095,
    file: Annotated[Path, typer.Option(help="Where notifications are kept (JSON lines).")] =
        Path("inbox.jsonl"),
) -> None:
    """Receive Alertmanager webhook notifications, print and keep them."""
    import uvicorn

    from inferwatch.stack.inbox import create_inbox_app

    uvicorn.run(create_inbox_app(file), host=host, port=port, log_level="warning",
                access_log=False)


def _ports(auto: bool, **ports: int) -> StackPorts:
    return StackPorts.free() if auto else StackPorts(**ports)


@app.command()
def up(
    run_dir: RunDir = Path("run"),
    profile: Annotated[str, typer.Option(
        help="default: the seed's 10 s scrape/evaluation; fast: 1 s, short alert delays.")
    ] = "default",
    fast: Annotated[bool, typer.Option("--fast", help="Shorthand for --profile fast.")] = False,
    model: Annotated[list[str] | None, typer.Option("--model", help="Model(s) to serve.")
                     ] = None,
    resnet18_weights: Annotated[Path | None, typer.Option()] = None,
    traffic: Annotated[float, typer.Option(help="Demo requests per second (0: none).")] = 20.0,
    detach: Annotated[bool, typer.Option("--detach", "-d",
                                         help="Start and return; stop with `down`.")] = False,
    auto_ports: Annotated[bool, typer.Option("--auto-ports", help="Use free ports.")] = False,
    service_port: int = 8080,
    prometheus_port: int = 9090,
    alertmanager_port: int = 9093,
    node_exporter_port: int = 9100,
    inbox_port: int = 9095,
    admin_port: Annotated[int, typer.Option(help="Fault-injection admin API (127.0.0.1).")
                          ] = 9097,
) -> None:
    """Start the service, Prometheus, Alertmanager, node_exporter and an alert inbox."""
    from inferwatch.stack.alerting import AlertingConfigError, receivers_from_env
    from inferwatch.stack.runner import Stack, StackError, StackOptions, profile_named

    try:
        opts = StackOptions(
            run_dir=run_dir.resolve(), profile=profile_named("fast" if fast else profile),
            ports=_ports(auto_ports, service=service_port, prometheus=prometheus_port,
                         alertmanager=alertmanager_port, node_exporter=node_exporter_port,
                         inbox=inbox_port, admin=admin_port),
            models=tuple(model or ["digits"]), traffic_rate=traffic,
            resnet18_weights=resnet18_weights, receivers=receivers_from_env(),
        )
        stack = Stack(opts)
        with console.status("starting the stack..."):
            stack.start()
    except (StackError, AlertingConfigError) as exc:
        raise _fail(str(exc)) from None
    _print_stack(opts.run_dir)
    if detach:
        console.print(f"Detached. Stop with: inferwatch down --run-dir {run_dir}")
        return
    console.print("Alert notifications appear below. Ctrl-C stops everything.")
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    seen = 0
    try:
        while not stopping:
            seen = _print_new_notifications(opts.run_dir / "inbox.jsonl", seen)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping..."):
            stack.stop()
        console.print("stopped.")


def _print_new_notifications(path: Path, seen: int) -> int:
    from inferwatch.stack.inbox import describe, read_inbox

    records = read_inbox(path)
    for record in records[seen:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(record["received_at"]))
        status = record["notification"].get("status")
        colour = "red" if status == "firing" else "green"
        console.print(f"[{colour}]{stamp} {describe(record['notification'])}[/]")
    return len(records)


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
        console.print(f"Prometheus UI: http://{HOST}:{ports['prometheus']}/graph\n"
                      f"service metrics: http://{HOST}:{ports['service']}/metrics\n"
                      f"Alertmanager UI: http://{HOST}:{ports['alertmanager']}/#/alerts")


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
                        count=count, duration=duration)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if quiet:
        run_load_sync(plan)
        return
    prom = PrometheusAPI(prometheus) if prometheus else None
    before = _first_count(prom, model, scrape_interval) if prom else None
    result = run_with_progress(plan, console)
    figures = report(result, console, prom, model=model, scrape_interval=scrape_interval,
                     prom_count_before=before)
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
def render(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("generated"),
    profile: str = "default",
    slo: Annotated[Path | None, typer.Option(help="SLO file (default: the built-in one).")
                   ] = None,
    scrape: Annotated[list[str] | None, typer.Option(
        "--scrape", help="Also scrape a known server's own metrics (repeat): torchserve, "
                         "triton, vllm or mlserver, optionally =HOST:PORT.")] = None,
) -> None:
    """Write Prometheus config, rules, promtool rule tests and Alertmanager config.

    Email and Slack receivers are configured from INFERWATCH_* environment variables
    (see docs/alerting.md); credentials stay in files that Alertmanager reads.
    """
    from inferwatch.stack.alerting import AlertingConfigError, receivers_from_env
    from inferwatch.stack.config import write_stack_config
    from inferwatch.stack.runner import StackError, profile_named
    from inferwatch.stack.slo import SLOError, load_slos

    try:
        known = {name: target or None for name, _, target in
                 (item.partition("=") for item in scrape or [])}
        paths = write_stack_config(out, profile_named(profile), StackPorts(),
                                   receivers_from_env(), load_slos(slo), known)
    except (StackError, SLOError, AlertingConfigError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for name, path in paths.items():
        console.print(f"{name}: {path}")


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
def version() -> None:
    """Print the version."""
    import inferwatch

    print(inferwatch.__version__)
