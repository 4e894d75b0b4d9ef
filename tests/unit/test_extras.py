"""`pip install inferwatch` is the instrumentation library; each command's extra says its name
when it is missing."""

import doctest
import subprocess
import sys

import pytest

from inferwatch import extras

# What the extras install; the core (prometheus-client, numpy, starlette) must not need them.
EXTRA_MODULES = ("sklearn", "scipy", "PIL", "aiohttp", "uvicorn", "httpx", "httptools",
                 "typer", "rich", "yaml", "bcrypt", "grafana_foundation_sdk")


def test_the_doctests_pass() -> None:
    assert doctest.testmod(extras).failed == 0


def test_the_instrumentation_library_imports_no_extra() -> None:
    code = ("import sys, inferwatch.metrics, inferwatch.metrics.middleware; "
            f"print([m for m in {EXTRA_MODULES!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]", run.stdout


def inferwatch_without(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    # sys.modules[name] = None is how a module looks when it is not installed.
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = {['inferwatch', *argv]!r}; "
            "from inferwatch.__main__ import main; main()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize(("module", "argv", "extra"), [
    ("sklearn", ["batch", "--input", "/dev/null"], "serve"),
    ("yaml", ["render", "--out", "/nonexistent/inferwatch-render"], "stack"),
    ("typer", ["--help"], "proxy"),
])
def test_a_command_without_its_extra_names_the_pip_install(
        module: str, argv: list[str], extra: str) -> None:
    run = inferwatch_without(module, *argv)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{module} is missing: pip install 'inferwatch[{extra}]'" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def test_the_proxy_command_needs_only_the_proxy_extra() -> None:
    run = inferwatch_without("yaml", "proxy", "--help")
    assert run.returncode == 0 and "--upstream" in run.stdout, run.stdout + run.stderr
