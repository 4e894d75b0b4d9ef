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
import json
import re
from importlib import metadata
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
    rule_scope,
    stack_values,
    write_kubernetes,
)
from inferwatch.stack.profiles import DEFAULT
from inferwatch.stack.rules import (
    alert_names,
    render_rule_file,
    repository_runbooks,
    runbook_base_url,
)
from inferwatch.stack.yamlfile import dump_yaml

KUBERNETES_VERSIONS = ("1.25", "1.37")
OPERATOR_GROUP = "monitoring.coreos.com/v1"
RUNBOOKS = "https://runbooks.example.org/ml/inferwatch/runbooks.md"
OPTIONS = KubernetesOptions(namespace="ml", runbook_base=RUNBOOKS)
# An aggregation operator, and the grouping that follows it, if any.
AGGREGATION = re.compile(r"\b(sum|min|max|avg|group|count|stddev|stdvar|topk|bottomk|quantile)"
                         r"\s*(by|without)?\s*\(([^)]*)\)?")


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
    assert rule["spec"] == render_rule_file(DEFAULT, runbook_base=RUNBOOKS,
                                            scope=rule_scope(OPTIONS))
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
    chosen = render_kubernetes(DEFAULT, KubernetesOptions(release="monitoring",
                                                          runbook_base=RUNBOOKS))
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


def test_no_datasource_is_marked_default(resources: dict[str, dict[str, Any]]) -> None:
    """kube-prometheus-stack's Grafana has its own default and refuses a second one."""
    for name, obj in resources.items():
        assert "isDefault" not in dump_yaml(obj), name
    datasource = yaml.safe_load(
        next(iter(resources["grafana-datasource.yaml"]["data"].values())))["datasources"][0]
    assert datasource["jsonData"]["timeInterval"] == DEFAULT.scrape_interval


