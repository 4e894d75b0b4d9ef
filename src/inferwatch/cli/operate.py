"""Commands that work with a running service or stack: ``load``, ``batch``, ``doctor`` and
``diagnose``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inferwatch.cli.options import (
    PrometheusPasswordFile,
    PrometheusUser,
    RunDir,
    prometheus_auth,
)
from inferwatch.cli.output import console, fail
from inferwatch.stack.addresses import HOST

if TYPE_CHECKING:
    from inferwatch.stack.state import StackState

__all__ = ["batch", "diagnose", "doctor", "load"]

StoreOption = Annotated[bool, typer.Option(
    "--store", help="Query the stack's remote_write store (up --replicas above 1) instead "
                    "of its Prometheus; with --prometheus: that URL is a store.")]


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
        first_prometheus_count,
        report,
        run_load_sync,
        run_with_progress,
    )
    from inferwatch.operate.promapi import PrometheusAPI, PrometheusError

    if count is None and duration is None:
        count = 1000
    try:
        plan = LoadPlan(url=url, model=model, route=route, rate=rate,  # type: ignore[arg-type]
                        count=count, duration=duration, feedback=feedback)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if quiet:
        run_load_sync(plan)
        return
    prom = PrometheusAPI(prometheus, auth=prometheus_auth(
        prometheus_user, prometheus_password_file)) if prometheus else None
    before = None
    if prom is not None:
        try:
            before = first_prometheus_count(prom, model, scrape_interval)
        except PrometheusError as exc:
            raise fail(str(exc)) from None
        if before is None:
            console.print("[yellow]Prometheus has no sample of the service yet; counts are "
                          "approximate")
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
        raise fail(str(exc)) from None
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
            raise fail(f"cannot push to {pushgateway}: {exc}") from None
        console.print(f"pushed to {pushgateway} (job={job})")
    if not succeeded:
        raise typer.Exit(1)


def _stack_prometheus(run_dir: Path, store: bool) -> tuple[StackState, str]:
    """The state of the stack in ``run_dir`` and the URL to query: its Prometheus, or with
    ``store`` its store."""
    from inferwatch.stack.state import StackStateError, query_url, running_stack

    try:
        state = running_stack(run_dir)
        return state, query_url(state, store)
    except StackStateError as exc:
        raise fail(str(exc)) from None


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
    from inferwatch.operate.doctor import Doctor, failed, render
    from inferwatch.operate.doctor import as_json as findings_json
    from inferwatch.stack.state import component_url

    state = None
    if prometheus is None:
        state, prometheus = _stack_prometheus(run_dir, store)
        alertmanager = alertmanager or component_url(state, "alertmanager")
        if grafana_provisioning is None and (run_dir / "grafana" / "provisioning").is_dir():
            grafana_provisioning = run_dir / "grafana" / "provisioning"
    auth = prometheus_auth(prometheus_user, prometheus_password_file, state)
    findings = Doctor(prometheus, alertmanager, grafana_provisioning, containers,
                      auth=auth, store=store).run()
    if as_json:
        print(json.dumps(findings_json(findings)))
    else:
        render(findings, console)
    if failed(findings):
        raise typer.Exit(1)


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
    from inferwatch.operate.diagnose import Diagnoser, render
    from inferwatch.operate.diagnose import as_json as diagnosis_json
    from inferwatch.operate.promapi import PrometheusAPI, PrometheusError
    from inferwatch.stack.profiles import parse_duration

    if symptom not in (None, "latency", "errors", "accuracy"):
        raise fail("--symptom must be latency, errors or accuracy")
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise fail(str(exc)) from None
    state = None
    if prometheus is None:
        state, prometheus = _stack_prometheus(run_dir, store)
    prom = PrometheusAPI(prometheus, auth=prometheus_auth(
        prometheus_user, prometheus_password_file, state))
    try:
        result = Diagnoser(prom, model, seconds, symptom=symptom).run()
    except PrometheusError as exc:
        raise fail(str(exc)) from None
    finally:
        prom.close()
    if as_json:
        print(json.dumps(diagnosis_json(result)))
        return
    render(result, console, since)
