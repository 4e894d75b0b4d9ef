"""``chaos``: inject faults into a running service through its admin API, and clear them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inferwatch.cli.options import RunDir
from inferwatch.cli.output import console, fail

if TYPE_CHECKING:
    from inferwatch.operate.chaos import ChaosClient

__all__ = ["chaos_app"]

chaos_app = typer.Typer(help="Inject faults into a running service (admin API), and clear them.",
                        no_args_is_help=True)


AdminUrl = Annotated[str | None, typer.Option(help="Admin API URL (default: from --run-dir).")]
TokenFile = Annotated[Path | None, typer.Option(help="Admin token file, with --admin-url.")]


def _show(call: Callable[[ChaosClient], dict[str, Any]], run_dir: Path, admin_url: str | None,
          token_file: Path | None) -> None:
    """Print the admin API's answer to ``call``."""
    from inferwatch.operate.chaos import ChaosClient, ChaosError

    try:
        with ChaosClient.connect(run_dir, admin_url, token_file) as chaos:
            console.print_json(data=call(chaos))
    except ChaosError as exc:
        raise fail(str(exc)) from None


@chaos_app.command("errors")
def chaos_errors(ratio: Annotated[float, typer.Option(help="Share of requests to fail.")] = 1.0,
                 run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
                 token_file: TokenFile = None) -> None:
    """Fail this share of inference requests with 500 (reason `injected`)."""
    _show(lambda chaos: chaos.errors(ratio), run_dir, admin_url, token_file)


@chaos_app.command("latency")
def chaos_latency(
    stage: Annotated[str, typer.Option(help="queue | preprocess | compute | postprocess")] =
        "compute",
    seconds: Annotated[float, typer.Option(help="Added to the stage; 0 removes it.")] = 0.1,
    run_dir: RunDir = Path("run"), admin_url: AdminUrl = None, token_file: TokenFile = None,
) -> None:
    """Add latency to one stage of every request."""
    _show(lambda chaos: chaos.latency(stage, seconds), run_dir, admin_url, token_file)


@chaos_app.command("cpu")
def chaos_cpu(workers: Annotated[int, typer.Option(help="Busy processes.")] = 2,
              seconds: Annotated[float, typer.Option(help="They stop by themselves after.")
                                 ] = 60.0,
              run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
              token_file: TokenFile = None) -> None:
    """Hog the CPU with busy processes next to the service."""
    _show(lambda chaos: chaos.cpu(workers, seconds), run_dir, admin_url, token_file)


@chaos_app.command("drift")
def chaos_drift(
    kind: Annotated[str, typer.Option(help="noise | rotate | invert")] = "noise",
    strength: Annotated[float, typer.Option(
        help="Share of inputs rotated/inverted, or the noise level, in (0, 1].")] = 1.0,
    run_dir: RunDir = Path("run"), admin_url: AdminUrl = None, token_file: TokenFile = None,
) -> None:
    """Shift the inputs the model sees, as a changed client population would."""
    _show(lambda chaos: chaos.drift(kind, strength), run_dir, admin_url, token_file)


@chaos_app.command("kill")
def chaos_kill(run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
               token_file: TokenFile = None) -> None:
    """Kill the service process (SIGKILL), as a crash would."""
    _show(lambda chaos: chaos.kill(), run_dir, admin_url, token_file)


@chaos_app.command("clear")
def chaos_clear(run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
                token_file: TokenFile = None) -> None:
    """Remove every injected fault."""
    _show(lambda chaos: chaos.clear(), run_dir, admin_url, token_file)


@chaos_app.command("status")
def chaos_status(run_dir: RunDir = Path("run"), admin_url: AdminUrl = None,
                 token_file: TokenFile = None) -> None:
    """Show the faults in effect."""
    _show(lambda chaos: chaos.status(), run_dir, admin_url, token_file)
