"""Where commands print, and how one fails."""

from __future__ import annotations

import typer
from rich.console import Console

__all__ = ["console", "fail"]

console = Console()


def fail(message: str) -> typer.Exit:
    """The exit, status 2, of a command that cannot do what it was asked; ``message`` says why."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)
