"""The Docker Compose deployment, rendered from the sources of the local stack.

Prometheus keeps the local stack's jobs, rules and Alertmanager routing, with targets named by
Compose service (never ``localhost``: inside a container that is the container itself).
Grafana is provisioned with the same datasource and dashboard JSON as ``render``. Images are
pinned; Grafana's admin password must come from the environment and has no default.

``docker-compose.prometheus3.yml`` is an override file that runs Prometheus 3 instead:
none of the flags or configuration keys used here changed in 3.0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferwatch import __version__
from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.alerting import Receivers, render_alertmanager_config
from inferwatch.stack.config import render_prometheus_config
from inferwatch.stack.grafana import render_dashboard, render_provisioning
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import Profile
from inferwatch.stack.rules import render_rule_file, runbook_base_url
from inferwatch.stack.slo import SLO
from inferwatch.stack.yamlfile import write_yaml

__all__ = [
    "IMAGE",
    "IMAGES",
    "PASSWORD_VARIABLE",
    "PROMETHEUS3_IMAGE",
    "SCRAPE_TARGETS",
    "render_compose",
    "render_compose_prometheus_config",
    "render_prometheus3_override",
    "write_compose",
]

IMAGE = f"inferwatch:{__version__}"  # built from the Dockerfile at the repository's root
# Every tag exists upstream and is pinned to a patch release.
IMAGES = {
    "prometheus": "prom/prometheus:v2.53.3",
    "alertmanager": "prom/alertmanager:v0.27.0",
    "node-exporter": "prom/node-exporter:v1.8.2",
    "pushgateway": "prom/pushgateway:v1.10.0",
    "grafana": "grafana/grafana:11.6.0",
    "dcgm-exporter": "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04",
}
# The 3.5 long-term support release. Its TSDB is readable by Prometheus 2.55 and later only:
# going back to the 2.x image above loses what 3.x stored.
PROMETHEUS3_IMAGE = "prom/prometheus:v3.5.0"
PASSWORD_VARIABLE = "GF_SECURITY_ADMIN_PASSWORD"

# The Compose service and port behind each scrape job of the local stack. A job added to
# the local stack must be placed here too: rendering fails on an unknown one.
SCRAPE_TARGETS = {
    "inference": "inferwatch:8080",
    "node": "node-exporter:9100",
    "alertmanager": "alertmanager:9093",
    "prometheus": "prometheus:9090",
    "pushgateway": "pushgateway:9091",
}
# Services of optional profiles, found through Docker's DNS only while they run: a profile
# left off leaves no target down.
OPTIONAL_TARGETS = {"proxy": ("proxy", 8090), "dcgm": ("dcgm-exporter", 9400)}

_CONTAINER_DASHBOARDS = Path("/var/lib/grafana/dashboards")


def render_compose_prometheus_config(profile: Profile) -> dict[str, Any]:
    config = render_prometheus_config(profile, StackPorts())
    for job in config["scrape_configs"]:
        try:
            target = SCRAPE_TARGETS[job["job_name"]]
        except KeyError:
            raise ValueError(f"scrape job {job['job_name']!r} has no Compose service; add it "
                             "to SCRAPE_TARGETS") from None
        job["static_configs"] = [{"targets": [target]}]
    config["alerting"]["alertmanagers"] = [
        {"static_configs": [{"targets": [SCRAPE_TARGETS["alertmanager"]]}]}]
    for job_name, (service, port) in OPTIONAL_TARGETS.items():
        config["scrape_configs"].append({"job_name": job_name, "dns_sd_configs": [
            {"names": [service], "type": "A", "port": port, "refresh_interval": "30s"}]})
    return config


def _published(port: int) -> list[str]:
    return [f"127.0.0.1:{port}:{port}"]  # reachable from this host only


def render_compose(profile: Profile, context: str = ".") -> dict[str, Any]:
    """The Compose file; ``context`` is the build context (the directory of the Dockerfile)
    relative to the file."""
    ours = {"image": IMAGE, "build": {"context": context}}
    ping = ("import urllib.request; "
            "urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=2)")
    services: dict[str, Any] = {
        "inferwatch": {
            **ours, "command": ["serve", "--host", "0.0.0.0", "--port", "8080"],
            "ports": _published(8080), "restart": "unless-stopped",
            "healthcheck": {"test": ["CMD", "python", "-c", ping], "interval": "10s",
                            "timeout": "3s", "retries": 3},
        },
        # The proxy exports the inference metrics of a server that has none (TorchServe,
        # Triton, vLLM...): point it at one. In front of `inferwatch` it would count every
        # request a second time.
        "proxy": {
            **ours, "profiles": ["proxy"],
            "command": ["proxy", "--upstream",
                        "${INFERWATCH_PROXY_UPSTREAM:-http://inferwatch:8080}",
                        "--host", "0.0.0.0", "--port", "8090"],
            "ports": _published(8090), "restart": "unless-stopped",
        },
        "batch": {
            **ours, "profiles": ["batch"],
            "command": ["batch", "--input", "digits", "--job", "digits-batch",
                        "--instance", "compose", "--pushgateway", "http://pushgateway:9091"],
            "depends_on": ["pushgateway"],
        },
        "inbox": {
            **ours, "command": ["inbox", "--host", "0.0.0.0", "--port", "9095",
                                "--file", "/tmp/inbox.jsonl"],
            "ports": _published(9095), "restart": "unless-stopped",
        },
        "prometheus": {
            "image": IMAGES["prometheus"],
            "command": ["--config.file=/etc/prometheus/prometheus.yml",
                        "--storage.tsdb.path=/prometheus", "--web.enable-lifecycle",
                        f"--rules.alert.resend-delay={profile.resend_delay}"],
            "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
            "ports": _published(9090), "restart": "unless-stopped",
            "depends_on": ["inferwatch", "alertmanager", "pushgateway", "node-exporter"],
        },
        "alertmanager": {
            "image": IMAGES["alertmanager"],
            "command": ["--config.file=/etc/alertmanager/alertmanager.yml",
                        "--storage.path=/alertmanager", "--cluster.listen-address="],
            "volumes": ["./alertmanager:/etc/alertmanager:ro",
                        "alertmanager-data:/alertmanager"],
            "ports": _published(9093), "restart": "unless-stopped", "depends_on": ["inbox"],
        },
        "node-exporter": {
            "image": IMAGES["node-exporter"], "command": ["--path.rootfs=/host"],
            "pid": "host", "volumes": ["/:/host:ro,rslave"], "restart": "unless-stopped",
        },
        "pushgateway": {
            "image": IMAGES["pushgateway"],
            "command": ["--persistence.file=/pushgateway/pushgateway.db"],
            "volumes": ["pushgateway-data:/pushgateway"],
            "ports": _published(9091), "restart": "unless-stopped",
        },
        "grafana": {
            "image": IMAGES["grafana"],
            "environment": {
                PASSWORD_VARIABLE: f"${{{PASSWORD_VARIABLE}:?set {PASSWORD_VARIABLE}: "
                                   "Grafana gets no default admin password}",
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_AUTH_ANONYMOUS_ENABLED": "false",
            },
            "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                        f"./grafana/dashboards:{_CONTAINER_DASHBOARDS}:ro",
                        "grafana-data:/var/lib/grafana"],
            "ports": ["127.0.0.1:3000:3000"], "restart": "unless-stopped",
            "depends_on": ["prometheus"],
        },
        "dcgm-exporter": {
            "image": IMAGES["dcgm-exporter"], "profiles": ["gpu"], "cap_add": ["SYS_ADMIN"],
            "deploy": {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}},
            "restart": "unless-stopped",
        },
    }
    volumes = ("prometheus-data", "alertmanager-data", "pushgateway-data", "grafana-data")
    return {"services": services, "volumes": {v: {} for v in volumes}}


def render_prometheus3_override() -> dict[str, Any]:
    """A Compose override (``-f docker-compose.yml -f docker-compose.prometheus3.yml``).

    Only the image changes: the flags kept in 3.0 (``--config.file``, ``--storage.tsdb.path``,
    ``--web.enable-lifecycle``, ``--rules.alert.resend-delay``) are the ones used, and the
    configuration has none of the keys 3.0 renamed or dropped (``scrape_classic_histograms``,
    Alertmanager ``api_version: v1``). Histogram ``le`` values, which 3.0 normalises to
    floats ("1.0"), are written that way in the rules already.
    """
    return {"services": {"prometheus": {"image": PROMETHEUS3_IMAGE}}}


def write_compose(directory: Path, profile: Profile, slos: Sequence[SLO] | None = None,
                  context: Path | None = None,
                  runbook_base: str | None = None) -> dict[str, Path]:
    """Write the Compose file and every configuration file it mounts under ``directory``.

    ``context`` is the directory holding inferwatch's Dockerfile (default: the current one);
    ``runbook_base`` the absolute URL of docs/runbooks.md that alerts link to.
    """
    runbooks = runbook_base_url(runbook_base)
    directory.mkdir(parents=True, exist_ok=True)
    build = os.path.relpath((context or Path.cwd()).resolve(), directory.resolve())
    inbox = ("http://inbox:9095/alerts",)
    dashboards = directory / "grafana" / "dashboards"
    dashboards.mkdir(parents=True, exist_ok=True)
    dashboard = dashboards / f"{DASHBOARD.uid}.json"
    dashboard.write_text(render_dashboard(profile))
    paths = {
        "compose": write_yaml(directory / "docker-compose.yml", render_compose(profile, build)),
        "compose_prometheus3": write_yaml(directory / "docker-compose.prometheus3.yml",
                                          render_prometheus3_override()),
        "prometheus": write_yaml(directory / "prometheus" / "prometheus.yml",
                                 render_compose_prometheus_config(profile)),
        "rules": write_yaml(directory / "prometheus" / "rules" / "inferwatch.yml",
                            render_rule_file(profile, slos, runbooks)),
        "alertmanager": write_yaml(directory / "alertmanager" / "alertmanager.yml",
                                   render_alertmanager_config(profile, Receivers(inbox))),
        "grafana_dashboard": dashboard,
    }
    provisioning = render_provisioning(profile, _CONTAINER_DASHBOARDS, "http://prometheus:9090")
    for kind, data in provisioning.items():
        paths[f"grafana_{kind}"] = write_yaml(
            directory / "grafana" / "provisioning" / kind / "inferwatch.yml", data)
    return paths
