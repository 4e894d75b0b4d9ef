"""``promtool test rules`` files generated from the rule source.

Every alert gets a scenario: input series that put its expression just above its threshold
(it must fire once ``for`` has passed, and not before) and just below (it must stay silent).
Thresholds are read from the same constants and SLOs the rules are rendered from, so a
changed threshold moves its test with it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inferwatch.metrics.names import (
    DRIFT_PSI,
    ERROR_REASONS_TOTAL,
    ERRORS_TOTAL,
    FEEDBACK_TOTAL,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_MEMORY_USED_BYTES,
    GPU_UTILIZATION_RATIO,
    LATENCY_SECONDS,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    REQUESTS_TOTAL,
    SHED_REASON,
)
from inferwatch.stack import rules as r
from inferwatch.stack.profiles import Profile, parse_duration
from inferwatch.stack.slo import LATENCY_SLIS, SLO, LatencyObjective, LatencySLI

INSTANCE = "127.0.0.1:8080"
SERVICE = {"instance": INSTANCE, "job": "inference", "model": "digits", "version": "1"}
NODE = {"instance": "127.0.0.1:9100", "job": "node"}
GPU = {"instance": INSTANCE, "job": "inference", "gpu": "0", "uuid": "GPU-0f1e2d3c",
       "name": "NVIDIA H100 80GB HBM3"}
ABOVE, BELOW = 1.1, 0.9  # "just above" and "just below" a threshold


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def ramp(step: float, n: int, start: float = 0) -> str:
    """A counter growing by ``step`` per interval, ``n`` intervals long."""
    return f"{start:g}+{step:g}x{n}"


def flat(value: float, n: int) -> str:
    return f"{value:g}+0x{n}"


@dataclass(frozen=True)
class Scenario:
    """Series for one alert at ``level`` times its threshold, and the labels it fires with."""

    alert: str
    build: Callable[[float, int], list[dict[str, str]]]  # (level, samples) -> input series
    labels: dict[str, str]
    value: Callable[[float], float] | None = None  # $value when firing at ``level``
    onset_intervals: int = 1  # evaluations until the expression is first true


# Go's text/template helpers that our annotations use, as Prometheus implements them.
def humanize(v: float) -> str:
    if v == 0 or math.isnan(v) or math.isinf(v):
        return f"{v:.4g}"
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}"


def humanize_duration(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return f"{v:.4g}"
    if v == 0:
        return f"{v:.4g}s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        whole = int(v)
        s, m, h, d = whole % 60, whole // 60 % 60, whole // 3600 % 24, whole // 86400
        if d:
            return f"{sign}{d}d {h}h {m}m {s}s"
        if h:
            return f"{sign}{h}h {m}m {s}s"
        if m:
            return f"{sign}{m}m {s}s"
        return f"{sign}{v:.4g}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}s"


_TEMPLATE = re.compile(r"{{\s*(\$labels\.(\w+)|\$value\s*\|\s*(\w+)"
                       r'|printf\s+"([^"]+)"\s+\$value)\s*}}')


def expand(template: str, labels: dict[str, str], value: float | None) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(2):
            return labels.get(match.group(2), "")
        if value is None:
            raise ValueError(f"{template!r} uses $value but its scenario gives none")
        if match.group(4):
            return match.group(4) % value  # Go's %f/%g verbs agree with Python's here
        fn = match.group(3)
        if fn == "humanizePercentage":
            return humanize(value * 100) + "%"
        if fn == "humanize":
            return humanize(value)
        if fn == "humanizeDuration":
            return humanize_duration(value)
        raise ValueError(f"no expansion for template function {fn}")

    out = _TEMPLATE.sub(one, template)
    if "{{" in out:
        raise ValueError(f"unexpanded template in {template!r}")
    return out


def service_scenarios(profile: Profile, slos: Sequence[SLO]) -> list[Scenario]:
    err = r.ERROR_RATIO_THRESHOLD
    cpu, mem, queue = r.HOST_CPU_THRESHOLD, r.HOST_MEMORY_THRESHOLD, r.QUEUE_SATURATION_THRESHOLD
    gpu = r.GPU_UTILISATION_THRESHOLD

    def gpu_used(level: float) -> float:
        return 1 - (1 - r.GPU_MEMORY_THRESHOLD) / level

    found = [
        Scenario("HighInferenceErrorRate", lambda lv, n: [
            series(REQUESTS_TOTAL, SERVICE, ramp(100, n)),
            series(ERRORS_TOTAL, SERVICE, ramp(100 * err * lv, n)),
        ], SERVICE, value=lambda lv: err * lv),
        Scenario("TargetDown", lambda lv, n: [
            series("up", {"instance": INSTANCE, "job": "inference"},
                   f"1 1 {flat(0 if lv > 1 else 1, n)}"),
        ], {"instance": INSTANCE, "job": "inference"}, onset_intervals=2),
        Scenario("InferenceQueueSaturated", lambda lv, n: [
            series(QUEUE_DEPTH, SERVICE, flat(100 * queue * lv, n)),
            series(QUEUE_CAPACITY, SERVICE, flat(100, n)),
        ], {"instance": INSTANCE, "model": "digits"}, value=lambda lv: queue * lv,
            onset_intervals=0),
        # The threshold is "more than zero": just below is none shed, just above is one.
        Scenario("InferenceRequestsShed", lambda lv, n: [
            series(ERROR_REASONS_TOTAL, {**SERVICE, "reason": SHED_REASON},
                   ramp(1 if lv > 1 else 0, n)),
        ], {"instance": INSTANCE, "model": "digits"},
            value=lambda lv: 1 / profile.scrape_seconds),
        Scenario("HostCpuHigh", lambda lv, n: [
            series("node_cpu_seconds_total", {**NODE, "cpu": c, "mode": m},
                   ramp(profile.scrape_seconds * share, n))
            for c in ("0", "1")
            for m, share in (("idle", 1 - cpu * lv), ("user", cpu * lv))
        ], NODE, value=lambda lv: cpu * lv),
        Scenario("HostMemoryHigh", lambda lv, n: [
            series("node_memory_MemAvailable_bytes", NODE, flat(100 * (1 - mem * lv), n)),
            series("node_memory_MemTotal_bytes", NODE, flat(100, n)),
        ], NODE, value=lambda lv: mem * lv, onset_intervals=0),
        Scenario("GPUHighUtilisation", lambda lv, n: [
            series(GPU_UTILIZATION_RATIO, GPU, flat(gpu * lv, n)),
        ], GPU, value=lambda lv: gpu * lv, onset_intervals=0),
        # Free memory shrinks with the level, so "above" stays a possible share (< 100%).
        Scenario("GPUMemoryHigh", lambda lv, n: [
            series(GPU_MEMORY_USED_BYTES, GPU, flat(100 * gpu_used(lv), n)),
            series(GPU_MEMORY_TOTAL_BYTES, GPU, flat(100, n)),
        ], GPU, value=gpu_used, onset_intervals=0),
    ]
    psi_limit = r.DRIFT_PSI_THRESHOLD
    found.append(Scenario("ModelDrift", lambda lv, n: [
        series(DRIFT_PSI, {**SERVICE, "feature": "ink_fraction"},
               flat(psi_limit * lv, n)),
    ], {"model": "digits", "feature": "ink_fraction"}, value=lambda lv: psi_limit * lv,
        onset_intervals=0))
    # A job that pushed X seconds before the test began and never since: a push time that
    # grows with the clock keeps time() - push_time_seconds at exactly X.
    stale = parse_duration(profile.batch_stale_after)
    job = {"instance": "batch-host", "job": "digits-batch"}
    found.append(Scenario("BatchJobStale", lambda lv, n: [
        series("push_time_seconds", job,
               f"{-stale * lv:g}+{profile.scrape_seconds:g}x{n}"),
    ], job, value=lambda lv: stale * lv, onset_intervals=0))
    # One model per alert is enough: the others' rules differ only in constants.
    accuracy = next((s for s in slos if s.accuracy is not None), None)
    if accuracy is not None and accuracy.accuracy is not None:
        found.append(Scenario("AccuracyDrop",
                              functools.partial(_feedback, accuracy.model, accuracy.accuracy),
                              {"model": accuracy.model},
                              functools.partial(_accuracy_at, accuracy.accuracy)))
    latency = next((s for s in slos if s.latency_threshold is not None), None)
    if latency is not None:
        found.append(Scenario("InferenceLatencyHigh",
                              functools.partial(_latency_buckets, latency),
                              {"model": latency.model}))
    traffic = next((s for s in slos if s.expect_traffic), None)
    if traffic is not None:
        found.append(Scenario("InferenceNoTraffic", lambda lv, n: [
            series(REQUESTS_TOTAL, {**SERVICE, "model": traffic.model},
                   ramp(0 if lv > 1 else 1, n, start=5)),
        ], {"model": traffic.model}))
    return found


def _accuracy_at(objective: float, level: float) -> float:
    """The condition is "below": level 1.1 puts accuracy 10% under the objective."""
    return objective * (2 - level)


def _feedback(model: str, objective: float, level: float, n: int) -> list[dict[str, str]]:
    accuracy = _accuracy_at(objective, level)
    sel = {**SERVICE, "model": model}
    return [series(FEEDBACK_TOTAL, {**sel, "outcome": "correct"},
                   ramp(100 * accuracy, n)),
            series(FEEDBACK_TOTAL, {**sel, "outcome": "incorrect"},
                   ramp(100 * (1 - accuracy), n))]


def _latency_buckets(slo: SLO, level: float, n: int) -> list[dict[str, str]]:
    """Histogram counters whose p95 sits above (level > 1) or below the threshold."""
    quantile = 0.95
    total = 1000
    # Share of requests at or under the threshold; above the quantile when the level is low.
    under = quantile - 0.02 if level > 1 else quantile + 0.02
    t = slo.latency_threshold
    assert t is not None
    sel = {**SERVICE, "model": slo.model}
    buckets = [(f"{t / 2:g}", under / 2), (slo.le, under), (f"{t * 2:g}", 1.0), ("+Inf", 1.0)]
    out = [series(f"{LATENCY_SECONDS}_bucket", {**sel, "le": le},
                  ramp(total * share, n)) for le, share in buckets]
    out.append(series(f"{LATENCY_SECONDS}_count", sel, ramp(total, n)))
    return out


def slo_scenarios(slo: SLO) -> list[tuple[Scenario, float]]:
    """(scenario, lowest burn factor of the alert): "just above" is relative to that factor."""
    labels = {"model": slo.model}
    sel = {**SERVICE, "model": slo.model}

    def errors(budget_factor: float) -> Callable[[float, int], list[dict[str, str]]]:
        def build(lv: float, n: int) -> list[dict[str, str]]:
            ratio = slo.error_budget * budget_factor * lv
            return [series(REQUESTS_TOTAL, sel, ramp(1000, n)),
                    series(ERRORS_TOTAL, sel, ramp(1000 * ratio, n))]
        return build

    def slow(sli: LatencySLI, objective: LatencyObjective,
             budget_factor: float) -> Callable[[float, int], list[dict[str, str]]]:
        def build(lv: float, n: int) -> list[dict[str, str]]:
            ratio = objective.budget * budget_factor * lv
            return [series(f"{sli.histogram}_count", sel, ramp(1000, n)),
                    series(f"{sli.histogram}_bucket", {**sel, "le": objective.le},
                           ramp(1000 * (1 - ratio), n))]
        return build

    page = min(f for _, _, f in r.PAGE_WINDOWS)
    ticket = min(f for _, _, f in r.TICKET_WINDOWS)
    found = []
    if slo.availability is not None:
        found += [(Scenario("InferenceErrorBudgetBurnFast", errors(page), labels), page),
                  (Scenario("InferenceErrorBudgetBurnSlow", errors(ticket), labels), ticket)]
    for sli in LATENCY_SLIS:
        objective = slo.objective(sli)
        if objective is None:
            continue
        name = r.latency_burn_alert(sli)
        found += [(Scenario(f"{name}Fast", slow(sli, objective, page), labels), page),
                  (Scenario(f"{name}Slow", slow(sli, objective, ticket), labels), ticket)]
    return found


def _alert_index(profile: Profile, slos: Sequence[SLO]) -> dict[tuple[str, str], r.AlertRule]:
    index: dict[tuple[str, str], r.AlertRule] = {}
    for group in r.rule_groups(profile, slos):
        for rule in group.rules:
            if isinstance(rule, r.AlertRule):
                index.setdefault((rule.name, rule.labels.get("model", "digits")), rule)
    return index


def _cases(scenario: Scenario, rule: r.AlertRule, interval: float, window: float,
           runbook_base: str) -> tuple[list[dict[str, str]], tuple[list[Any], list[Any]], int]:
    """Tests of one alert: silent before ``for`` has passed, firing after, silent below.

    The firing check waits until the rate window is full too, so ``$value`` is exact rather
    than extrapolated from a partly filled window.
    """
    hold = parse_duration(rule.for_)
    onset = scenario.onset_intervals * interval
    early = max(0.0, onset + hold - 2 * interval)
    late = max(onset + hold, window) + 2 * interval
    n = math.ceil(late / interval) + 2
    labels = {"alertname": rule.name, "severity": rule.severity, **rule.labels,
              **scenario.labels}
    value = scenario.value(ABOVE) if scenario.value else None
    annotations = {k: expand(v, labels, value)
                   for k, v in rule.annotations(runbook_base).items()}
    firing = [{"exp_labels": labels, "exp_annotations": annotations}]
    above: list[Any] = [{"eval_time": f"{early:g}s", "alertname": rule.name, "exp_alerts": []},
             {"eval_time": f"{late:g}s", "alertname": rule.name, "exp_alerts": firing}]
    below: list[Any] = [{"eval_time": f"{late:g}s", "alertname": rule.name, "exp_alerts": []}]
    return scenario.build(ABOVE, n), (above, below), n


def render_rule_tests(profile: Profile, slos: Sequence[SLO], rule_file: str,
                      runbook_base: str = r.RUNBOOK_BASE) -> dict[str, dict[str, Any]]:
    """promtool test files covering every alert of ``profile``'s rules.

    Two files: the service alerts at the profile's evaluation interval, and the SLO alerts
    (hours of input at one-minute steps) at the SLO group's one-minute interval.
    """
    index = _alert_index(profile, slos)
    files: dict[str, list[dict[str, Any]]] = {"service": [], "slo": []}

    def add(kind: str, scenario: Scenario, interval: float, window: float) -> None:
        rule = index[(scenario.alert, scenario.labels.get("model", "digits"))]
        above_series, (above, below), n = _cases(scenario, rule, interval, window,
                                                 runbook_base)
        step = f"{interval:g}s"
        files[kind].append({"name": f"{rule.name} fires just above its threshold, after `for`",
                            "interval": step, "input_series": above_series,
                            "alert_rule_test": above})
        files[kind].append({"name": f"{rule.name} stays silent just below its threshold",
                            "interval": step, "input_series": scenario.build(BELOW, n),
                            "alert_rule_test": below})

    for scenario in service_scenarios(profile, slos):
        add("service", scenario, profile.scrape_seconds, parse_duration(profile.rate_window))
    tested: set[str] = set()
    for slo in slos:  # the first model with each objective
        for scenario, _ in slo_scenarios(slo):
            if scenario.alert not in tested:
                tested.add(scenario.alert)
                add("slo", scenario, 60.0, 0.0)  # constant ratios: exact in any window
    available = next((s for s in slos if s.availability is not None), None)
    if available is not None:
        files["slo"].append(request_weighted_test(available))
    covered = {t["alert_rule_test"][0]["alertname"] for tests in files.values() for t in tests}
    missing = {name for name, _ in index} - covered
    if missing:
        raise ValueError(f"alerts without a promtool test: {', '.join(sorted(missing))}")
    intervals = {"service": profile.evaluation_interval, "slo": "1m"}
    return {kind: {"rule_files": [rule_file], "evaluation_interval": intervals[kind],
                   "tests": tests} for kind, tests in files.items()}


def request_weighted_test(slo: SLO) -> dict[str, Any]:
    """Heavy clean traffic then a trickle of failures: the fast burn alert must stay silent.

    Over the last 6h, 150 of 345,150 requests failed (0.04%, under the 6x threshold); over
    the last hour 150 of 45,150 (0.33%, under 14.4x). An average of 5-minute ratios would
    count the trickle's 100% error windows as heavily as the busy ones and page; the
    promql check below shows that it would.
    """
    sel = {**SERVICE, "model": slo.model}
    page_threshold = min(f for _, _, f in r.PAGE_WINDOWS[:1]) * slo.error_budget
    return {
        "name": "InferenceErrorBudgetBurnFast: long windows are request-weighted",
        "interval": "1m",
        "input_series": [
            series(REQUESTS_TOTAL, sel, "0+1000x344 345000+10x15"),
            series(ERRORS_TOTAL, sel, "0x344 0+10x15"),
        ],
        "alert_rule_test": [{"eval_time": "360m", "alertname": "InferenceErrorBudgetBurnFast",
                             "exp_alerts": []}],
        "promql_expr_test": [{
            "expr": f"avg_over_time({r.error_ratio_record('5m')}[1h]) > bool "
                    f"{page_threshold:g}",
            "eval_time": "360m",
            "exp_samples": [{"labels": f'{{model="{slo.model}"}}', "value": 1}],
        }, {
            "expr": f"{r.error_ratio_record('1h')} > bool {page_threshold:g}",
            "eval_time": "360m",
            "exp_samples": [{"labels": f'{{model="{slo.model}"}}', "value": 0}],
        }],
    }
