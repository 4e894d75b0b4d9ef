"""The optional parts of inferwatch: ``pip install inferwatch`` is the instrumentation library
(``inferwatch.metrics``); each command's dependencies come with an extra."""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["MissingExtra", "require"]


class MissingExtra(ModuleNotFoundError):
    """A module an extra installs is missing; the message names the ``pip install``."""


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
        raise MissingExtra(f"{', '.join(missing)} is missing: pip install 'inferwatch[{extra}]'",
                           name=missing[0])
