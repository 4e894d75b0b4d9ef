"""Recording and alert rules, defined once and rendered to Prometheus rule files.

Names of recording rules follow ``level:metric:operations``. SLO alerts are the multiwindow,
multi-burn-rate alerts of the SRE workbook; every window's ratio is a ratio of summed
increases over that window (request-weighted), never an average of shorter ratios.

Which series the rules read is set in one place, a ``RuleScope`` (the kubernetes-mixin's
``_config``): the local stack's job names here, a namespace's Service in Kubernetes, so that
one deployment's rules never read another's series in a shared Prometheus.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from inferwatch.metrics.names import (
    DRIFT_PSI,
    FEEDBACK_TOP5_TOTAL,
    FEEDBACK_TOTAL,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    REQUESTS_TOTAL,
    STAGE_SECONDS,
)
from inferwatch.stack.native import NATIVE_SERVERS, NativeServer
from inferwatch.stack.profiles import Profile, parse_duration
from inferwatch.stack.queries import (
    LOCAL_NODE,
    accuracy,
    cpu_utilisation,
    error_ratio,
    gpu_memory_ratio,
    gpu_utilisation,
    histogram_quantile,
    memory_utilisation,
    request_rate,
    select,
    shed_rate,
    slow_ratio,
)
from inferwatch.stack.slo import LATENCY_SLIS, SLO, LatencySLI, load_slos

RUNBOOK_BASE = "docs/runbooks.md"  # the local stack's: read in the checkout next to it
# Labels of ``[project.urls]`` in pyproject.toml that name the repository holding the docs.
_REPOSITORY_LABELS = ("repository", "source", "source code")


def repository_runbooks(project_urls: Iterable[str]) -> str | None:
    """docs/runbooks.md in the repository among the package's ``Project-URL`` entries.

    >>> repository_runbooks(["Repository, https://git.example.org/ml/inferwatch/"])
    'https://git.example.org/ml/inferwatch/blob/HEAD/docs/runbooks.md'
    >>> repository_runbooks(["Changelog, https://git.example.org/ml/inferwatch/releases"])
    """
    urls = {}
    for entry in project_urls:
        label, _, value = entry.partition(",")
        urls[label.strip().lower()] = value.strip().rstrip("/")
    for label in _REPOSITORY_LABELS:
        if urls.get(label):
            # HEAD names the default branch on GitHub and GitLab.
            return f"{urls[label]}/blob/HEAD/{RUNBOOK_BASE}"
    return None


def _project_urls() -> list[str]:
    try:
        return metadata.metadata("inferwatch").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return []


def runbook_base_url(given: str | None = None) -> str:
    """The absolute base of ``runbook_url`` for rules that others' Alertmanager and Grafana
    show: ``given``, or the runbooks in the repository that pyproject.toml declares."""
    base = given or repository_runbooks(_project_urls())
    if base is None:
        raise ValueError("pass --runbook-base-url: the URL where your team serves "
                         "docs/runbooks.md (pyproject.toml declares no repository URL to "
                         "derive it from)")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(f"--runbook-base-url must be an absolute http(s) URL without a "
                         f"#fragment, not {base!r}")
    return base


def job_matcher(jobs: Sequence[str]) -> str:
    return f'job="{jobs[0]}"' if len(jobs) == 1 else f'job=~"{"|".join(jobs)}"'


@dataclass(frozen=True)
class RuleScope:
    """Which series the rules read and which labels their aggregations keep.

    Each selector is PromQL matchers without braces; "" selects everything. ``keep`` is
    added to every ``by``: two namespaces (or clusters behind one Thanos or Mimir) running
    inferwatch then never merge, and over a label that is absent it changes nothing.
    """

    service: str  # the inference services' own series (and servers' ones once recorded)
    node: str  # node_exporter's
    targets: str  # the scrape targets whose `up` TargetDown watches
    recorded: str = ""  # the series that the recording rules below write
    batch: str = ""  # the series batch jobs push to the Pushgateway
    keep: tuple[str, ...] = ("cluster", "namespace")
    # Set on the host recordings: where several deployments record the same node_exporter
    # series, they keep the copies (and the alerts on each) apart, as `recorded` selects.
    host_labels: dict[str, str] = field(default_factory=dict)

    def grouping(self, *labels: str) -> tuple[str, ...]:
        return (*self.keep, *labels)

    def by(self, *labels: str) -> str:
        return f"by ({', '.join(self.grouping(*labels))})"


# The local stack's scrape jobs: stack/config.py and stack/compose.py name them, and
# tests/integration/test_rules.py checks that every job they render is one of these.
LOCAL_SERVICE_JOBS = ("inference", "proxy", *(s.name for s in NATIVE_SERVERS))
LOCAL_JOBS = (*LOCAL_SERVICE_JOBS, "node", "alertmanager", "prometheus", "pushgateway", "dcgm")
LOCAL_SCOPE = RuleScope(service=job_matcher(LOCAL_SERVICE_JOBS), node=LOCAL_NODE,
                        targets=job_matcher(LOCAL_JOBS))


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


def slow_ratio_record(window: str, sli: str = "latency") -> str:
    """The share of observations slower than the SLO's threshold; ``sli``: a LatencySLI key."""
    return f"model:inference_{sli}_slow:ratio_rate{window}"


