"""The optional parts of inferwatch: ``pip install inferwatch`` is the instrumentation library
(``inferwatch.metrics``); each command's dependencies come with an extra."""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["EXTRA_OF", "MissingExtra", "install_hint", "require"]

# The smallest extra that installs each module the commands import.
EXTRA_OF = {
    "typer": "proxy", "rich": "proxy", "uvicorn": "proxy", "httptools": "proxy",
    "httpx": "proxy",
    "sklearn": "serve", "PIL": "serve", "threadpoolctl": "serve",
    "yaml": "stack", "bcrypt": "stack", "grafana_foundation_sdk": "stack",
    "aiohttp": "load",
}


class MissingExtra(ModuleNotFoundError):
    """A module an extra installs is missing; the message names the ``pip install``."""


def install_hint(module: str, extra: str | None = None) -> str:
    """
    >>> install_hint("yaml")
    "yaml is missing: pip install 'inferwatch[stack]'"
    """
    extra = extra or EXTRA_OF.get(module.partition(".")[0], "demo")
    return f"{module} is missing: pip install 'inferwatch[{extra}]'"


def require(extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` unless every one of ``modules`` can be imported.

    >>> require("serve", "json")
    >>> require("serve", "no_such_module")
    Traceback (most recent call last):
    ...
    inferwatch.extras.MissingExtra: no_such_module is missing: pip install 'inferwatch[serve]'
    """
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise MissingExtra(install_hint(", ".join(missing), extra), name=missing[0])
