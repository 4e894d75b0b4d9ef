"""`pip install inferwatch` is the instrumentation library; each command's extra says its name
when it is missing."""

import doctest
import subprocess
import sys

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


def test_a_command_without_its_extra_names_the_pip_install() -> None:
    # sys.modules[name] = None is how a module looks when it is not installed.
    code = ("import sys; sys.modules['sklearn'] = None; "
            "sys.argv = ['inferwatch', 'batch', '--input', '/dev/null']; "
            "from inferwatch.__main__ import main; main()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "pip install 'inferwatch[serve]'" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