def service_recordings(profile: Profile, scope: RuleScope = LOCAL_SCOPE) -> list[RecordingRule]:
    w = profile.rate_window
    s = scope.service
    by_model = scope.grouping("model")
    rules = [
        RecordingRule(f"model:inference_requests:rate{w}", request_rate(w, s, by=by_model)),
        RecordingRule(f"model:inference_errors:ratio_rate{w}", error_ratio(w, s, by=by_model)),
    ]
    for q in ("50", "95", "99"):
        rules.append(RecordingRule(f"model:inference_latency_seconds:p{q}_rate{w}",
                                   histogram_quantile(f"0.{q}", w, s, by=by_model)))
    for name, feedback in (("accuracy", FEEDBACK_TOTAL), ("top5_accuracy", FEEDBACK_TOP5_TOTAL)):
        rules.append(RecordingRule(feedback_record(profile, name),
                                   accuracy(w, s, by=by_model, feedback=feedback)))
    rules.append(RecordingRule(
        f"model_stage:inference_stage_seconds:p95_rate{w}",
        histogram_quantile(0.95, w, s, by=scope.grouping("model", "stage"),
                           histogram=STAGE_SECONDS)))
    return rules


def native_recordings(servers: Sequence[NativeServer] = NATIVE_SERVERS) -> list[RecordingRule]:
    """Each server's own series under the canonical names (see ``stack/native.py``): the
    rules below, the panels and ``diagnose`` then read a server without inferwatch in front
    of it. The canonical names are kept, not ``level:metric:operations``, for that reason."""
    return [RecordingRule(record, expr, labels)
            for server in servers for record, expr, labels in server.recorded()]


def host_recordings(profile: Profile, scope: RuleScope = LOCAL_SCOPE) -> list[RecordingRule]:
    return [
        RecordingRule(cpu_record(profile), cpu_utilisation(profile.rate_window, scope.node),
                      dict(scope.host_labels)),
        RecordingRule(MEMORY_RECORD, memory_utilisation(scope.node), dict(scope.host_labels)),
    ]


def slo_recordings(slos: Sequence[SLO], scope: RuleScope = LOCAL_SCOPE) -> list[RecordingRule]:
    """Error and slow-request ratios per SLO window, each a ratio of summed increases."""
    by_model = scope.grouping("model")
    rules = []
    for w in SLO_WINDOWS:
        rules.append(RecordingRule(
            error_ratio_record(w),
            error_ratio(w, scope.service, by=by_model, func="increase")))
    for slo in slos:
        for sli in LATENCY_SLIS:
            objective = slo.objective(sli)
            if objective is None:
                continue
            # The threshold bucket differs per model; the static label keeps rules distinct.
            sel = f'model="{slo.model}"'
            rules += [RecordingRule(slow_ratio_record(w, sli.key),
                                    slow_ratio(sli.histogram, objective.le, w, scope.service,
                                               sel, by=by_model),
                                    {"model": slo.model})
                      for w in SLO_WINDOWS]
    return rules


def _burn_expr(record: Callable[[str], str], slo_model: str, budget: float,
               pairs: Sequence[tuple[str, str, float]], scope: RuleScope) -> str:
    parts = []
    for long, short, factor in pairs:
        threshold = f"{factor * budget:.6g}"
        model = f'model="{slo_model}"'
        parts.append(f"({select(record(long), scope.recorded, model)} > {threshold}"
                     f" and {select(record(short), scope.recorded, model)} > {threshold})")
    return "\n  or\n".join(parts)


# (name suffix, window pairs, for, severity, how fast)
_BURN_SPEEDS = (("Fast", PAGE_WINDOWS, "2m", "critical", "fast"),
                ("Slow", TICKET_WINDOWS, "15m", "warning", "slowly"))


def _windows_text(pairs: Sequence[tuple[str, str, float]]) -> str:
    return ", or ".join(f"{long} and {short} above {factor:g}x" for long, short, factor in pairs)


