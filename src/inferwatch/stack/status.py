"""What ``up`` and ``status`` print of a running stack: its processes and where to reach them."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from inferwatch.stack.runner import alive, read_state
from inferwatch.stack.state import component_url, read_stack_state

__all__ = ["print_stack"]


def print_stack(console: Console, run_dir: Path) -> None:
    info = read_stack_state(run_dir)
    table = Table(title=f"inferwatch stack ({info.get('profile', '?')} profile)")
    for column in ("component", "pid", "state", "url"):
        table.add_column(column, no_wrap=True)
    for p in read_state(run_dir):
        state = "[green]running[/]" if alive(p) else "[red]stopped[/]"
        table.add_row(p.name, str(p.pid), state, p.url or "")
    console.print(table)
    console.print(f"config, data and logs: {run_dir}")
    ports = info.get("ports")
    if not ports:
        return
    console.print(f"Prometheus UI: {component_url(info, 'prometheus')}/graph")
    inference = info.get("inference", "service")  # None: monitored servers only
    if inference:
        console.print(f"{inference} metrics: {component_url(info, inference)}/metrics")
    for server in info.get("monitored", []):
        console.print(f"monitored {server['kind']}: http://{server['api']}, metrics "
                      f"{server['metrics'] or 'from the proxy'}")
    console.print(f"Alertmanager UI: {component_url(info, 'alertmanager')}/#/alerts")
    if info.get("ha"):
        console.print(f"HA: second Prometheus {component_url(info, 'prometheus_b')}/graph; "
                      f"Alertmanagers {component_url(info, 'alertmanager_b')}, "
                      f"{component_url(info, 'alertmanager_c')}")
    if "pushgateway" in ports:
        console.print(f"Pushgateway (batch jobs): {component_url(info, 'pushgateway')}")
    store = info.get("store")
    if store:
        ui = "/vmui/" if store["kind"] == "victoria-metrics" else "/graph"
        console.print(f"store ({store['kind']}, remote_write receiver, retention "
                      f"{store['retention']}): {store['url']}{ui}; query it with "
                      "--store (doctor, diagnose) or --prometheus URL")
    if "dashboard" in ports:
        console.print(f"[bold]dashboard: {component_url(info, 'dashboard')}/[/]")
