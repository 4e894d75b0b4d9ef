"""Everything generated passes Debian's promtool 2.42 and amtool 0.25."""

import os
import subprocess
from pathlib import Path

import pytest

from inferwatch.stack.alerting import (
    SEVERITY_RECEIVERS,
    EmailSettings,
    Receivers,
    SlackSettings,
)
from inferwatch.stack.config import StackPorts, write_stack_config
from inferwatch.stack.profiles import PROFILES
from inferwatch.stack.rules import alert_names
from inferwatch.stack.slo import load_slos


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture(params=sorted(PROFILES), scope="module")
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp(request.param)
    secret = directory / "slack-url"
    secret.write_text("http://127.0.0.1:9/hook\n")
    os.chmod(secret, 0o600)
    receivers = Receivers(
        email=EmailSettings("oncall@example.org", "inferwatch@example.org", "127.0.0.1:2525",
                            require_tls=False),
        slack=SlackSettings(str(secret), "#inference"),
    )
    known = {"torchserve": None, "triton": None, "vllm": "127.0.0.1:8000", "mlserver": None}
    return write_stack_config(directory, PROFILES[request.param], StackPorts(), receivers,
                              known_servers=known)


def test_promtool_check_config_and_rules(generated: dict[str, Path]) -> None:
    checked = run("promtool", "check", "config", str(generated["prometheus"]))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = run("promtool", "check", "rules", str(generated["rules"]))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_behaviour_tests_pass_and_cover_every_alert(
        generated: dict[str, Path]) -> None:
    result = run("promtool", "test", "rules", str(generated["rule_tests_service"]),
                 str(generated["rule_tests_slo"]))
    assert result.returncode == 0, result.stdout + result.stderr
    text = generated["rule_tests_service"].read_text() + generated["rule_tests_slo"].read_text()
    for name in alert_names(PROFILES["fast"], load_slos()):
        assert f"alertname: {name}" in text, name
    assert "request-weighted" in text


def test_promtool_tests_can_fail(generated: dict[str, Path]) -> None:
    """A rule that fires at once instead of after `for` is caught by the generated tests."""
    rules = generated["rules"].read_text()
    broken = rules.replace("for: 1m\n", "for: 0s\n").replace("for: 5s\n", "for: 0s\n")
    assert broken != rules
    generated["rules"].write_text(broken)
    try:
        result = run("promtool", "test", "rules", str(generated["rule_tests_service"]))
    finally:
        generated["rules"].write_text(rules)
    assert result.returncode != 0
    assert "HighInferenceErrorRate" in result.stdout + result.stderr


def test_amtool_check_config(generated: dict[str, Path]) -> None:
    result = run("amtool", "check-config", str(generated["alertmanager"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 inhibit rules" in result.stdout and "3 receivers" in result.stdout


@pytest.mark.parametrize(("severity", "receiver"), [*SEVERITY_RECEIVERS.items(),
                                                    ("info", "default")])
def test_amtool_routes_each_severity(generated: dict[str, Path], severity: str,
                                     receiver: str) -> None:
    config = f"--config.file={generated['alertmanager']}"
    ok = run("amtool", "config", "routes", "test", config, f"--verify.receivers={receiver}",
             "alertname=HighInferenceErrorRate", "model=digits", f"severity={severity}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = "default" if receiver != "default" else "page"
    bad = run("amtool", "config", "routes", "test", config, f"--verify.receivers={wrong}",
              f"severity={severity}")
    assert bad.returncode != 0
