"""Everything generated passes Debian's promtool 2.42 and amtool 0.25."""

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.alerting import (
    SEVERITY_RECEIVERS,
    EmailSettings,
    Receivers,
    SlackSettings,
)
from inferwatch.stack.config import write_stack_config
from inferwatch.stack.kubernetes import KubernetesOptions, render_kubernetes, rule_scope
from inferwatch.stack.monitor import discover, monitored_slos, parse_monitor
from inferwatch.stack.profiles import DEFAULT, PROFILES
from inferwatch.stack.rules import LOCAL_SCOPE, AlertRule, alert_names, rule_groups
from inferwatch.stack.ruletests import expand
from inferwatch.stack.slo import load_slos
from inferwatch.stack.yamlfile import write_yaml

RUNBOOKS = "https://runbooks.example.org/ml/inferwatch/runbooks.md"


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
    otel = run("promtool", "check", "rules", str(generated["optional_rules_otel"]))
    assert otel.returncode == 0, otel.stdout + otel.stderr


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


LLM_BURNS = [f"Inference{sli}BudgetBurn{speed}" for sli in ("TimeToFirstToken", "InterTokenLatency")
             for speed in ("Fast", "Slow")]


def test_promtool_fires_and_silences_the_llm_slo_alerts(tmp_path: Path) -> None:
    """A monitored vLLM's model gets time-to-first-token and inter-token objectives: the
    generated tests cover their burn-rate alerts, pass, and fail when a threshold is wrong."""
    server = discover(parse_monitor("vllm=127.0.0.1:8000"), ["opt-125m"])
    paths = write_stack_config(tmp_path, DEFAULT, StackPorts(), slos=monitored_slos([server]),
                               known_servers={"vllm": server.metrics}, inference=None)
    tests = [str(paths["rule_tests_service"]), str(paths["rule_tests_slo"])]
    result = run("promtool", "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    text = paths["rule_tests_slo"].read_text()
    for name in LLM_BURNS:
        assert f"alertname: {name}" in text, name
    rules = paths["rules"].read_text()
    # The inter-token page over 6h and 30m at 6 times the 5% budget, moved to 7 times.
    broken = rules.replace("inter_token_latency_slow:ratio_rate30m{model=\"opt-125m\"} > 0.3)",
                           "inter_token_latency_slow:ratio_rate30m{model=\"opt-125m\"} > 0.35)")
    assert broken != rules
    paths["rules"].write_text(broken)
    result = run("promtool", "test", "rules", *tests)
    assert result.returncode != 0
    assert "InferenceInterTokenLatencyBudgetBurnFast" in result.stdout + result.stderr


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


def test_target_down_and_service_rules_cover_every_local_job(
        generated: dict[str, Path]) -> None:
    jobs = [j["job_name"] for j in yaml.safe_load(generated["prometheus"].read_text())[
        "scrape_configs"]]
    assert {"inference", "node", "torchserve", "vllm"} <= set(jobs)
    targets = re.fullmatch(r'job=~"(.+)"', LOCAL_SCOPE.targets)
    service = re.fullmatch(r'job=~"(.+)"', LOCAL_SCOPE.service)
    assert targets and service
    assert all(re.fullmatch(targets.group(1), job) for job in jobs), jobs
    assert all(re.fullmatch(service.group(1), job) for job in jobs
               if job not in ("node", "alertmanager", "prometheus", "pushgateway")), jobs


def kubernetes_rules(directory: Path, namespace: str) -> Path:
    options = KubernetesOptions(namespace=namespace, runbook_base=RUNBOOKS)
    spec = render_kubernetes(DEFAULT, options)["prometheusrule.yaml"]["spec"]
    return write_yaml(directory / f"{namespace}.yml", spec)


def test_promtool_checks_the_kubernetes_rules(tmp_path: Path) -> None:
    checked = run("promtool", "check", "rules", str(kubernetes_rules(tmp_path, "ml")))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def braces(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def shared_cluster_series() -> list[dict[str, str]]:
    """Ten minutes of two namespaces serving digits in one cluster: `ml` 1 request/s, all
    answered; `team-b` 3 requests/s, all failed, from a pod Prometheus cannot scrape. Two
    node_exporter jobs report 95% CPU: the cluster's and another team's."""
    def pod(namespace: str, ip: str) -> dict[str, str]:
        return {"job": "inferwatch", "namespace": namespace, "instance": f"{ip}:8080",
                "model": "digits"}

    ml, team_b = pod("ml", "10.0.1.1"), pod("team-b", "10.0.2.1")
    out = [
        {"series": f"inference_requests_total{braces(ml)}", "values": "0+10x60"},
        {"series": f"inference_errors_total{braces(ml)}", "values": "0+0x60"},
        {"series": f"inference_requests_total{braces(team_b)}", "values": "0+30x60"},
        {"series": f"inference_errors_total{braces(team_b)}", "values": "0+30x60"},
        {"series": "up" + braces({k: v for k, v in ml.items() if k != "model"}),
         "values": "1+0x60"},
        {"series": "up" + braces({k: v for k, v in team_b.items() if k != "model"}),
         "values": "0+0x60"},
    ]
    for job in ("node-exporter", "team-b-nodes"):
        node = {"job": job, "instance": "10.0.0.1:9100", "cpu": "0"}
        out += [{"series": "node_cpu_seconds_total" + braces({**node, "mode": "idle"}),
                 "values": "0+0.5x60"},
                {"series": "node_cpu_seconds_total" + braces({**node, "mode": "user"}),
                 "values": "0+9.5x60"}]
    return out


def alert_rule(name: str, options: KubernetesOptions) -> AlertRule:
    return next(r for g in rule_groups(DEFAULT, scope=rule_scope(options)) for r in g.rules
                if isinstance(r, AlertRule) and r.name == name)


def test_kubernetes_rules_keep_to_their_namespace_and_jobs(tmp_path: Path) -> None:
    """Each namespace's PrometheusRule reads its own pods and the cluster's node_exporter
    only, and what two namespaces record, host series included, stays apart: promtool fails
    a test whose rules write the same series twice ("duplicate sample for timestamp")."""
    for namespace in ("ml", "team-b"):
        kubernetes_rules(tmp_path, namespace)
    host = alert_rule("HostCpuHigh", KubernetesOptions(namespace="ml"))
    # The namespace of the rules that recorded it: each team's copy of the alert is its own.
    labels = {"alertname": host.name, "severity": host.severity, "instance": "10.0.0.1:9100",
              "job": "node-exporter", "namespace": "ml"}
    annotations = {k: expand(v, labels, 0.95) for k, v in host.annotations(RUNBOOKS).items()}
    record = f"model:inference_requests:rate{DEFAULT.rate_window}"

    def rate(namespace: str, value: float) -> dict[str, Any]:
        return {"labels": f'{record}{{model="digits", namespace="{namespace}"}}', "value": value}

    def test(rule_files: list[str], **checks: Any) -> dict[str, Any]:
        return {"rule_files": rule_files, "evaluation_interval": DEFAULT.evaluation_interval,
                "tests": [{"interval": DEFAULT.scrape_interval,
                           "input_series": shared_cluster_series(), **checks}]}

    one = write_yaml(tmp_path / "one-namespace.yml", test(
        ["ml.yml"],
        alert_rule_test=[
            {"eval_time": "10m", "alertname": "TargetDown", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "HighInferenceErrorRate", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "HostCpuHigh",
             "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}]}],
        promql_expr_test=[{"expr": record, "eval_time": "10m",
                           "exp_samples": [rate("ml", 1)]}]))
    both = write_yaml(tmp_path / "two-namespaces.yml", test(
        ["ml.yml", "team-b.yml"],
        promql_expr_test=[{"expr": record, "eval_time": "10m",
                           "exp_samples": [rate("ml", 1), rate("team-b", 3)]}]))
    result = run("promtool", "test", "rules", str(one), str(both))
    assert result.returncode == 0, result.stdout + result.stderr
