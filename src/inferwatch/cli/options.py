"""Options that several commands take, and what they turn into."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inferwatch.cli.output import fail
from inferwatch.httplimits import HttpLimits

if TYPE_CHECKING:
    from inferwatch.stack.state import StackState

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


def http_limits(max_header_bytes: int, header_timeout: float, keep_alive_timeout: float,
                max_connections: int) -> HttpLimits:
    try:
        return HttpLimits(max_header_bytes, header_timeout, keep_alive_timeout, max_connections)
    except ValueError as exc:
        raise fail(str(exc)) from None


def prometheus_auth(user: str | None, password_file: Path | None,
                    state: StackState | None = None) -> tuple[str, str] | None:
    """Credentials for Prometheus: from the options, else from a stack's ``state``."""
    from inferwatch.secrets import SecretFileError
    from inferwatch.stack.state import saved_prometheus_auth
    from inferwatch.stack.webconfig import WebConfigError, prometheus_credentials

    saved = None if state is None else saved_prometheus_auth(state)
    try:
        return prometheus_credentials(user, password_file, saved)
    except (SecretFileError, WebConfigError) as exc:
        raise fail(str(exc)) from None
