"""The Kubernetes manifests, validated offline.

Built-in kinds: the strict JSON schemas (no unknown field anywhere) that kubernetes-validate
1.37.0 ships for each Kubernetes minor version, checked here against the oldest and newest it
has. Prometheus Operator kinds: the JSON Schema of cloudcoil's ServiceMonitor and
PrometheusRule models, which are generated from the CRDs' openAPIV3Schema of prometheus-operator
v0.80.1, made strict the same way (``additionalProperties: false`` on every object).
Both are checked with jsonschema (Draft 2020-12).
"""

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from inferwatch.metrics import InferenceMetrics
from inferwatch.stack.grafana import DATASOURCE_UID, render_dashboard
from inferwatch.stack.kubernetes import (
    QUEUE_METRIC,
    KubernetesOptions,
    adapter_values,
    render_kubernetes,
    write_kubernetes,
)
from inferwatch.stack.profiles import DEFAULT
from inferwatch.stack.rules import alert_names, render_rule_file

KUBERNETES_VERSIONS = ("1.25", "1.37")
OPERATOR_GROUP = "monitoring.coreos.com/v1"
OPTIONS = KubernetesOptions()


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        if "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


@functools.cache
def operator_schema(kind: str) -> dict[str, Any]:
    from cloudcoil.models.prometheus_operator import v1

    return _strict(getattr(v1, kind).model_json_schema(by_alias=True))


def validate(obj: dict[str, Any]) -> None:
    if obj["apiVersion"] == OPERATOR_GROUP:
        jsonschema.Draft202012Validator(operator_schema(obj["kind"])).validate(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.fixture(scope="module")
def resources() -> dict[str, dict[str, Any]]:
    return render_kubernetes(DEFAULT, OPTIONS)


def test_every_resource_validates(resources: dict[str, dict[str, Any]]) -> None:
    kinds = {obj["kind"] for obj in resources.values()}
    assert kinds == {"Namespace", "Deployment", "Service", "ServiceMonitor", "PrometheusRule",
                     "HorizontalPodAutoscaler", "ConfigMap"}
    for obj in resources.values():
        validate(obj)


@pytest.mark.parametrize(("name", "path", "value"), [
    ("deployment.yaml", ("spec", "replica"), 2),  # a misspelt field
    ("deployment.yaml", ("spec", "replicas"), "two"),
    ("hpa.yaml", ("spec", "metrics", 0, "pods", "target", "type"), None),
    ("servicemonitor.yaml", ("spec", "endpoints", 0, "intervall"), "10s"),
    ("servicemonitor.yaml", ("spec", "endpoints", 0, "interval"), "10 seconds"),
    ("prometheusrule.yaml", ("spec", "groups", 0, "rules", 0, "expression"), "up"),
    ("prometheusrule.yaml", ("spec", "groups", 2, "rules", 0, "for"), "1 minute"),
    ("servicemonitor.yaml", ("spec", "selector", "matchLabels"), "inferwatch"),
])
def test_validation_catches_mistakes(resources: dict[str, dict[str, Any]], name: str,
                                     path: tuple[Any, ...], value: Any) -> None:
    broken = copy.deepcopy(resources[name])
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_rules_and_dashboard_come_from_the_same_source(
        resources: dict[str, dict[str, Any]]) -> None:
    rule = resources["prometheusrule.yaml"]
    assert rule["spec"] == render_rule_file(DEFAULT, node_job="node-exporter")
    assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r} \
        == set(alert_names(DEFAULT))
    assert 'job="node-exporter"' in str(rule["spec"])  # kube-prometheus-stack's job name
    dashboard = resources["grafana-dashboard.yaml"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == OPTIONS.monitoring_namespace
    assert list(dashboard["data"].values()) == [render_dashboard(DEFAULT)]
    datasource = yaml.safe_load(
        next(iter(resources["grafana-datasource.yaml"]["data"].values())))["datasources"][0]
    assert datasource["uid"] == DATASOURCE_UID  # the uid the dashboard's panels name
    assert datasource["url"] == "http://prometheus-operated.monitoring.svc:9090"


def test_release_label_is_configurable() -> None:
    chosen = render_kubernetes(DEFAULT, KubernetesOptions(release="monitoring"))
    for name in ("servicemonitor.yaml", "prometheusrule.yaml"):
        assert chosen[name]["metadata"]["labels"]["release"] == "monitoring"


def test_service_monitor_selects_the_service(resources: dict[str, dict[str, Any]]) -> None:
    monitor, service = resources["servicemonitor.yaml"], resources["service.yaml"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in
                                                       service["spec"]["ports"]}
    pod = resources["deployment.yaml"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_autoscaler_reads_the_metric_the_adapter_serves(
        resources: dict[str, dict[str, Any]]) -> None:
    hpa_metric = resources["hpa.yaml"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rule = adapter_values(OPTIONS)["rules"]["custom"][0]
    assert hpa_metric == rule["name"]["as"] == QUEUE_METRIC
    assert rule["seriesQuery"].startswith(QUEUE_METRIC + "{")
    # The service exports the series the adapter looks for.
    registry = CollectorRegistry()
    metrics = InferenceMetrics({"digits": "1"}, registry=registry)
    metrics.watch_queue("digits", lambda: 3.0, 10)
    assert f"{QUEUE_METRIC}{{".encode() in generate_latest(registry)


def test_kustomization_lists_every_manifest(tmp_path: Path) -> None:
    paths = write_kubernetes(tmp_path, DEFAULT, OPTIONS)
    kustomization = yaml.safe_load(paths["kustomization.yaml"].read_text())
    assert kustomization["resources"] == list(render_kubernetes(DEFAULT, OPTIONS))
    for name in kustomization["resources"]:
        validate(yaml.safe_load((tmp_path / name).read_text()))
