"""The local stack: ``up``, ``down`` and ``status``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferwatch.cli.options import Monitor, ProxyBefore, RunDir, SloFile
from inferwatch.cli.output import console, fail
from inferwatch.stack.addresses import HOST, StackPorts

__all__ = ["down", "status", "up"]


def _ports(auto: bool, **ports: int) -> StackPorts:
    return StackPorts.free() if auto else StackPorts(**ports)


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
    from inferwatch.stack.inbox import InboxPrinter
    from inferwatch.stack.monitor import MonitorError, monitored_servers
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
    from inferwatch.stack.status import print_stack
    from inferwatch.stack.webconfig import WebConfigError, given_password

    if prometheus_password_file is not None and prometheus_auth is None:
        raise fail("--prometheus-password-file needs --prometheus-auth USER")
    if replicas == 1 and not ha and (store is not None or store_retention is not None):
        raise fail("--store and --store-retention need --replicas above 1 or --ha")
    store_kind = next((s for s in STORES if s == (store or STORES[0])), None)
    if store_kind is None:
        raise fail(f"--store must be one of {', '.join(STORES)}")
    try:
        servers, slos = monitored_servers(monitor, proxy, model or (), slo, console)
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
        raise fail(str(exc)) from None
    auth = stack_auth(opts)
    if auth is not None:
        console.print(f"Prometheus requires basic auth: user {auth.username}, password in "
                      f"{auth.password_file}")
    if detach:
        print_stack(console, opts.run_dir)
        console.print(f"Detached. Stop with: inferwatch down --run-dir {run_dir}")
        return
    printer = InboxPrinter(opts.run_dir / "inbox.jsonl", console)
    try:
        printer.handle_signals()
        print_stack(console, opts.run_dir)
        console.print("Alert notifications appear below. Ctrl-C stops everything.")
        printer.run()
    except KeyboardInterrupt:
        pass  # arrived before our handler was installed
    finally:
        with console.status("stopping..."):
            stack.stop()
        console.print("stopped.")


def down(run_dir: RunDir = Path("run")) -> None:
    """Stop a stack started with `up --detach`."""
    from inferwatch.stack.runner import read_state, stop_processes

    processes = read_state(run_dir)
    if not processes:
        raise fail(f"no stack state in {run_dir}")
    stop_processes(processes)
    (run_dir / "state.json").unlink(missing_ok=True)
    console.print(f"stopped {len(processes)} processes.")


def status(run_dir: RunDir = Path("run")) -> None:
    """Show the processes of a running stack; exit 1 when one has stopped."""
    from inferwatch.stack.runner import alive, read_state
    from inferwatch.stack.status import print_stack

    processes = read_state(run_dir)
    if not processes:
        raise fail(f"no stack state in {run_dir}")
    print_stack(console, run_dir)
    if not all(alive(p) for p in processes):
        raise typer.Exit(1)