# Per LatencySLI key: the alerts' name part, the budget's name, and what the model does.
_LATENCY_BURNS = {
    "latency": ("Latency", "latency", "serves more requests slower than {threshold}"),
    "time_to_first_token": ("TimeToFirstToken", "time-to-first-token",
                            "streams the first token of more requests later than {threshold}"),
    "inter_token_latency": ("InterTokenLatency", "inter-token latency",
                            "leaves more gaps between streamed tokens longer than {threshold}"),
}


def latency_burn_alert(sli: LatencySLI) -> str:
    """The burn-rate alerts' name on ``sli``, less their Fast or Slow."""
    return f"Inference{_LATENCY_BURNS[sli.key][0]}BudgetBurn"


def slo_alerts(slo: SLO, scope: RuleScope = LOCAL_SCOPE) -> list[AlertRule]:
    m = slo.model
    slis = []  # only the objectives that the SLO sets
    if slo.availability is not None:
        avail = f"{slo.availability * 100:.6g}%"
        slis.append(("Error", "availability", error_ratio_record, slo.error_budget, "error",
                     f"fails requests faster than its {avail} availability objective over "
                     f"{slo.window} allows"))
    for sli in LATENCY_SLIS:
        objective = slo.objective(sli)
        if objective is None:
            continue
        name, budget_name, what = _LATENCY_BURNS[sli.key]
        share = f"{objective.objective * 100:.6g}%"
        thr = f"{objective.threshold * 1000:g} ms"
        slis.append((name, sli.key, functools.partial(slow_ratio_record, sli=sli.key),
                     objective.budget, budget_name,
                     f"{what.format(threshold=thr)} than its objective ({share} within {thr} "
                     f"over {slo.window}) allows"))
    return [
        AlertRule(
            f"Inference{sli}BudgetBurn{suffix}",
            _burn_expr(record, m, budget, pairs, scope), hold, severity,
            f"Model {m} is {how} burning its {budget_name} budget"
            if how != "fast" else f"Model {m} is burning its {budget_name} budget fast",
            f"Model {m} {what} ({_windows_text(pairs)}).",
            {"slo": slo_label, "model": m})
        for sli, slo_label, record, budget, budget_name, what in slis
        for suffix, pairs, hold, severity, how in _BURN_SPEEDS
    ]


def service_alerts(profile: Profile, slos: Sequence[SLO],
                   scope: RuleScope = LOCAL_SCOPE) -> list[AlertRule]:
    w = profile.rate_window
    s = scope.service
    rules = [
        # The seed's rule, kept as written but for the scope; its window and `for` follow
        # the profile.
        AlertRule(
            "HighInferenceErrorRate",
            f"{error_ratio(w, s, by=None)} > {ERROR_RATIO_THRESHOLD}",
            profile.error_alert_for, "critical",
            "High inference error rate on {{ $labels.instance }}",
            "The inference error ratio of model {{ $labels.model }} on {{ $labels.instance }}"
            f" over the last {w} is {{{{ $value | humanizePercentage }}}}, above the "
            f"{ERROR_RATIO_THRESHOLD:.0%} threshold."),
        AlertRule(
            "TargetDown", f"{select('up', scope.targets)} == 0", profile.error_alert_for,
            "critical",
            "{{ $labels.job }} target {{ $labels.instance }} is down",
            "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}); its "
            "metrics and the alerts built on them are blind until it is back."),
        AlertRule(
            "InferenceQueueSaturated",
            f"max {scope.by('model', 'instance')} ({select(QUEUE_DEPTH, s)}"
            f" / {select(QUEUE_CAPACITY, s)}) > {QUEUE_SATURATION_THRESHOLD}",
            profile.error_alert_for, "warning",
            "Batching queue of {{ $labels.model }} on {{ $labels.instance }} is nearly full",
            "The queue is {{ $value | humanizePercentage }} full; beyond capacity requests are "
            "shed with 503."),
        AlertRule(
            "InferenceRequestsShed",
            f"{shed_rate(w, s, by=scope.grouping('model', 'instance'))} > 0",
            profile.error_alert_for, "warning",
            "{{ $labels.instance }} sheds requests for {{ $labels.model }}",
            "The service answers 503 overloaded to {{ $value | humanize }} requests per second."),
        AlertRule(
            "HostCpuHigh",
            f"{select(cpu_record(profile), scope.node, scope.recorded)} > {HOST_CPU_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "CPU of {{ $labels.instance }} is nearly saturated",
            "CPU utilisation is {{ $value | humanizePercentage }}: inference latency grows "
            "with queueing for CPU."),
        AlertRule(
            "HostMemoryHigh",
            f"{select(MEMORY_RECORD, scope.node, scope.recorded)} > {HOST_MEMORY_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "Memory of {{ $labels.instance }} is nearly exhausted",
            "Memory utilisation is {{ $value | humanizePercentage }}."),
        AlertRule(
            "GPUHighUtilisation",
            f"{gpu_utilisation(w, s)} > {GPU_UTILISATION_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }} is saturated",
            f"The GPU ran kernels {{{{ $value | humanizePercentage }}}} of the time over {w}: "
            "batches queue for it and latency grows with load."),
        AlertRule(
            "GPUMemoryHigh",
            f"{gpu_memory_ratio(s)} > {GPU_MEMORY_THRESHOLD}",
            profile.slow_alert_for, "warning",
            "Memory of GPU {{ $labels.gpu }} ({{ $labels.name }}) on {{ $labels.instance }} "
            "is nearly full",
            "{{ $value | humanizePercentage }} of the GPU's memory is allocated: a larger batch "
            "or another model may fail with out-of-memory."),
    ]
    rules.append(AlertRule(
        "ModelDrift",
        f"max {scope.by('model', 'feature')} ({select(DRIFT_PSI, s)})"
        f" > {DRIFT_PSI_THRESHOLD}",
        profile.slow_alert_for, "warning",
        "Inputs of {{ $labels.model }} drifted from the training data ({{ $labels.feature }})",
        "The Population Stability Index of {{ $labels.feature }} over the last window of "
        'inputs is {{ printf "%.2f" $value }} (above ' + f"{DRIFT_PSI_THRESHOLD:g}" + "): the "
        "model sees data unlike what it was trained on."))
    for slo in slos:
        m = slo.model
        model = f'model="{m}"'
        if slo.accuracy is not None:
            rules.append(AlertRule(
                "AccuracyDrop",
                f"{select(feedback_record(profile), scope.recorded, model)} < {slo.accuracy:g}",
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
                f"{histogram_quantile(0.95, w, s, model, by=scope.grouping('model'))}"
                f" > {threshold:g}",
                profile.slow_alert_for, "warning",
                f"p95 latency of {m} is above {threshold * 1000:g} ms",
                f"The p95 latency of model {m} over {w} is above its objective of "
                f"{threshold * 1000:g} ms; see the per-stage latency panels for where "
                "the time goes.",
                {"model": m}))
        if slo.expect_traffic:
            rules.append(AlertRule(
                "InferenceNoTraffic",
                f"{request_rate(w, s, model, by=scope.grouping('model'))} == 0\n"
                f"or absent({select(REQUESTS_TOTAL, s, model)})",
                profile.slow_alert_for, "warning",
                f"Model {m} receives no requests",
                f"Model {m} is expected to serve traffic but received none over {w}: clients, "
                "load balancer or discovery may be broken.",
                {"model": m}))
    return rules


