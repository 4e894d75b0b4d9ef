"""The servers: ``serve``, ``proxy``, ``inbox`` and ``dashboard``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from inferwatch.cli.options import (
    HeaderTimeout,
    KeepAliveTimeout,
    MaxConnections,
    MaxHeaderBytes,
    PrometheusPasswordFile,
    PrometheusUser,
    http_limits,
    prometheus_auth,
)
from inferwatch.cli.output import console, fail
from inferwatch.httplimits import HttpLimits
from inferwatch.stack.addresses import HOST

__all__ = ["dashboard", "inbox", "proxy", "serve"]


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
    from inferwatch.secrets import SecretFileError
    from inferwatch.serve.admin import admin_token, create_admin_app
    from inferwatch.serve.app import ServeConfig, create_app, prepare_serving_process
    from inferwatch.serve.server import run_service, serve_options

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(
        models=tuple(model or ["digits"]), resnet18_weights=resnet18_weights,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
        queue_capacity=queue_capacity, max_body_bytes=max_body_bytes, quality=quality,
        metrics=metrics, max_image_pixels=max_image_pixels,
    )
    limits = http_limits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    if workers > 1:
        from inferwatch.serve.workers import Supervisor

        if admin_port is not None:
            # Faults live in one process; injected into one worker they would hit 1/N of traffic.
            raise fail("--admin-port works with --workers 1 only")
        supervisor = Supervisor(config, host=host, port=port, workers=workers,
                                directory=worker_dir, log_level=log_level,
                                uvicorn_options=serve_options(), http_limits=limits)
        try:
            exit_code = supervisor.run()
        except OSError as exc:
            raise fail(f"cannot serve on {host}:{port}: {exc}") from None
        raise typer.Exit(exit_code)
    if worker_dir is not None:
        raise fail("--worker-dir needs --workers > 1")
    try:
        token = admin_token(admin_port, admin_token_file)
        asgi = create_app(config)
        admin = create_admin_app(asgi.state.service.faults, token) if token else None
    except (ValueError, ImportError, OSError, SecretFileError) as exc:
        raise fail(str(exc)) from None
    prepare_serving_process()
    run_service(asgi, host, port, limits, admin, admin_port)


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
    llm_metrics: Annotated[bool, typer.Option(
        help="Read OpenAI-style completions for tokens, time to first token, inter-token "
             "latency and finish reasons.")] = True,
) -> None:
    """Forward to an inference server (TorchServe, OIP v2, OpenAI-style) and export metrics."""
    from inferwatch.proxy import DiscoveryError, ProxyConfig, ProxyServer, discover_models

    try:
        models = dict.fromkeys(model, "") if model else discover_models(upstream,
                                                                        wait=discover_wait)
        server = ProxyServer(ProxyConfig(
            upstream=upstream, host=host, port=port, models=models, default_model=default_model,
            timeout=timeout, connect_timeout=connect_timeout, max_body_bytes=max_body_bytes,
            llm_metrics=llm_metrics))
    except (ValueError, DiscoveryError) as exc:
        raise fail(str(exc)) from None
    console.print(f"proxy http://{host}:{port} -> {upstream}; models: {', '.join(models)}; "
                  f"metrics: http://{host}:{port}/metrics")
    try:
        server.run()
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc}") from None


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

    from inferwatch.limitedhttp import uvicorn_options
    from inferwatch.stack.inbox import create_inbox_app

    limits = http_limits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    uvicorn.run(create_inbox_app(file), host=host, port=port, log_level="warning",
                access_log=False, **uvicorn_options(limits))


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

    from inferwatch.limitedhttp import uvicorn_options
    from inferwatch.stack.dashboard import DashboardConfig, create_dashboard_app
    from inferwatch.stack.profiles import ProfileError, profile_named

    try:
        config = DashboardConfig(
            prometheus=prometheus, alertmanager=alertmanager or None,
            profile=profile_named(profile),
            prometheus_auth=prometheus_auth(prometheus_user, prometheus_password_file))
    except ProfileError as exc:
        raise fail(str(exc)) from None
    limits = http_limits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    uvicorn.run(create_dashboard_app(config), host=host, port=port, log_level="warning",
                access_log=False, **uvicorn_options(limits))
