"""The ``inferwatch`` command line: options and wiring; each command calls the module that does
the work, imported when the command runs, so that ``--help`` loads none of them."""

from __future__ import annotations

import typer

from inferwatch.cli.chaos import chaos_app
from inferwatch.cli.operate import batch, diagnose, doctor, load
from inferwatch.cli.render import render_app
from inferwatch.cli.servers import dashboard, inbox, proxy, serve
from inferwatch.cli.stack import down, status, up

__all__ = ["app"]

app = typer.Typer(help="Monitor real-time AI inference services with Prometheus.",
                  no_args_is_help=True, add_completion=False)


def version() -> None:
    """Print the version."""
    import inferwatch

    print(inferwatch.__version__)


# Registered in the order `inferwatch --help` lists them.
app.command()(serve)
app.command()(proxy)
app.command()(inbox)
app.command()(up)
app.command()(down)
app.command()(status)
app.command()(load)
app.command()(dashboard)
app.add_typer(render_app, name="render")
app.command()(batch)
app.add_typer(chaos_app, name="chaos")
app.command()(doctor)
app.command()(diagnose)
app.command()(version)
