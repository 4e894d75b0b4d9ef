"""Recording and alert rules, defined once and rendered to Prometheus rule files.

Names of recording rules follow ``level:metric:operations``. SLO alerts are the multiwindow,
multi-burn-rate alerts of the SRE workbook; every window's ratio is a ratio of summed
increases over that window (request-weighted), never an average of shorter ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inferwatch.stack.native import NATIVE_SERVERS, NativeServer
from inferwatch.stack.profiles import Profile, parse_duration
from inferwatch.stack.slo import SLO, load_slos

RUNBOOK_BASE = "docs/runbooks.md"


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def annotations(self, runbook_base: str = RUNBOOK_BASE) -> dict[str, str]:
        return {"summary": self.summary, "description": self.description,
                "runbook_url": f"{runbook_base}#{self.name.lower()}"}

    def render(self, runbook_base: str = RUNBOOK_BASE) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": self.annotations(runbook_base),
        }


@dataclass(frozen=True)
class RuleGroup:
    name: str
    rules: Sequence[RecordingRule | AlertRule]
    interval: str | None = None


# Multiwindow, multi-burn-rate pairs: (long window, short window, burn-rate factor).
PAGE_WINDOWS = (("1h", "5m", 14.4), ("6h", "30m", 6.0))
TICKET_WINDOWS = (("1d", "2h", 3.0), ("3d", "6h", 1.0))
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

# Thresholds of the alerts that are not SLO-driven.
ERROR_RATIO_THRESHOLD = 0.05
QUEUE_SATURATION_THRESHOLD = 0.8
HOST_CPU_THRESHOLD = 0.9
HOST_MEMORY_THRESHOLD = 0.9
DRIFT_PSI_THRESHOLD = 0.25  # the usual reading of PSI: above 0.25 is a significant shift
GPU_UTILISATION_THRESHOLD = 0.9  # the seed's "GPU > 90%"
# Caching allocators (torch) and servers that reserve memory up front (vLLM takes 90% by
# default) sit near 90% by design; above 95% the next larger batch may not fit.
GPU_MEMORY_THRESHOLD = 0.95


def cpu_record(profile: Profile) -> str:
    return f"instance:node_cpu_utilisation:rate{profile.rate_window}"


MEMORY_RECORD = "instance:node_memory_utilisation:ratio"


def feedback_record(profile: Profile, name: str = "accuracy") -> str:
    return f"model:inference_feedback_{name}:ratio_rate{profile.rate_window}"


def error_ratio_record(window: str) -> str:
    return f"model:inference_availability_errors:ratio_rate{window}"


def slow_ratio_record(window: str) -> str:
    return f"model:inference_latency_slow:ratio_rate{window}"


def service_recordings(profile: Profile) -> list[RecordingRule]:
    w = profile.rate_window
    rules = [
        RecordingRule(f"model:inference_requests:rate{w}",
                      f"sum by (model) (rate(inference_requests_total[{w}]))"),
        RecordingRule(f"model:inference_errors:ratio_rate{w}",
                      f"sum by (model) (rate(inference_errors_total[{w}]))"
                      f" / sum by (model) (rate(inference_requests_total[{w}]))"),
    ]
    for q in ("50", "95", "99"):
        rules.append(RecordingRule(
            f"model:inference_latency_seconds:p{q}_rate{w}",
            f"histogram_quantile(0.{q}, sum by (model, le) "
            f"(rate(inference_latency_seconds_bucket[{w}])))"))
    for name, metric in (("accuracy", "inference_feedback"),
                         ("top5_accuracy", "inference_feedback_top5")):
        rules.append(RecordingRule(
            feedback_record(profile, name),
            f'sum by (model) (rate({metric}_total{{outcome="correct"}}[{w}]))'
            f" / sum by (model) (rate({metric}_total[{w}]))"))
    rules.append(RecordingRule(
        f"model_stage:inference_stage_seconds:p95_rate{w}",
        f"histogram_quantile(0.95, sum by (model, stage, le) "
        f"(rate(inference_stage_seconds_bucket[{w}])))"))
    return rules


def native_recordings(servers: Sequence[NativeServer] = NATIVE_SERVERS) -> list[RecordingRule]:
    """Each server's own series under the canonical names (see ``stack/native.py``): the
    rules below, the panels and ``diagnose`` then read a server without inferwatch in front
    of it. The canonical names are kept, not ``level:metric:operations``, for that reason."""
    return [RecordingRule(record, expr, labels)
            for server in servers for record, expr, labels in server.recorded()]


# The node-mixin formulas (node_exporter's own mixin), per instance. ``node_job`` is the
# scrape job of node_exporter: "node" here, "node-exporter" in kube-prometheus-stack.
def cpu_utilisation_expr(window: str, node_job: str = "node") -> str:
    return ('1 - avg without (cpu) (sum without (mode) (rate(node_cpu_seconds_total'
            f'{{job="{node_job}", mode=~"idle|iowait|steal"}}[{window}])))')


def memory_utilisation_expr(node_job: str = "node") -> str:
    sel = f'job="{node_job}"'
    return (f"1 - (node_memory_MemAvailable_bytes{{{sel}}}"
            f" / node_memory_MemTotal_bytes{{{sel}}})")


def host_recordings(profile: Profile, node_job: str = "node") -> list[RecordingRule]:
    return [
        RecordingRule(cpu_record(profile), cpu_utilisation_expr(profile.rate_window, node_job)),
        RecordingRule(MEMORY_RECORD, memory_utilisation_expr(node_job)),
    ]


def slo_recordings(slos: Sequence[SLO]) -> list[RecordingRule]:
    """Error and slow-request ratios per SLO window, each a ratio of summed increases."""
    rules = []
    for w in SLO_WINDOWS:
        rules.append(RecordingRule(
            error_ratio_record(w),
            f"sum by (model) (increase(inference_errors_total[{w}]))"
            f" / sum by (model) (increase(inference_requests_total[{w}]))"))
    for slo in slos:
        if slo.latency_threshold is None:
            continue
        # The threshold bucket differs per model; the static label keeps rules distinct.
        sel = f'model="{slo.model}"'
        for w in SLO_WINDOWS:
            ok = f"sum by (model) (increase(inference_latency_seconds_count{{{sel}}}[{w}]))"
            fast = (f"sum by (model) (increase(inference_latency_seconds_bucket"
                    f'{{{sel}, le="{slo.le}"}}[{w}]))')
            rules.append(RecordingRule(slow_ratio_record(w), f"({ok} - {fast}) / {ok}",
                                       {"model": slo.model}))
    return rules


def _burn_expr(record: Any, slo_model: str, budget: float,
               pairs: Sequence[tuple[str, str, float]]) -> str:
    parts = []
    for long, short, factor in pairs:
        threshold = f"{factor * budget:.6g}"
        parts.append(f'({record(long)}{{model="{slo_model}"}} > {threshold}'
                     f' and {record(short)}{{model="{slo_model}"}} > {threshold})')
    return "\n  or\n".join(parts)


# (name suffix, window pairs, for, severity, how fast)
_BURN_SPEEDS = (("Fast", PAGE_WINDOWS, "2m", "critical", "fast"),
                ("Slow", TICKET_WINDOWS, "15m", "warning", "slowly"))


def _windows_text(pairs: Sequence[tuple[str, str, float]]) -> str:
    return ", or ".join(f"{long} and {short} above {factor:g}x" for long, short, factor in pairs)


def slo_alerts(slo: SLO) -> list[AlertRule]:
    m = slo.model
    slis = []  # only the objectives that the SLO sets
    if slo.availability is not None:
        avail = f"{slo.availability * 100:.6g}%"
        slis.append(("Error", "availability", error_ratio_record, slo.error_budget, "error",
                     f"fails requests faster than its {avail} availability objective over "
                     f"{slo.window} allows"))
    if slo.latency_objective is not None and slo.latency_threshold is not None:
        lat = f"{slo.latency_objective * 100:.6g}%"
        thr = f"{slo.latency_threshold * 1000:g} ms"
        slis.append(("Latency", "latency", slow_ratio_record, slo.latency_budget, "latency",
                     f"serves more requests slower than {thr} than its objective ({lat} "
                     f"within {thr} over {slo.window}) allows"))
    return [
        AlertRule(
            f"Inference{sli}BudgetBurn{suffix}",
            _burn_expr(record, m, budget, pairs), hold, severity,
            f"Model {m} is {how} burning its {budget_name} budget"
            if how != "fast" else f"Model {m} is burning its {budget_name} budget fast",
            f"Model {m} {what} ({_windows_text(pairs)}).",
            {"slo": slo_label, "model": m})
        for sli, slo_label, record, budget, budget_name, what in slis
        for suffix, pairs, hold, severity, how in _BURN_SPEEDS
    ]


def service_alerts(profile: Profile, slos: Sequence[SLO]) -> list[AlertRule]:
    w = profile.rate_window
    rules = [
        # The seed's rule, kept as written; its window and `for` follow the profile.
        AlertRule(
            "HighInferenceErrorRate",
            f"rate(inference_errors_total[{w}]) / rate(inference_requests_total[{w}])"
            f" > {ERROR_RATIO_THRESHOLD}",
            profile.error_alert_for, "critical",
            "High inference error rate on {{ $labels.instance }}",
            "The inference error ratio of model {{ $labels.model }} on {{ $labels.instance }}"
            f" over the last {w} is {{{{ $value | humanizePercentage }}}}, above the "
            f"{ERROR_RATIO_THRESHOLD:.0%} threshold."),
        AlertRule(
            "TargetDown", "up == 0", profile.error_alert_for, "critical",
            "{{ $labels.job }} target {{ $labels.instance }} is down",
            "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}); its "
            "metrics and the alerts built on them are blind until it is back."),
        AlertRule(
            "InferenceQueueSaturated",
            "max by (model, instance) (inference_queue_depth / inference_queue_capacity)"
            f" > {QUEUE_SATURATION_THRESHOLD}",
            profile.error_alert_for, "warning",
            "Batching queue of {{ $labels.model }} on {{ $labels.instance }} is nearly full",
            "The queue is {{ $value | humanizePercentage }} full; beyond capacity requests are "
            "shed with 503."),
        AlertRule(
            "InferenceRequestsShed",
            "sum by (model, instance) (rate(inference_error_reasons_total"
            f'{{reason="overloaded"}}[{w}])) > 0',
            profile.error_alert_for, "warning",
            "{{ $labels.instance }} sheds requests for {{ $labels.model }}",
            "The service answers 503 overloaded to {{ $value | humanize }} requests per second."),
        AlertRule(
            "HostCpuHigh", f"{cpu_record(profile)} > {HOST_CPU_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "CPU of {{ $labels.instance }} is nearly saturated",
            "CPU utilisation is {{ $value | humanizePercentage }}: inference latency grows "
            "with queueing for CPU."),
        AlertRule(
            "HostMemoryHigh", f"{MEMORY_RECORD} > {HOST_MEMORY_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "Memory of {{ $labels.instance }} is nearly exhausted",
            "Memory utilisation is {{ $value | humanizePercentage }}."),
        AlertRule(
            "GPUHighUtilisation",
            f"avg_over_time(inferwatch_gpu_utilization_ratio[{w}]) > {GPU_UTILISATION_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }} is saturated",
            f"The GPU ran kernels {{{{ $value | humanizePercentage }}}} of the time over {w}: "
            "batches queue for it and latency grows with load."),
        AlertRule(
            "GPUMemoryHigh",
            "inferwatch_gpu_memory_used_bytes / inferwatch_gpu_memory_total_bytes"
            f" > {GPU_MEMORY_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "Memory of GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }} "
            "is nearly full",
            "{{ $value | humanizePercentage }} of the GPU's memory is allocated: a larger batch "
            "or another model may fail with out-of-memory."),
    ]
    rules.append(AlertRule(
        "ModelDrift",
        f"max by (model, feature) (inference_drift_psi) > {DRIFT_PSI_THRESHOLD}",
        profile.slow_alert_for, "warning",
        "Inputs of {{ $labels.model }} drifted from the training data ({{ $labels.feature }})",
        "The Population Stability Index of {{ $labels.feature }} over the last window of "
        'inputs is {{ printf "%.2f" $value }} (above ' + f"{DRIFT_PSI_THRESHOLD:g}" + "): the "
        "model sees data unlike what it was trained on."))
    for slo in slos:
        m = slo.model
        if slo.accuracy is not None:
            rules.append(AlertRule(
                "AccuracyDrop",
                f'{feedback_record(profile)}{{model="{m}"}} < {slo.accuracy:g}',
                # A warning, like ModelDrift: a critical one would inhibit the drift alert
                # that usually explains it.
                profile.slow_alert_for, "warning",
                f"Accuracy of {m} from labelled feedback fell below {slo.accuracy:.0%}",
                f"Over the last {w}, {{{{ $value | humanizePercentage }}}} of the answers of "
                f"model {m} that got labelled feedback were right; its objective is "
                f"{slo.accuracy:.0%}.",
                {"model": m}))
        if slo.latency_threshold is not None:
            threshold = slo.latency_threshold
            rules.append(AlertRule(
                "InferenceLatencyHigh",
                "histogram_quantile(0.95, sum by (model, le) (rate("
                f'inference_latency_seconds_bucket{{model="{m}"}}[{w}]))) > {threshold:g}',
                profile.slow_alert_for, "warning",
                f"p95 latency of {m} is above {threshold * 1000:g} ms",
                f"The p95 latency of model {m} over {w} is above its objective of "
                f"{threshold * 1000:g} ms; see the per-stage latency panels for where "
                "the time goes.",
                {"model": m}))
        if slo.expect_traffic:
            rules.append(AlertRule(
                "InferenceNoTraffic",
                f'sum by (model) (rate(inference_requests_total{{model="{m}"}}[{w}])) == 0'
                f'\nor absent(inference_requests_total{{model="{m}"}})',
                profile.slow_alert_for, "warning",
                f"Model {m} receives no requests",
                f"Model {m} is expected to serve traffic but received none over {w}: clients, "
                "load balancer or discovery may be broken.",
                {"model": m}))
    return rules


def batch_alerts(profile: Profile) -> list[AlertRule]:
    """Batch jobs push to the Pushgateway, which stamps every push: a stale stamp is a job
    that stopped running (a failed run still pushes, so its metrics say why it failed)."""
    stale = profile.batch_stale_after
    return [AlertRule(
        "BatchJobStale",
        f"time() - max by (job, instance) (push_time_seconds) > {parse_duration(stale):g}",
        profile.error_alert_for, "warning",
        "Batch job {{ $labels.job }} on {{ $labels.instance }} stopped pushing",
        "The last push of batch job {{ $labels.job }} (instance {{ $labels.instance }}) to the "
        "Pushgateway was {{ $value | humanizeDuration }} ago, more than " + stale + ": the job "
        "no longer runs, or cannot reach the Pushgateway.")]


def rule_groups(profile: Profile, slos: Sequence[SLO] | None = None,
                node_job: str = "node") -> list[RuleGroup]:
    slos = load_slos() if slos is None else slos
    groups = [
        RuleGroup("inferwatch-native", native_recordings()),
        RuleGroup("inferwatch-service-recording", service_recordings(profile)),
        RuleGroup("inferwatch-host-recording", host_recordings(profile, node_job)),
        RuleGroup("inferwatch-alerts", service_alerts(profile, slos)),
        RuleGroup("inferwatch-batch-jobs", batch_alerts(profile)),
    ]
    # Recordings and the alerts that read them share a group: evaluated in order.
    groups.append(RuleGroup("inferwatch-slo", [
        *slo_recordings(slos), *(a for slo in slos for a in slo_alerts(slo))
    ], interval="1m"))
    return groups


def render_rule_file(profile: Profile, slos: Sequence[SLO] | None = None,
                     runbook_base: str = RUNBOOK_BASE, node_job: str = "node") -> dict[str, Any]:
    out = []
    for group in rule_groups(profile, slos, node_job):
        rendered: dict[str, Any] = {"name": group.name}
        if group.interval:
            rendered["interval"] = group.interval
        rendered["rules"] = [r.render(runbook_base) if isinstance(r, AlertRule) else r.render()
                             for r in group.rules]
        out.append(rendered)
    return {"groups": out}


def alert_names(profile: Profile, slos: Sequence[SLO] | None = None) -> list[str]:
    return sorted({r.name for g in rule_groups(profile, slos) for r in g.rules
                   if isinstance(r, AlertRule)})
