"""``render``: the configuration of the local stack, of Docker Compose or of Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inferwatch.cli.options import Monitor, SloFile
from inferwatch.cli.output import console, fail
from inferwatch.stack.addresses import StackPorts

if TYPE_CHECKING:
    from inferwatch.stack.profiles import Profile
    from inferwatch.stack.slo import SLO

__all__ = ["render_app"]

render_app = typer.Typer(help="Write configuration: the local stack's (default), Docker "
                         "Compose's or Kubernetes'.")


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
    from inferwatch.stack.monitor import monitored_servers
    from inferwatch.stack.profiles import profile_named
    from inferwatch.stack.slo import SLOError, load_slos

    try:
        chosen = profile_named(profile)
        servers, slos = monitored_servers(monitor, proxy, model or (), slo, console)
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
        raise fail(str(exc)) from None
    _print_paths(paths)


def _print_paths(paths: dict[str, Path]) -> None:
    for name, path in paths.items():
        console.print(f"{name}: {path}")


def _profile_and_slos(profile: str, slo: Path | None) -> tuple[Profile, list[SLO]]:
    from inferwatch.stack.profiles import ProfileError, profile_named
    from inferwatch.stack.slo import SLOError, load_slos

    try:
        return profile_named(profile), load_slos(slo)
    except (ProfileError, SLOError) as exc:
        raise fail(str(exc)) from None


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
        raise fail(f"no Dockerfile in {context}: pass the repository's root as --context")
    try:
        _print_paths(write_compose(out, chosen, slos, context, runbook_base_url))
    except ValueError as exc:
        raise fail(str(exc)) from None


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
        raise fail("--max-replicas must be at least --replicas")
    options = KubernetesOptions(
        namespace=namespace, monitoring_namespace=monitoring_namespace, release=release,
        image=image, replicas=replicas, max_replicas=max_replicas, queue_target=queue_target,
        models=tuple(model or ["digits"]), runbook_base=runbook_base_url,
        sample_limit=sample_limit, cluster=cluster, remote_write_url=remote_write_url,
        remote_write_kind=remote_write_kind)
    try:
        _print_paths(write_kubernetes(out, chosen, options, slos))
    except ValueError as exc:
        raise fail(str(exc)) from None
