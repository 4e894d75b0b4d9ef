"""What commands given no --prometheus URL read from a stack's state.json, and the Prometheus
credentials they send."""

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from inferwatch.secrets import SecretFileError, write_secret_file
from inferwatch.stack.state import (
    StackState,
    StackStateError,
    component_url,
    query_url,
    read_stack_state,
    running_stack,
    saved_prometheus_auth,
)
from inferwatch.stack.status import print_stack
from inferwatch.stack.webconfig import (
    PASSWORD_ENV,
    BasicAuth,
    WebConfigError,
    prometheus_credentials,
)

STATE: StackState = {
    "profile": "fast", "host": "::1", "inference": "service", "monitored": [], "ha": False,
    "ports": {"prometheus": 9090, "alertmanager": 9093, "service": 8080, "dashboard": 9096},
    "store": {"kind": "victoria-metrics", "retention": "90d", "url": "http://127.0.0.1:9190"},
    "prometheus_auth": None, "processes": [],
}


def test_a_run_dir_without_a_stack_names_the_option_to_pass(tmp_path: Path) -> None:
    assert read_stack_state(tmp_path) == {}
    with pytest.raises(StackStateError, match="pass --prometheus URL"):
        running_stack(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps(STATE))
    assert running_stack(tmp_path) == STATE


def test_urls_come_from_the_ports_and_the_host_clients_reach() -> None:
    assert component_url(STATE, "alertmanager") == "http://[::1]:9093"
    assert query_url(STATE, store=False) == "http://[::1]:9090"
    assert query_url(STATE, store=True) == "http://127.0.0.1:9190"
    with pytest.raises(StackStateError, match="--replicas above 1"):
        query_url({**STATE, "store": None}, store=True)


def test_credentials_come_from_the_options_else_from_the_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    password_file = write_secret_file(tmp_path / "password", "s3cret-from-test")
    assert prometheus_credentials(None, None) is None
    assert prometheus_credentials("ops", password_file) == ("ops", "s3cret-from-test")
    saved = saved_prometheus_auth({**STATE, "prometheus_auth": {
        "username": "stack", "password_file": str(password_file)}})
    assert saved == BasicAuth("stack", password_file)
    assert prometheus_credentials(None, None, saved) == ("stack", "s3cret-from-test")
    with pytest.raises(WebConfigError, match="needs --prometheus-user"):
        prometheus_credentials(None, password_file)
    with pytest.raises(WebConfigError, match=PASSWORD_ENV):
        prometheus_credentials("ops", None, saved)
    monkeypatch.setenv(PASSWORD_ENV, "from-the-environment")
    assert prometheus_credentials("ops", None) == ("ops", "from-the-environment")
    password_file.chmod(0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        prometheus_credentials("ops", password_file)


def test_the_stack_table_shows_each_process_and_where_to_reach_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = {"name": "prometheus", "pid": 2**22 + 1, "argv": ["prometheus"], "log": "x.log",
            "url": "http://[::1]:9090"}
    argv0 = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    mine = {"name": "service", "pid": os.getpid(), "argv": [argv0], "log": "y.log",
            "url": None}
    (tmp_path / "state.json").write_text(json.dumps({**STATE, "processes": [dead, mine]}))
    print_stack(Console(width=200), tmp_path)
    out = capsys.readouterr().out
    assert "inferwatch stack (fast profile)" in out
    assert "stopped" in out and "running" in out
    assert "Prometheus UI: http://[::1]:9090/graph" in out
    assert "service metrics: http://[::1]:8080/metrics" in out
    assert "store (victoria-metrics, remote_write receiver, retention 90d)" in out
    assert "dashboard: http://[::1]:9096/" in out
