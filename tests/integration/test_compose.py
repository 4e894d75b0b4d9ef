"""The Compose deployment and the Dockerfile, checked without a Docker engine.

docker-compose: Debian's 1.29 `docker-compose config` (interpolation, schema, profiles).
Prometheus and Alertmanager configuration: promtool 2.42 and amtool 0.25, as for `render`.
Dockerfile: parsed by BuildKit's own parser (the `dockerfile` package) and linted by hadolint.
"""

import copy
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml
from typer.testing import CliRunner

from inferwatch.cli import app
from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.compose import (
    IMAGE,
    IMAGES,
    PASSWORD_VARIABLE,
    PROMETHEUS3_IMAGE,
    write_compose,
)
from inferwatch.stack.config import render_prometheus_config
from inferwatch.stack.grafana import DATASOURCE_UID, render_dashboard
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import DEFAULT
from inferwatch.stack.rules import LOCAL_SCOPE, render_rule_file, runbook_base_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
if COMPOSE is None:
    raise RuntimeError("the Compose tests need docker-compose: run `make deps`")
PASSWORD = secrets.token_urlsafe(16)  # never a literal: see test_no_default_passwords
RUNBOOKS = "https://runbooks.example.org/ml/inferwatch/runbooks.md"


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL)


def compose(directory: Path, *args: str, password: str | None = PASSWORD,
            files: tuple[str, ...] = ("docker-compose.yml",)
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_VARIABLE}
    if password is not None:
        env[PASSWORD_VARIABLE] = password
    assert COMPOSE is not None
    chosen = [arg for name in files for arg in ("-f", str(directory / name))]
    return run(COMPOSE, "--project-directory", str(directory), *chosen, *args, env=env)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_compose(tmp_path_factory.mktemp("compose"), DEFAULT, context=ROOT,
                         runbook_base=RUNBOOKS)


@pytest.fixture(scope="module")
def resolved(rendered: dict[str, Path]) -> dict[str, Any]:
    result = compose(rendered["compose"].parent, "config")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_compose_config_accepts_the_file(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {
        "inferwatch", "proxy", "batch", "inbox", "prometheus", "alertmanager", "node-exporter",
        "pushgateway", "grafana", "dcgm-exporter"}
    grafana = resolved["services"]["grafana"]
    assert grafana["environment"][PASSWORD_VARIABLE] == PASSWORD
    assert resolved["services"]["dcgm-exporter"]["profiles"] == ["gpu"]
    assert resolved["services"]["inferwatch"]["build"]["context"] == str(ROOT)


def test_grafana_password_has_no_default(rendered: dict[str, Path]) -> None:
    result = compose(rendered["compose"].parent, "config", password=None)
    assert result.returncode != 0
    assert f"set {PASSWORD_VARIABLE}" in result.stderr
    text = rendered["compose"].read_text()
    assert f"${{{PASSWORD_VARIABLE}:?" in text and f"{PASSWORD_VARIABLE}:-" not in text


def test_profiles(rendered: dict[str, Path]) -> None:
    result = compose(rendered["compose"].parent, "config", "--profiles")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"batch", "gpu", "proxy"}


def test_images_are_pinned(resolved: dict[str, Any]) -> None:
    pinned = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*$")
    for name, service in resolved["services"].items():
        image = service["image"]
        assert pinned.match(image), (name, image)
        assert image in (IMAGE, *IMAGES.values()), (name, image)


def test_mounted_files_exist(resolved: dict[str, Any], rendered: dict[str, Path]) -> None:
    directory = rendered["compose"].parent
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith(str(directory)):
                assert Path(source).exists(), (name, source)


