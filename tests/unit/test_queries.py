"""stack/queries.py: each expression as the rules, panels, diagnose and load read it."""

import doctest

from inferwatch.metrics.names import (
    FEEDBACK_TOP5_TOTAL,
    LATENCY_SECONDS,
    STAGE_SECONDS,
    TIME_TO_FIRST_TOKEN_SECONDS,
)
from inferwatch.stack import queries
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import DEFAULT
from inferwatch.stack.queries import (
    accuracy,
    cpu_utilisation,
    error_ratio,
    error_reason_rate,
    gpu_memory_ratio,
    gpu_utilisation,
    histogram_mean,
    histogram_quantile,
    memory_utilisation,
    request_rate,
    requests_now,
    run_latency_quantile,
    run_requests,
    select,
    shed_rate,
    slow_ratio,
)
from inferwatch.stack.rules import LOCAL_SCOPE, rule_groups, slo_recordings
from inferwatch.stack.slo import SLO, LatencyObjective, load_slos

JOB = 'job="inference"'


def test_the_doctests_pass() -> None:
    assert doctest.testmod(queries).failed == 0


def test_a_sum_groups_by_its_labels_everything_or_nothing() -> None:
    assert request_rate("5m", JOB, by=("model",)) \
        == 'sum by (model) (rate(inference_requests_total{job="inference"}[5m]))'
    assert request_rate("60s") == "sum (rate(inference_requests_total[60s]))"
    assert error_ratio("5m", JOB, by=None) == ('rate(inference_errors_total{job="inference"}[5m])'
                                               ' / rate(inference_requests_total{job="inference"}'
                                               '[5m])')


def test_slo_windows_take_increases() -> None:
    assert error_ratio("1h", by=("namespace", "model"), func="increase") == (
        "sum by (namespace, model) (increase(inference_errors_total[1h]))"
        " / sum by (namespace, model) (increase(inference_requests_total[1h]))")


def test_a_quantile_keeps_le_and_is_written_as_given() -> None:
    assert histogram_quantile("0.50", "5m", JOB, by=("model", "stage"),
                              histogram=STAGE_SECONDS) == (
        'histogram_quantile(0.50, sum by (model, stage, le) '
        '(rate(inference_stage_seconds_bucket{job="inference"}[5m])))')
    assert histogram_quantile(0.95, "33s", 'model="d"', func="increase") == (
        'histogram_quantile(0.95, sum by (le) '
        '(increase(inference_latency_seconds_bucket{model="d"}[33s])))')


def test_means_and_accuracy_are_ratios_of_rates() -> None:
    assert histogram_mean(STAGE_SECONDS, "60s", by=("stage",)) == (
        "sum by (stage) (rate(inference_stage_seconds_sum[60s]))"
        " / sum by (stage) (rate(inference_stage_seconds_count[60s]))")
    assert accuracy("5m", 'model="d"', feedback=FEEDBACK_TOP5_TOTAL) == (
        'sum (rate(inference_feedback_top5_total{model="d", outcome="correct"}[5m]))'
        ' / sum (rate(inference_feedback_top5_total{model="d"}[5m]))')


def test_error_reasons() -> None:
    assert shed_rate("5m", JOB, by=("model", "instance")) == (
        'sum by (model, instance) (rate(inference_error_reasons_total'
        '{job="inference", reason="overloaded"}[5m]))')
    assert error_reason_rate("60s", 'reason!="overloaded"', by=("reason",)) == (
        'sum by (reason) (rate(inference_error_reasons_total{reason!="overloaded"}[60s]))')


def test_load_reads_the_whole_run() -> None:
    assert requests_now('model="d"') == 'sum(inference_requests_total{model="d"})'
    assert requests_now() == "sum(inference_requests_total)"
    assert run_requests("33s") == "sum(increase(inference_requests_total[33s]))"
    assert run_latency_quantile(0.5, "33s", 'model="d"') == (
        'histogram_quantile(0.5, sum(increase(inference_latency_seconds_bucket{model="d"}'
        '[33s])) by (le))')


def test_resources() -> None:
    assert gpu_utilisation("5m") == "avg_over_time(inferwatch_gpu_utilization_ratio[5m])"
    assert gpu_memory_ratio(JOB) == ('inferwatch_gpu_memory_used_bytes{job="inference"}'
                                     ' / inferwatch_gpu_memory_total_bytes{job="inference"}')
    assert cpu_utilisation("1m") == (
        '1 - avg without (cpu) (sum without (mode) (rate(node_cpu_seconds_total'
        '{job="node", mode=~"idle|iowait|steal"}[1m])))')
    assert memory_utilisation('job="node-exporter"') == (
        '1 - (node_memory_MemAvailable_bytes{job="node-exporter"}'
        ' / node_memory_MemTotal_bytes{job="node-exporter"})')
    assert select("up", "", JOB) == 'up{job="inference"}'


def test_the_rules_and_panels_render_these_expressions() -> None:
    w = DEFAULT.rate_window
    by_model = LOCAL_SCOPE.grouping("model")
    recorded = {r.record: r.expr for g in rule_groups(DEFAULT, load_slos()) for r in g.rules
                if hasattr(r, "record")}
    alerts = {r.name: r.expr for g in rule_groups(DEFAULT, load_slos()) for r in g.rules
              if hasattr(r, "name")}
    s = LOCAL_SCOPE.service
    assert recorded[f"model:inference_errors:ratio_rate{w}"] == error_ratio(w, s, by=by_model)
    assert recorded[f"model:inference_requests:rate{w}"] == request_rate(w, s, by=by_model)
    assert recorded[f"model:inference_latency_seconds:p95_rate{w}"] \
        == histogram_quantile("0.95", w, s, by=by_model)
    assert recorded["model:inference_availability_errors:ratio_rate1h"] \
        == error_ratio("1h", s, by=by_model, func="increase")
    assert alerts["HighInferenceErrorRate"].startswith(f"{error_ratio(w, s, by=None)} > ")
    assert DASHBOARD.panel("error_ratio").expr \
        == error_ratio("$window", 'model=~"$model", instance=~"$instance(:[0-9]+)?"',
                       by=("model",))


def test_slo_windows_count_the_share_above_the_thresholds_bucket() -> None:
    slo = SLO("opt", availability=None, latency_objective=0.95, latency_threshold=0.5,
              time_to_first_token=LatencyObjective(0.95, 1.0))
    recorded = {r.record: r.expr for r in slo_recordings([slo]) if r.labels}
    by_model, s = LOCAL_SCOPE.grouping("model"), LOCAL_SCOPE.service
    assert recorded["model:inference_latency_slow:ratio_rate1h"] == slow_ratio(
        LATENCY_SECONDS, "0.5", "1h", s, 'model="opt"', by=by_model)
    assert recorded["model:inference_time_to_first_token_slow:ratio_rate6h"] == slow_ratio(
        TIME_TO_FIRST_TOKEN_SECONDS, "1.0", "6h", s, 'model="opt"', by=by_model)
    assert not any("inter_token" in record for record in recorded)
