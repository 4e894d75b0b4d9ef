"""Kubernetes manifests for a cluster running kube-prometheus-stack (Prometheus Operator),
rendered as a kustomize directory from the sources of the local stack.

The PrometheusRule holds the same rule groups as the local rule file, the dashboard ConfigMap
the same Grafana JSON. kube-prometheus-stack selects ServiceMonitors and PrometheusRules by
the ``release`` label of its Helm release, and its Grafana sidecar loads ConfigMaps labelled
``grafana_dashboard: "1"`` and ``grafana_datasource: "1"``. The HorizontalPodAutoscaler
scales on the batching queue's depth, served to it by prometheus-adapter.

The cluster is shared: the rules read the series of this namespace's Service only (see
``rule_scope``), the datasource is not the default one (kube-prometheus-stack's Grafana
refuses two defaults), and the ServiceMonitor caps the series one pod may send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inferwatch.metrics.names import QUEUE_DEPTH
from inferwatch.stack.compose import IMAGE
from inferwatch.stack.grafana import render_dashboard, render_provisioning
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import Profile
from inferwatch.stack.rules import RuleScope, render_rule_file, runbook_base_url
from inferwatch.stack.slo import SLO
from inferwatch.stack.yamlfile import dump_yaml, write_yaml

__all__ = [
    "QUEUE_METRIC",
    "REMOTE_WRITE_KINDS",
    "KubernetesOptions",
    "adapter_values",
    "render_kubernetes",
    "rule_scope",
    "stack_values",
    "write_kubernetes",
]

QUEUE_METRIC = QUEUE_DEPTH  # the gauge the autoscaler reads, per model and pod
NAME = "inferwatch"
PORT = 8080
REMOTE_WRITE_KINDS = ("thanos", "mimir", "victoriametrics")
REPLICA_LABEL = "prometheus_replica"  # the Operator's default replicaExternalLabelName
# Mimir's HA tracker keeps one replica of each `cluster` by these labels (its defaults).
MIMIR_REPLICA_LABEL = "__replica__"


@dataclass(frozen=True)
class KubernetesOptions:
    namespace: str = NAME
    monitoring_namespace: str = "monitoring"  # where kube-prometheus-stack runs
    release: str = "kube-prometheus-stack"  # its Helm release: the `release` label it selects
    image: str = IMAGE
    replicas: int = 2
    max_replicas: int = 10
    queue_target: int = 8  # average samples waiting per pod that the autoscaler aims at
    models: Sequence[str] = ("digits",)
    node_job: str = "node-exporter"  # kube-prometheus-stack's job name of node_exporter
    runbook_base: str | None = None  # None: derived from pyproject.toml's repository URL
    # A pod serving digits exposes about 350 series, one serving resnet18 too about 1,660
    # (docs/deploy.md, "Cardinality budget"): above this the scrape fails, TargetDown fires.
    sample_limit: int = 2000
    prometheus_replicas: int = 2
    alertmanager_replicas: int = 3
    cluster: str | None = None  # the `cluster` external label
    remote_write_url: str | None = None
    remote_write_kind: str = "thanos"  # one of REMOTE_WRITE_KINDS

    @property
    def prometheus_url(self) -> str:
        # The Operator's governing Service, whatever the release is called.
        return f"http://prometheus-operated.{self.monitoring_namespace}.svc:9090"


SELECTOR = {"app.kubernetes.io/name": NAME}
LABELS = {**SELECTOR, "app.kubernetes.io/part-of": NAME}


def _meta(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**LABELS, **labels}}


def _deployment(o: KubernetesOptions) -> dict[str, Any]:
    args = ["serve", "--host", "0.0.0.0", "--port", str(PORT)]
    for model in o.models:
        args += ["--model", model]
    container = {
        "name": NAME, "image": o.image, "args": args,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                           "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME, o.namespace),
        "spec": {
            "replicas": o.replicas, "selector": {"matchLabels": dict(SELECTOR)},
            "template": {"metadata": {"labels": dict(LABELS)}, "spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            }},
        },
    }


def _service(o: KubernetesOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(NAME, o.namespace),
            "spec": {"selector": dict(SELECTOR), "ports": [
                {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}


def _service_monitor(o: KubernetesOptions, profile: Profile) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": _meta(NAME, o.namespace, release=o.release),
        "spec": {
            "selector": {"matchLabels": dict(SELECTOR)},
            "namespaceSelector": {"matchNames": [o.namespace]},
            "endpoints": [{"port": "http", "path": "/metrics",
                           "interval": profile.scrape_interval}],
            "sampleLimit": o.sample_limit,
        },
    }


def rule_scope(o: KubernetesOptions) -> RuleScope:
    """The rules' selectors: the Operator names a ServiceMonitor's job after the Service, and
    every series of a pod carries its namespace; what the rules record keeps the namespace,
    and the host recordings are labelled with it (node_exporter's own is its pods')."""
    namespace = f'namespace="{o.namespace}"'
    service = f'job="{NAME}", {namespace}'
    return RuleScope(service=service, node=f'job="{o.node_job}"', targets=service,
                     recorded=namespace, batch=namespace,
                     host_labels={"namespace": o.namespace})


def _prometheus_rule(o: KubernetesOptions, profile: Profile,
                     slos: Sequence[SLO] | None) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": _meta(NAME, o.namespace, release=o.release),
        "spec": render_rule_file(profile, slos, runbook_base_url(o.runbook_base),
                                 rule_scope(o)),
    }


def _config_map(name: str, namespace: str, data: dict[str, str], **labels: str
                ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(name, namespace, **labels), "data": data}


def _autoscaler(o: KubernetesOptions) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(NAME, o.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
            "minReplicas": o.replicas, "maxReplicas": o.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(o.queue_target)},
            }}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def adapter_values(o: KubernetesOptions) -> dict[str, Any]:
    """Helm values of prometheus-community/prometheus-adapter: the queue depth per pod, summed
    over models, as a custom metric of the pods."""
    return {
        "prometheus": {"url": f"http://prometheus-operated.{o.monitoring_namespace}.svc",
                       "port": 9090},
        "rules": {"default": False, "custom": [{
            "seriesQuery": f'{QUEUE_METRIC}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                        "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{QUEUE_METRIC}$", "as": QUEUE_METRIC},
            "metricsQuery": "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
        }]},
    }


def _remote_write(o: KubernetesOptions) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"url": o.remote_write_url}
    if o.remote_write_kind == "victoriametrics":
        # VictoriaMetrics deduplicates samples of identical series: both replicas must send
        # the same labels.
        endpoint["writeRelabelConfigs"] = [{"action": "labeldrop", "regex": REPLICA_LABEL}]
    return endpoint


def stack_values(o: KubernetesOptions) -> dict[str, Any]:
    """Helm values of kube-prometheus-stack: Prometheus and Alertmanager highly available,
    and remote_write to a long-term store when one is given.

    Thanos Query deduplicates on ``prometheus_replica`` (``--query.replica-label``); Mimir's
    HA tracker keeps one replica per ``cluster`` by ``__replica__``, which it drops.
    """
    if o.remote_write_kind not in REMOTE_WRITE_KINDS:
        raise ValueError(f"unknown remote_write kind {o.remote_write_kind!r}; known: "
                         f"{', '.join(REMOTE_WRITE_KINDS)}")
    if o.remote_write_url is not None:
        parts = urlsplit(o.remote_write_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--remote-write-url must be an absolute http(s) URL, not "
                             f"{o.remote_write_url!r}")
    mimir = o.remote_write_url is not None and o.remote_write_kind == "mimir"
    if mimir and o.cluster is None:
        raise ValueError("remote_write to Mimir needs --cluster: its HA tracker tells "
                         "replica pairs apart by the `cluster` label")
    spec: dict[str, Any] = {
        "replicas": o.prometheus_replicas,
        "replicaExternalLabelName": MIMIR_REPLICA_LABEL if mimir else REPLICA_LABEL,
    }
    if o.cluster is not None:
        spec["externalLabels"] = {"cluster": o.cluster}
    if o.remote_write_url is not None:
        spec["remoteWrite"] = [_remote_write(o)]
    return {"prometheus": {"prometheusSpec": spec},
            "alertmanager": {"alertmanagerSpec": {"replicas": o.alertmanager_replicas}}}


def render_kubernetes(profile: Profile, o: KubernetesOptions,
                      slos: Sequence[SLO] | None = None) -> dict[str, dict[str, Any]]:
    """The kustomize resources by file name (``kustomization.yaml`` not included)."""
    # Not the default datasource: kube-prometheus-stack's Grafana has one, and refuses to
    # start with two ("Only one datasource per organization can be marked as default").
    datasource = render_provisioning(profile, Path("/unused"), o.prometheus_url,
                                     default=False)["datasources"]
    return {
        "namespace.yaml": {"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": o.namespace, "labels": dict(LABELS)}},
        "deployment.yaml": _deployment(o),
        "service.yaml": _service(o),
        "servicemonitor.yaml": _service_monitor(o, profile),
        "prometheusrule.yaml": _prometheus_rule(o, profile, slos),
        "hpa.yaml": _autoscaler(o),
        "grafana-dashboard.yaml": _config_map(
            f"{NAME}-dashboard", o.monitoring_namespace,
            {f"{DASHBOARD.uid}.json": render_dashboard(profile)}, grafana_dashboard="1"),
        "grafana-datasource.yaml": _config_map(
            f"{NAME}-datasource", o.monitoring_namespace,
            {"inferwatch-datasource.yaml": dump_yaml(datasource)}, grafana_datasource="1"),
    }


def write_kubernetes(directory: Path, profile: Profile, o: KubernetesOptions,
                     slos: Sequence[SLO] | None = None) -> dict[str, Path]:
    """Write the manifests, their ``kustomization.yaml``, and the Helm values of
    prometheus-adapter and kube-prometheus-stack."""
    resources = render_kubernetes(profile, o, slos)
    values = stack_values(o)  # before any file is written: it checks the options
    paths = {name: write_yaml(directory / name, obj) for name, obj in resources.items()}
    paths["kustomization.yaml"] = write_yaml(directory / "kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": list(resources)})
    paths["prometheus-adapter-values.yaml"] = write_yaml(
        directory / "prometheus-adapter-values.yaml", adapter_values(o))
    paths["kube-prometheus-stack-values.yaml"] = write_yaml(
        directory / "kube-prometheus-stack-values.yaml", values)
    return paths
