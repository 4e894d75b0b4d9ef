"""Kubernetes manifests for a cluster running kube-prometheus-stack (Prometheus Operator),
rendered as a kustomize directory from the sources of the local stack.

The PrometheusRule holds the same rule groups as the local rule file, the dashboard ConfigMap
the same Grafana JSON. kube-prometheus-stack selects ServiceMonitors and PrometheusRules by
the ``release`` label of its Helm release, and its Grafana sidecar loads ConfigMaps labelled
``grafana_dashboard: "1"`` and ``grafana_datasource: "1"``. The HorizontalPodAutoscaler
scales on the batching queue's depth, served to it by prometheus-adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferwatch.stack.compose import IMAGE
from inferwatch.stack.config import dump_yaml, write_yaml
from inferwatch.stack.grafana import render_dashboard, render_provisioning
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import Profile
from inferwatch.stack.rules import RUNBOOK_BASE, render_rule_file
from inferwatch.stack.slo import SLO

__all__ = [
    "QUEUE_METRIC",
    "KubernetesOptions",
    "adapter_values",
    "render_kubernetes",
    "write_kubernetes",
]

QUEUE_METRIC = "inference_queue_depth"  # the gauge the autoscaler reads, per model and pod
NAME = "inferwatch"
PORT = 8080


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
    runbook_base: str = RUNBOOK_BASE

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
        },
    }


def _prometheus_rule(o: KubernetesOptions, profile: Profile,
                     slos: Sequence[SLO] | None) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": _meta(NAME, o.namespace, release=o.release),
        "spec": render_rule_file(profile, slos, o.runbook_base, node_job=o.node_job),
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


def render_kubernetes(profile: Profile, o: KubernetesOptions,
                      slos: Sequence[SLO] | None = None) -> dict[str, dict[str, Any]]:
    """The kustomize resources by file name (``kustomization.yaml`` not included)."""
    datasource = render_provisioning(profile, Path("/unused"), o.prometheus_url)["datasources"]
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
    """Write the manifests, their ``kustomization.yaml`` and the prometheus-adapter values."""
    resources = render_kubernetes(profile, o, slos)
    paths = {name: write_yaml(directory / name, obj) for name, obj in resources.items()}
    paths["kustomization.yaml"] = write_yaml(directory / "kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": list(resources)})
    paths["prometheus-adapter-values.yaml"] = write_yaml(
        directory / "prometheus-adapter-values.yaml", adapter_values(o))
    return paths