def test_prometheus_scrapes_by_service_name(rendered: dict[str, Path],
                                            resolved: dict[str, Any]) -> None:
    config = yaml.safe_load(rendered["prometheus"].read_text())
    services = set(resolved["services"])
    hosts = [t.split(":")[0] for job in config["scrape_configs"]
             for static in job.get("static_configs", []) for t in static["targets"]]
    hosts += [n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
              for n in sd["names"]]
    hosts += [t.split(":")[0] for am in config["alerting"]["alertmanagers"]
              for static in am["static_configs"] for t in static["targets"]]
    assert hosts and set(hosts) <= services, hosts
    local_jobs = [j["job_name"] for j in render_prometheus_config(DEFAULT, StackPorts())[
        "scrape_configs"]]
    assert [j["job_name"] for j in config["scrape_configs"]] == [*local_jobs, "proxy", "dcgm"]
    # TargetDown watches every job of the Compose stack.
    targets = re.fullmatch(r'job=~"(.+)"', LOCAL_SCOPE.targets)
    assert targets and all(re.fullmatch(targets.group(1), j["job_name"])
                           for j in config["scrape_configs"])
    pushgateway = next(j for j in config["scrape_configs"] if j["job_name"] == "pushgateway")
    assert pushgateway["honor_labels"] is True
    checked = run("promtool", "check", "config", str(rendered["prometheus"]))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = run("amtool", "check-config", str(rendered["alertmanager"]))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_and_grafana_come_from_the_same_source(rendered: dict[str, Path]) -> None:
    rules = yaml.safe_load(rendered["rules"].read_text())
    assert rules == render_rule_file(DEFAULT, runbook_base=RUNBOOKS)
    for rule in (r for g in rules["groups"] for r in g["rules"] if "alert" in r):
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOKS}#{rule['alert'].lower()}"
    assert rendered["grafana_dashboard"].read_text() == render_dashboard(DEFAULT)
    datasource = yaml.safe_load(rendered["grafana_datasources"].read_text())["datasources"][0]
    assert (datasource["uid"], datasource["url"]) == (DATASOURCE_UID, "http://prometheus:9090")
    provider = yaml.safe_load(rendered["grafana_dashboards"].read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert rendered["grafana_dashboard"].name == f"{DASHBOARD.uid}.json"


def test_dockerfile_parses_and_lints_clean() -> None:
    path = ROOT / "Dockerfile"
    commands = dockerfile.parse_file(str(path))
    by_name: dict[str, list[Any]] = {}
    for command in commands:
        by_name.setdefault(command.cmd, []).append(command.value)
    assert re.match(r"^python:\d+\.\d+\.\d+-slim-\w+$", by_name["FROM"][0][0])
    assert by_name["USER"][-1][0] not in ("root", "0")
    assert by_name["ENTRYPOINT"] == [("inferwatch",)]
    for sources in by_name["COPY"]:
        for source in sources[:-1]:
            assert (ROOT / source).exists(), source
    lint = run(str(Path(sys.executable).parent / "hadolint"), str(path))
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_services_run_commands_of_the_cli(resolved: dict[str, Any]) -> None:
    names = {c.name or (c.callback.__name__ if c.callback else "")
             for c in app.registered_commands}
    used = {s["command"][0] for s in resolved["services"].values() if s["image"] == IMAGE}
    assert used == {"serve", "inbox", "batch", "proxy"}
    assert used <= names


def test_render_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    local = runner.invoke(app, ["render", "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    assert (tmp_path / "local" / "prometheus.yml").exists()
    composed = runner.invoke(app, ["render", "compose", "--out", str(tmp_path / "compose"),
                                   "--context", str(ROOT), "--runbook-base-url", RUNBOOKS])
    assert composed.exit_code == 0, composed.output
    assert (tmp_path / "compose" / "docker-compose.yml").exists()
    no_dockerfile = runner.invoke(app, ["render", "compose", "--out", str(tmp_path / "x"),
                                        "--context", str(tmp_path)])
    assert no_dockerfile.exit_code == 2 and "no Dockerfile" in no_dockerfile.output
    k8s = runner.invoke(app, ["render", "k8s", "--out", str(tmp_path / "k8s"),
                              "--release", "monitoring", "--namespace", "ml",
                              "--runbook-base-url", RUNBOOKS, "--cluster", "eu-1",
                              "--remote-write-url", "https://mimir.example.org/api/v1/push",
                              "--remote-write-kind", "mimir"])
    assert k8s.exit_code == 0, k8s.output
    monitor = yaml.safe_load((tmp_path / "k8s" / "servicemonitor.yaml").read_text())
    assert monitor["metadata"]["labels"]["release"] == "monitoring"
    assert monitor["metadata"]["namespace"] == "ml"
    values = yaml.safe_load((tmp_path / "k8s" / "kube-prometheus-stack-values.yaml").read_text())
    assert values["prometheus"]["prometheusSpec"]["replicaExternalLabelName"] == "__replica__"
    no_cluster = runner.invoke(app, ["render", "k8s", "--out", str(tmp_path / "k8s-2"),
                                     "--runbook-base-url", RUNBOOKS, "--remote-write-kind",
                                     "mimir", "--remote-write-url", "https://m.example.org/p"])
    assert no_cluster.exit_code == 2 and "--cluster" in no_cluster.output
    assert not (tmp_path / "k8s-2").exists()  # nothing written before the options are checked
    relative = runner.invoke(app, ["render", "compose", "--out", str(tmp_path / "c2"),
                                   "--context", str(ROOT), "--runbook-base-url", "docs/x.md"])
    assert relative.exit_code == 2 and "absolute" in relative.output


def test_runbook_base_is_required_unless_the_project_declares_its_repository(
        tmp_path: Path) -> None:
    try:
        declared: str | None = runbook_base_url()
    except ValueError:
        declared = None
    for argv in (["compose", "--context", str(ROOT)], ["k8s"]):
        result = CliRunner().invoke(app, ["render", *argv, "--out", str(tmp_path / argv[0])])
        if declared is None:
            assert result.exit_code == 2 and "--runbook-base-url" in result.output, argv
        else:
            assert result.exit_code == 0, result.output


def test_prometheus3_override(rendered: dict[str, Path], resolved: dict[str, Any]) -> None:
    """The same stack with Prometheus 3: only the image differs."""
    directory = rendered["compose"].parent
    result = compose(directory, "config",
                     files=("docker-compose.yml", rendered["compose_prometheus3"].name))
    assert result.returncode == 0, result.stderr
    with3 = yaml.safe_load(result.stdout)
    assert with3["services"]["prometheus"]["image"] == PROMETHEUS3_IMAGE
    with3["services"]["prometheus"]["image"] = IMAGES["prometheus"]

    def volumes_sorted(config: dict[str, Any]) -> dict[str, Any]:
        # Merging two files reorders a service's volumes: their order means nothing.
        for service in config["services"].values():
            service["volumes"] = sorted(map(str, service.get("volumes", [])))
        return config

    assert volumes_sorted(with3) == volumes_sorted(copy.deepcopy(resolved))
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", PROMETHEUS3_IMAGE)
