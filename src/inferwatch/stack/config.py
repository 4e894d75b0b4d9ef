"""Prometheus and Alertmanager configuration for a local stack, rendered from Python."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from inferwatch.stack.addresses import HOST, StackPorts, address, url
from inferwatch.stack.alerting import Receivers, render_alertmanager_config
from inferwatch.stack.otel import render_genai_rule_file
from inferwatch.stack.profiles import Profile
from inferwatch.stack.rules import render_rule_file
from inferwatch.stack.ruletests import render_rule_tests
from inferwatch.stack.slo import SLO, load_slos
from inferwatch.stack.yamlfile import write_yaml

if TYPE_CHECKING:
    from inferwatch.stack.webconfig import BasicAuth

# Anyone who reaches the Pushgateway can push series: past this many in one scrape, Prometheus
# drops the scrape (the pushgateway target goes down) rather than store them all.
PUSHGATEWAY_SAMPLE_LIMIT = 10_000


Inference = Literal["service", "proxy"] | None
"""The stack's component that Prometheus scrapes as the ``inference`` job: ``serve``, the
proxy in front of a monitored server, or none."""


@dataclass(frozen=True)
class KnownServer:
    """An inference server that exports its own Prometheus metrics, worth a scrape job."""

    job: str
    port: int  # of its metrics endpoint
    metrics_path: str
    docs: str
    api_port: int  # of its inference API, which `inferwatch up --monitor KIND=HOST:PORT` names
    management_port: int | None = None  # where it lists its models, when not on the API


# Their native metrics (GPU, batching, tokens, queue) complement what the proxy measures
# from outside; ``docs`` says what each metric means.
KNOWN_SERVERS = {s.job: s for s in (
    KnownServer("torchserve", 8082, "/metrics",  # metrics API; needs metrics_mode=prometheus
                "https://pytorch.org/serve/metrics_api.html", 8080, management_port=8081),
    KnownServer("triton", 8002, "/metrics",
                "https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/"
                "user_guide/metrics.html", 8000),
    KnownServer("vllm", 8000, "/metrics",  # the OpenAI-compatible API port itself
                "https://docs.vllm.ai/en/latest/usage/metrics.html", 8000),
    KnownServer("mlserver", 8082, "/metrics",
                "https://docs.seldon.ai/mlserver/user-guide/metrics", 8080),
)}


def known_server_job(name: str, target: str | None = None) -> dict[str, Any]:
    """The scrape job of a known server; ``target`` is ``host:port`` (default: its port here).

    >>> known_server_job("triton")["static_configs"]
    [{'targets': ['127.0.0.1:8002']}]
    """
    server = KNOWN_SERVERS.get(name)
    if server is None:
        raise ValueError(f"unknown server {name!r}; known: {', '.join(KNOWN_SERVERS)}")
    return {"job_name": server.job, "metrics_path": server.metrics_path,
            "static_configs": [{"targets": [target or f"{HOST}:{server.port}"]}]}


def render_prometheus_config(profile: Profile, ports: StackPorts,
                             known_servers: Mapping[str, str | None] | None = None,
                             host: str = HOST, auth: BasicAuth | None = None,
                             inference: Inference = "service") -> dict[str, Any]:
    """``known_servers`` adds a scrape job per ``{name: "host:port" or None}``, see
    ``KNOWN_SERVERS``; ``host`` is where the stack's components are reached; ``auth`` is
    the basic auth Prometheus and Alertmanager require, so Prometheus sends it to both;
    ``inference`` is the component scraped as the ``inference`` job: `serve`, the proxy, or
    none (a monitored server's own job is all there is, and no target is down for nothing)."""

    def job(name: str, port: int) -> dict[str, Any]:
        return {"job_name": name, "static_configs": [{"targets": [address(port, host)]}]}

    credentials = {"basic_auth": auth.client_config()} if auth is not None else {}

    return {
        "global": {
            "scrape_interval": profile.scrape_interval,
            "evaluation_interval": profile.evaluation_interval,
            "external_labels": {"stack": "inferwatch"},
        },
        "rule_files": ["rules/*.yml"],
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [address(ports.alertmanager, host)]}],
             **credentials}
        ]},
        "scrape_configs": [
            *([job("inference", getattr(ports, inference))] if inference else []),
            job("node", ports.node_exporter),
            {**job("alertmanager", ports.alertmanager), **credentials},
            {**job("prometheus", ports.prometheus), **credentials},
            # Pushed series carry the job and instance of the batch job that pushed them.
            {**job("pushgateway", ports.pushgateway), "honor_labels": True,
             "sample_limit": PUSHGATEWAY_SAMPLE_LIMIT},
            *(known_server_job(name, target) for name, target in (known_servers or {}).items()),
        ],
    }


def write_stack_config(directory: Path, profile: Profile, ports: StackPorts,
                       receivers: Receivers | None = None,
                       slos: Sequence[SLO] | None = None,
                       known_servers: Mapping[str, str | None] | None = None,
                       host: str = HOST, auth: BasicAuth | None = None,
                       inference: Inference = "service") -> dict[str, Path]:
    """Write every configuration file of the stack under ``directory``.

    The inbox webhook always receives; ``receivers`` adds email and Slack.
    """
    inbox = (f"{url(ports.inbox, host)}/alerts",)
    receivers = replace(receivers or Receivers(), webhook_urls=(
        *inbox, *(receivers.webhook_urls if receivers else ())))
    slos = load_slos() if slos is None else slos
    paths = {
        "prometheus": write_yaml(directory / "prometheus.yml",
                                 render_prometheus_config(profile, ports, known_servers,
                                                          host, auth, inference)),
        "rules": write_yaml(directory / "rules" / "inferwatch.yml",
                            render_rule_file(profile, slos)),
        "alertmanager": write_yaml(directory / "alertmanager.yml",
                                   render_alertmanager_config(profile, receivers)),
    }
    # Outside rules/: Prometheus loads rules/*.yml, and a test file is not a rule file.
    tests = render_rule_tests(profile, slos, "../rules/inferwatch.yml")
    for kind, content in tests.items():
        paths[f"rule_tests_{kind}"] = write_yaml(directory / "rule-tests" / f"{kind}.yml",
                                                 content)
    # Copied into rules/ by whoever wants OpenTelemetry's GenAI names (docs/llm.md).
    paths["optional_rules_otel"] = write_yaml(directory / "optional-rules" / "otel-genai.yml",
                                              render_genai_rule_file())
    return paths