def batch_alerts(profile: Profile, scope: RuleScope = LOCAL_SCOPE) -> list[AlertRule]:
    """Batch jobs push to the Pushgateway, which stamps every push: a stale stamp is a job
    that stopped running (a failed run still pushes, so its metrics say why it failed)."""
    stale = profile.batch_stale_after
    return [AlertRule(
        "BatchJobStale",
        f"time() - max {scope.by('job', 'instance')} ({select('push_time_seconds', scope.batch)})"
        f" > {parse_duration(stale):g}",
        profile.error_alert_for, "warning",
        "Batch job {{ $labels.job }} on {{ $labels.instance }} stopped pushing",
        "The last push of batch job {{ $labels.job }} (instance {{ $labels.instance }}) to the "
        "Pushgateway was {{ $value | humanizeDuration }} ago, more than " + stale + ": the job "
        "no longer runs, or cannot reach the Pushgateway.")]


def rule_groups(profile: Profile, slos: Sequence[SLO] | None = None,
                scope: RuleScope = LOCAL_SCOPE) -> list[RuleGroup]:
    slos = load_slos() if slos is None else slos
    groups = [
        RuleGroup("inferwatch-native", native_recordings()),
        RuleGroup("inferwatch-service-recording", service_recordings(profile, scope)),
        RuleGroup("inferwatch-host-recording", host_recordings(profile, scope)),
        RuleGroup("inferwatch-alerts", service_alerts(profile, slos, scope)),
        RuleGroup("inferwatch-batch-jobs", batch_alerts(profile, scope)),
    ]
    # Recordings and the alerts that read them share a group: evaluated in order.
    groups.append(RuleGroup("inferwatch-slo", [
        *slo_recordings(slos, scope), *(a for slo in slos for a in slo_alerts(slo, scope))
    ], interval="1m"))
    return groups


def render_rule_file(profile: Profile, slos: Sequence[SLO] | None = None,
                     runbook_base: str = RUNBOOK_BASE,
                     scope: RuleScope = LOCAL_SCOPE) -> dict[str, Any]:
    out = []
    for group in rule_groups(profile, slos, scope):
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
