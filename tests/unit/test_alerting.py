import os
import re
from pathlib import Path

import pytest

from inferwatch.stack.alerting import (
    AlertingConfigError,
    Receivers,
    receivers_from_env,
    render_alertmanager_config,
)
from inferwatch.stack.monitor import discover, monitored_slos, parse_monitor
from inferwatch.stack.profiles import DEFAULT
from inferwatch.stack.rules import alert_names
from inferwatch.stack.ruletests import expand, humanize, humanize_duration
from inferwatch.stack.slo import SLOError, load_slos, parse_slos


def test_default_slos_thresholds_are_bucket_bounds() -> None:
    slos = {s.model: s for s in load_slos()}
    assert slos["digits"].le == "0.025"
    assert slos["digits"].error_budget == pytest.approx(0.001)


def test_slo_threshold_off_the_buckets_is_refused_with_nearest_bounds() -> None:
    spec = {"models": {"m": {"availability": 0.99,
                             "latency": {"objective": 0.9, "threshold_seconds": 0.026}}}}
    with pytest.raises(SLOError, match=r"0\.025, 0\.0275"):
        parse_slos(spec)
    spec["models"]["m"]["latency"]["threshold_seconds"] = 0.025
    spec["models"]["m"]["availability"] = 1.5
    with pytest.raises(SLOError, match="availability"):
        parse_slos(spec)


def test_secrets_come_from_private_files(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret")
    os.chmod(secret, 0o644)
    env = {"INFERWATCH_SMTP_SMARTHOST": "127.0.0.1:25", "INFERWATCH_SMTP_FROM": "a@b.c",
           "INFERWATCH_EMAIL_TO": "d@e.f", "INFERWATCH_SMTP_PASSWORD_FILE": str(secret)}
    with pytest.raises(AlertingConfigError, match="chmod 600"):
        receivers_from_env(env)
    os.chmod(secret, 0o600)
    receivers = receivers_from_env(env)
    config = render_alertmanager_config(DEFAULT, receivers)
    page = next(r for r in config["receivers"] if r["name"] == "page")
    assert page["email_configs"][0]["auth_password_file"] == str(secret)
    assert "s3cret" not in str(config)


def test_email_needs_sender_and_recipient() -> None:
    with pytest.raises(AlertingConfigError, match="INFERWATCH_EMAIL_TO"):
        receivers_from_env({"INFERWATCH_SMTP_SMARTHOST": "h:25", "INFERWATCH_SMTP_FROM": "a"})
    assert receivers_from_env({}) == Receivers()


def test_humanize_matches_prometheus() -> None:
    assert humanize(5.5) == "5.5"
    assert humanize(0.1) == "100m"
    assert humanize(1234567) == "1.235M"
    assert humanize(0) == "0"
    assert expand("{{ $labels.model }} at {{ $value | humanizePercentage }}",
                  {"model": "digits"}, 0.055) == "digits at 5.5%"
    with pytest.raises(ValueError):
        expand("{{ $value | humanize1024 }}", {}, 1.0)


def test_humanize_duration_matches_prometheus() -> None:
    # Prometheus' template.go, case by case.
    assert humanize_duration(0) == "0s"
    assert humanize_duration(11.000000000000002) == "11s"
    assert humanize_duration(1.5) == "1.5s"
    assert humanize_duration(61) == "1m 1s"
    assert humanize_duration(3600) == "1h 0m 0s"
    assert humanize_duration(99000) == "1d 3h 30m 0s"
    assert humanize_duration(-61) == "-1m 1s"
    assert humanize_duration(0.25) == "250ms"
    assert expand("{{ $value | humanizeDuration }} ago", {}, 90) == "1m 30s ago"


def test_every_alert_has_its_runbook_section() -> None:
    """Built-in models' alerts, and a monitored LLM's (behind the proxy: every objective)."""
    llm = discover(parse_monitor("vllm=127.0.0.1:8000,proxy"), ["opt"])
    names = {*alert_names(DEFAULT, load_slos()), *alert_names(DEFAULT, monitored_slos([llm]))}
    runbooks = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"
    sections = set(re.findall(r"^## (\w+)$", runbooks.read_text(), re.MULTILINE))
    assert {"InferenceTimeToFirstTokenBudgetBurnFast",
            "InferenceInterTokenLatencyBudgetBurnSlow"} <= names
    assert names - sections == set()