def test_every_panel_and_variable_reads_the_datasource_variable(
        resources: dict[str, dict[str, Any]]) -> None:
    dashboard = json.loads(next(iter(resources["grafana-dashboard.yaml"]["data"].values())))
    variables = dashboard["templating"]["list"]
    chooser = variables[0]
    assert (chooser["name"], chooser["type"], chooser["query"]) == (
        "datasource", "datasource", "prometheus")
    references = [v["datasource"] for v in variables[1:]]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            references += [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
    assert len(references) > len(dashboard["panels"])
    assert all(r == {"type": "prometheus", "uid": "${datasource}"} for r in references)


def rules_of(resources: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in resources["prometheusrule.yaml"]["spec"]["groups"] for r in g["rules"]]


def test_every_runbook_url_is_absolute_under_the_given_base(
        resources: dict[str, dict[str, Any]]) -> None:
    alerts = [r for r in rules_of(resources) if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOKS}#{alert['alert'].lower()}"


def test_runbook_base_comes_from_the_option_or_the_declared_repository() -> None:
    declared = repository_runbooks(metadata.metadata("inferwatch").get_all("Project-URL") or [])
    if declared is None:  # pyproject.toml names no repository: the option is required
        with pytest.raises(ValueError, match="--runbook-base-url"):
            render_kubernetes(DEFAULT, KubernetesOptions())
    else:
        assert runbook_base_url() == declared
    for relative in ("docs/runbooks.md", "runbooks.example.org/x", "https://h.example.org/r#x"):
        with pytest.raises(ValueError, match="absolute"):
            runbook_base_url(relative)


def test_every_aggregation_keeps_namespace_and_cluster(
        resources: dict[str, dict[str, Any]]) -> None:
    """Two namespaces running inferwatch, or two clusters behind one Thanos, never merge."""
    found = 0
    for rule in rules_of(resources):
        for operator, grouping, labels in AGGREGATION.findall(rule["expr"]):
            found += 1
            assert grouping, (operator, rule["expr"])  # a bare sum(...) merges everything
            if grouping == "by":
                kept = {label.strip() for label in labels.split(",")}
                assert {"namespace", "cluster"} <= kept, rule["expr"]
            else:
                assert not {"namespace", "cluster"} & set(labels.split(", ")), rule["expr"]
    assert found > 50


def test_rules_read_this_namespaces_service_only(resources: dict[str, dict[str, Any]]) -> None:
    service, recorded = 'job="inferwatch", namespace="ml"', 'namespace="ml"'
    alerts = {r["alert"]: r["expr"] for r in rules_of(resources) if "alert" in r}
    assert alerts["TargetDown"] == f"up{{{service}}} == 0"
    for host in ("HostCpuHigh", "HostMemoryHigh"):
        assert re.match(r'instance:node_\w+:\w+\{job="node-exporter", namespace="ml"\} > ',
                        alerts[host])
    assert 'push_time_seconds{namespace="ml"}' in alerts["BatchJobStale"]
    for name, expr in alerts.items():
        assert service in expr or recorded in expr or 'job="node-exporter"' in expr, name
    groups = resources["prometheusrule.yaml"]["spec"]["groups"]
    service_recordings = next(g for g in groups if g["name"] == "inferwatch-service-recording")
    for rule in service_recordings["rules"]:
        assert rule["expr"].count("{" + service) == rule["expr"].count("{"), rule["expr"]


def test_service_monitor_caps_the_series_of_a_pod(resources: dict[str, dict[str, Any]]) -> None:
    assert resources["servicemonitor.yaml"]["spec"]["sampleLimit"] == OPTIONS.sample_limit
    broken = copy.deepcopy(resources["servicemonitor.yaml"])
    broken["spec"]["sampleLimit"] = "2k"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


@functools.cache
def spec_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of the ``spec`` of an Operator kind (made strict, as above)."""
    return {"$defs": operator_schema(kind)["$defs"], "$ref": f"#/$defs/{kind}Spec"}


def validate_values(values: dict[str, Any]) -> None:
    """kube-prometheus-stack passes these fields to the Prometheus and Alertmanager CRDs."""
    jsonschema.Draft202012Validator(spec_schema("Prometheus")).validate(
        values["prometheus"]["prometheusSpec"])
    jsonschema.Draft202012Validator(spec_schema("Alertmanager")).validate(
        values["alertmanager"]["alertmanagerSpec"])


def test_stack_values_make_prometheus_and_alertmanager_highly_available() -> None:
    values = stack_values(OPTIONS)
    validate_values(values)
    assert values == {
        "prometheus": {"prometheusSpec": {"replicas": 2,
                                          "replicaExternalLabelName": "prometheus_replica"}},
        "alertmanager": {"alertmanagerSpec": {"replicas": 3}}}
    broken = copy.deepcopy(values)
    broken["prometheus"]["prometheusSpec"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate_values(broken)


@pytest.mark.parametrize(("kind", "replica_label", "relabel"), [
    ("thanos", "prometheus_replica", None),
    ("mimir", "__replica__", None),
    ("victoriametrics", "prometheus_replica",
     [{"action": "labeldrop", "regex": "prometheus_replica"}]),
])
def test_stack_values_remote_write(kind: str, replica_label: str,
                                   relabel: list[dict[str, str]] | None) -> None:
    url = "https://store.example.org/api/v1/push"
    values = stack_values(KubernetesOptions(runbook_base=RUNBOOKS, remote_write_url=url,
                                            remote_write_kind=kind, cluster="eu-1"))
    validate_values(values)
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["replicaExternalLabelName"] == replica_label
    assert spec["externalLabels"] == {"cluster": "eu-1"}
    assert spec["remoteWrite"] == [{"url": url, **({"writeRelabelConfigs": relabel}
                                                   if relabel else {})}]


@pytest.mark.parametrize(("options", "message"), [
    ({"remote_write_url": "https://m.example.org/api/v1/push", "remote_write_kind": "mimir"},
     "--cluster"),
    ({"remote_write_url": "https://m.example.org/x", "remote_write_kind": "cortex"}, "kind"),
    ({"remote_write_url": "store:9090/api/v1/write"}, "absolute"),
])
def test_stack_values_refuse_what_cannot_work(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stack_values(KubernetesOptions(runbook_base=RUNBOOKS, **options))
