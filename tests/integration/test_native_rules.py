"""Servers' own series, as their documentation shows them, through the generated rules:
promtool must find inferwatch's canonical series, the dashboard's panels, the recorded rates
and the SLO alerts with the right values, and nothing counted twice behind the proxy.

The input series are written here from each server's documentation (names, labels, units),
not from ``stack/native.py``: a wrong name or unit there fails these tests. vLLM's are those
of vllm/v1/metrics/loggers.py, with the names a release exports during a rename: both.
"""

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inferwatch.stack.native import MEASURED
from inferwatch.stack.otel import render_genai_rule_file
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import DEFAULT
from inferwatch.stack.rules import render_rule_file, slo_alerts
from inferwatch.stack.slo import SLO, LatencyObjective
from inferwatch.stack.yamlfile import write_yaml

STEP = 10  # seconds between samples, the default profile's scrape and evaluation interval
AT = "10m"
N = 60  # samples up to AT
SLOS = [SLO("digits", availability=0.999, latency_objective=0.99, latency_threshold=0.025),
        SLO("opt-125m", availability=0.99, latency_objective=0.95, latency_threshold=0.5,
            time_to_first_token=LatencyObjective(0.95, 1.0),
            inter_token_latency=LatencyObjective(0.95, 0.1))]

TS = {"instance": "127.0.0.1:8082", "job": "torchserve"}
TRITON = {"instance": "127.0.0.1:8002", "job": "triton"}
VLLM = {"instance": "127.0.0.1:8000", "job": "vllm"}
MLSERVER = {"instance": "127.0.0.1:8085", "job": "mlserver"}


def braces(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def series(name: str, labels: dict[str, str], step: float, n: int = N,
           gauge: bool = False) -> dict[str, str]:
    """A counter growing by ``step`` per sample (a gauge holding ``step``), ``n`` samples."""
    return {"series": f"{name}{braces(labels)}",
            "values": f"{step:g}+0x{n}" if gauge else f"0+{step:g}x{n}"}


def torchserve(n: int = N) -> list[dict[str, str]]:
    """TorchServe 0.12, metrics_mode=prometheus: 1 request/s, 25 ms each, 2 ms queued."""
    model = {**TS, "model_name": "densenet161", "model_version": "default",
             "hostname": "ts-host"}
    host = {**TS, "Level": "Host", "Hostname": "ts-host"}
    return [series("ts_inference_requests_total", model, 10, n),
            series("ts_inference_latency_microseconds", model, 250_000, n),
            series("ts_queue_latency_microseconds", model, 20_000, n),
            series("Requests2XX", host, 12, n),  # every API, per host: not a model's
            series("QueueTime", host, 2, n, gauge=True)]


def triton(model: str = "simple", success: float = 20, n: int = N) -> list[dict[str, str]]:
    """Triton r24.04: 2.2 requests/s (2 of 22 failed), 5 ms each, batches of 4."""
    m = {**TRITON, "model": model, "version": "1"}
    failures = {"REJECTED": 1, "BACKEND": 1, "CANCELED": 0, "OTHER": 0}
    return [series("nv_inference_request_success", m, success, n),
            *(series("nv_inference_request_failure", {**m, "reason": reason}, count, n)
              for reason, count in failures.items()),
            series("nv_inference_request_duration_us", m, 100_000, n),
            series("nv_inference_queue_duration_us", m, 20_000, n),
            series("nv_inference_compute_input_duration_us", m, 2_000, n),
            series("nv_inference_compute_infer_duration_us", m, 40_000, n),
            series("nv_inference_compute_output_duration_us", m, 2_000, n),
            series("nv_inference_count", m, 40, n),
            series("nv_inference_exec_count", m, 10, n),
            series("nv_inference_pending_request_count", m, 3, n, gauge=True),
            series("nv_gpu_utilization", {**TRITON, "gpu_uuid": "GPU-0"}, 0.5, n, gauge=True)]


def vllm_tokens(e: dict[str, str], n: int, ttft_fast: float,
                preempted: float) -> list[dict[str, str]]:
    """One engine's token series: 50 prompt and 10 output tokens per second, 5 first tokens
    per 10 s (``ttft_fast`` of them within 250 ms, all within 500 ms)."""
    out = [series("vllm:prompt_tokens_total", e, 500, n),
           series("vllm:generation_tokens_total", e, 100, n),
           series("vllm:num_preemptions_total", e, preempted, n)]
    for le, count in (("0.25", ttft_fast), ("0.5", 5), ("1.0", 5), ("+Inf", 5)):
        out.append(series("vllm:time_to_first_token_seconds_bucket", {**e, "le": le}, count, n))
    return out


def vllm_renamed(e: dict[str, str], n: int, kv: float,
                 names: tuple[str, str]) -> list[dict[str, str]]:
    """One engine's renamed series under ``names`` (inter-token histogram, KV cache): 100
    gaps between tokens per 10 s, 80 within 50 ms, all within 100 ms; ``kv`` of the cache."""
    itl, kv_cache = names
    out = [series(f"{itl}_bucket", {**e, "le": le}, count, n)
           for le, count in (("0.05", 80), ("0.1", 100), ("+Inf", 100))]
    return [*out, series(f"{itl}_sum", e, 4, n), series(f"{itl}_count", e, 100, n),
            series(kv_cache, e, kv, n, gauge=True)]


CURRENT = ("vllm:inter_token_latency_seconds", "vllm:kv_cache_usage_perc")
OLD = ("vllm:time_per_output_token_seconds", "vllm:gpu_cache_usage_perc")


def vllm(n: int = N) -> list[dict[str, str]]:
    """vLLM, two engines of 5 requests per 10 s: one of the ten in (0.5, 0.8] s. The renamed
    series under both names, as a release exports them while the old one is deprecated (0.9
    the KV cache's, 0.11 the inter-token histogram's)."""
    out = []
    for engine, under_half, e2e_sum, ttft_fast, kv, preempted in (("0", 5, 2.0, 4, 0.4, 1),
                                                                  ("1", 4, 2.5, 3, 0.6, 0)):
        e = {**VLLM, "model_name": "opt-125m", "engine": engine}
        out += [*vllm_tokens(e, n, ttft_fast, preempted), *vllm_renamed(e, n, kv, CURRENT),
                *vllm_renamed(e, n, kv, OLD)]
        out += [series("vllm:request_success_total", {**e, "finished_reason": reason}, count, n)
                for reason, count in (("stop", 4), ("length", 1), ("abort", 0))]
        for le, count in (("0.3", 0), ("0.5", under_half), ("0.8", 5), ("1.0", 5), ("+Inf", 5)):
            out.append(series("vllm:e2e_request_latency_seconds_bucket", {**e, "le": le}, count,
                              n))
        out += [series("vllm:e2e_request_latency_seconds_sum", e, e2e_sum, n),
                series("vllm:e2e_request_latency_seconds_count", e, 5, n),
                series("vllm:request_queue_time_seconds_bucket", {**e, "le": "0.3"}, 5, n),
                series("vllm:request_queue_time_seconds_bucket", {**e, "le": "+Inf"}, 5, n),
                series("vllm:request_queue_time_seconds_sum", e, 0.05, n),
                series("vllm:request_queue_time_seconds_count", e, 5, n),
                series("vllm:request_inference_time_seconds_sum", e, 2, n),
                series("vllm:request_inference_time_seconds_count", e, 5, n),
                series("vllm:time_to_first_token_seconds_sum", e, 0.25, n),
                series("vllm:time_to_first_token_seconds_count", e, 5, n),
                series("vllm:num_requests_running", e, 2, n, gauge=True),
                series("vllm:num_requests_waiting", e, 1, n, gauge=True)]
    return out


def mlserver(model: str = "iris", success: float = 9, n: int = N) -> list[dict[str, str]]:
    """MLServer 1.7: one failure in ten requests, 20 ms each (a summary: sum and count)."""
    m = {**MLSERVER, "model": model, "version": "1"}
    route = {**MLSERVER, "method": "POST", "path": "/v2/models/{model_name}/infer",
             "status_code": "200", "app_name": "mlserver"}
    return [series("model_infer_request_success_total", m, success, n),
            series("model_infer_request_failure_total", m, 1, n),
            series("model_infer_request_duration_sum", m, 0.02 * (success + 1), n),
            series("model_infer_request_duration_count", m, success + 1, n),
            series("rest_server_requests_total", route, success, n)]


def vector(labels: dict[str, str], value: float) -> str:
    expr = f"vector({value!r})"
    for key, label in labels.items():
        expr = f'label_replace({expr}, "{key}", "{label}", "", "")'
    return expr


def close(query: str, expected: list[tuple[dict[str, str], float]],
          at: str = AT) -> list[dict[str, Any]]:
    """``query`` returns exactly the ``expected`` series, each within 1e-9 of its value."""
    want = " or ".join(vector(labels, value) for labels, value in expected)
    return [{"expr": f"abs(({query}) - ({want})) < bool 1e-9", "eval_time": at,
             "exp_samples": [{"labels": braces(labels), "value": 1} for labels, _ in expected]},
            {"expr": f"count({query})", "eval_time": at,
             "exp_samples": [{"labels": "{}", "value": len(expected)}]}]


def exact(query: str, expected: list[tuple[dict[str, str], float]],
          at: str = AT) -> dict[str, Any]:
    """``query`` returns exactly the ``expected`` series, with these values; a selector's
    series keep its metric name."""
    name = query.partition("{")[0] if query.replace(":", "_").partition("{")[0].isidentifier() \
        else ""
    return {"expr": query, "eval_time": at,
            "exp_samples": [{"labels": name + braces(labels), "value": value}
                            for labels, value in expected]}


def panel(key: str) -> str:
    return DASHBOARD.panel(key).query(DEFAULT)


def m(model: str, **labels: str) -> dict[str, str]:
    return {"model": model, **labels}


def shown(key: str, expected: bool) -> dict[str, Any]:
    """The panel's requirement returns a sample, so the page draws it (or says why not)."""
    requirement = DASHBOARD.panel(key).requirement(DEFAULT)
    return {"expr": f"count({requirement})", "eval_time": AT,
            "exp_samples": [{"labels": "{}", "value": 1}] if expected else []}


def canonical_test() -> dict[str, Any]:
    ts = {**TS, "model": "densenet161", "version": "default", "source": "torchserve"}
    tr = {**TRITON, "model": "simple", "version": "1", "source": "triton"}
    vl = {**VLLM, "model": "opt-125m", "source": "vllm"}
    ml = {**MLSERVER, "model": "iris", "version": "1", "source": "mlserver"}
    checks = [
        exact("inference_requests_total", [(ts, 600), (tr, 1320), (vl, 600), (ml, 600)]),
        exact("inference_errors_total", [(tr, 120), (ml, 60)]),
        exact("inference_model_info", [({**labels, "runtime": labels["source"]}, 1)
                                        for labels in (ts, tr, vl, ml)]),
        *close("inference_latency_seconds_sum", [(ts, 15), (tr, 6), (vl, 270), (ml, 12)]),
        *close(panel("qps"), [(m("densenet161"), 1), (m("simple"), 2.2), (m("opt-125m"), 1),
                              (m("iris"), 1)]),
        *close("model:inference_requests:rate5m",
               [(m("densenet161"), 1), (m("simple"), 2.2), (m("opt-125m"), 1),
                (m("iris"), 1)]),
        *close(panel("error_ratio"), [(m("simple"), 2 / 22), (m("iris"), 0.1)]),
        *close("model:inference_errors:ratio_rate5m", [(m("simple"), 2 / 22), (m("iris"), 0.1)]),
        *close(panel("latency_avg"), [(m("densenet161"), 0.025), (m("simple"), 0.005),
                                      (m("opt-125m"), 0.45), (m("iris"), 0.02)]),
        # Only vLLM exports a latency histogram: TorchServe, Triton and MLServer have no
        # quantiles, which the panels' description says.
        *close(panel("latency_p95"), [(m("opt-125m"), 0.65)]),
        *close("model:inference_latency_seconds:p95_rate5m", [(m("opt-125m"), 0.65)]),
        *close(panel("stage_latency"), [
            (m("densenet161", stage="queue"), 0.002), (m("simple", stage="queue"), 0.001),
            (m("simple", stage="compute"), 0.0022), (m("opt-125m", stage="queue"), 0.01),
            (m("opt-125m", stage="compute"), 0.4)]),
        *close(panel("batch_size"), [(m("simple"), 4)]),
        *close(panel("queue_depth"), [(m("simple"), 3), (m("opt-125m"), 2)]),
        *close(panel("in_flight"), [(m("opt-125m"), 6)]),
        *close("sum by (model) (rate(inference_time_to_first_byte_seconds_sum[5m]))"
               " / sum by (model) (rate(inference_time_to_first_byte_seconds_count[5m]))",
               [(m("opt-125m"), 0.05)]),
        # vLLM's LLM series, each renamed one counted once under its two names.
        exact("inference_tokens_total", [({**vl, "type": "input"}, 60_000),
                                         ({**vl, "type": "output"}, 12_000)]),
        exact("inference_inter_token_latency_seconds_count", [(vl, 12_000)]),
        exact("inference_finish_reasons_total", [({**vl, "finish_reason": reason}, count)
                                                 for reason, count in (("length", 120),
                                                                       ("other", 0),
                                                                       ("stop", 480))]),
        exact("inference_kv_cache_usage_ratio", [(vl, 0.6)]),  # the fuller engine's
        exact("inference_preemptions_total", [(vl, 60)]),
        *close(panel("llm_tokens"), [(m("opt-125m", type="input"), 100),
                                     (m("opt-125m", type="output"), 20)]),
        # 7 of 10 first tokens within 250 ms, all within 500 ms; 160 of 200 gaps within 50 ms,
        # all within 100 ms.
        *close(panel("llm_ttft_p95"), [(m("opt-125m"), 0.25 + 0.25 * 2.5 / 3)]),
        *close(panel("llm_itl_p95"), [(m("opt-125m"), 0.05 + 0.05 * 30 / 40)]),
        *close(panel("llm_requests"), [(m("opt-125m", state="waiting"), 2),
                                       (m("opt-125m", state="in flight"), 6)]),
        *close(panel("llm_kv_cache"), [(m("opt-125m"), 0.6)]),
        *close(panel("llm_preemptions"), [(m("opt-125m"), 0.1)]),
        *close(panel("llm_finish_reasons"), [(m("opt-125m", finish_reason="stop"), 0.8),
                                             (m("opt-125m", finish_reason="length"), 0.2),
                                             (m("opt-125m", finish_reason="other"), 0)]),
        *(shown(p.key, p.key != "llm_stream_speed")  # per-stream speed: the proxy's only
          for p in DASHBOARD.panels if p.row == "llm"),
        # OpenTelemetry's names, from the optional rule file.
        *close("sum by (gen_ai_request_model, gen_ai_token_type) "
               "(rate(gen_ai_client_token_usage_sum[5m]))",
               [({"gen_ai_request_model": "opt-125m", "gen_ai_token_type": "input"}, 100),
                ({"gen_ai_request_model": "opt-125m", "gen_ai_token_type": "output"}, 20)]),
        *close("histogram_quantile(0.95, sum by (gen_ai_request_model, le) "
               "(rate(gen_ai_server_time_to_first_token_seconds_bucket[5m])))",
               [({"gen_ai_request_model": "opt-125m"}, 0.25 + 0.25 * 2.5 / 3)]),
        *close("sum by (gen_ai_request_model) "
               "(rate(gen_ai_server_time_per_output_token_seconds_sum[5m]))"
               " / sum by (gen_ai_request_model) "
               "(rate(gen_ai_server_time_per_output_token_seconds_count[5m]))",
               [({"gen_ai_request_model": "opt-125m"}, 0.04)]),
    ]
    return {"name": "each server's own series become inferwatch's canonical ones",
            "interval": f"{STEP}s", "input_series": torchserve() + triton() + vllm() + mlserver(),
            "promql_expr_test": checks}


def proxied_test() -> dict[str, Any]:
    """Triton behind the proxy for `simple`, reached directly for `other`."""
    proxy = {"instance": "127.0.0.1:8090", "job": "inference", "model": "simple", "version": "1"}
    other = {**TRITON, "model": "other", "version": "1", "source": "triton"}
    return {"name": "a model that inferwatch measures is not counted twice",
            "interval": f"{STEP}s",
            "input_series": [series("inference_requests_total", proxy, 22),
                             series("inference_errors_total", proxy, 2),
                             *triton(), *triton("other", success=10)],
            "promql_expr_test": [
                exact("sum by (model) (inference_requests_total)",
                      [(m("other"), 720), (m("simple"), 1320)]),
                exact("sum by (model) (inference_errors_total)",
                      [(m("other"), 120), (m("simple"), 120)]),
                exact('inference_requests_total{source="triton"}', [(other, 720)]),
                exact("inference_model_info", [({**other, "runtime": "triton"}, 1)]),
            ]}


def old_names_test() -> dict[str, Any]:
    """A vLLM release before the renames."""
    e = {**VLLM, "model_name": "opt-125m", "engine": "0"}
    vl = {**VLLM, "model": "opt-125m", "source": "vllm"}
    return {"name": "vLLM's series are read under their old names where the new are absent",
            "interval": f"{STEP}s",
            "input_series": [series("vllm:request_success_total",
                                    {**e, "finished_reason": "stop"}, 5),
                             *vllm_renamed(e, N, 0.4, OLD)],
            "promql_expr_test": [exact("inference_kv_cache_usage_ratio", [(vl, 0.4)]),
                                 exact("inference_inter_token_latency_seconds_count",
                                       [(vl, 6000)])]}


def slo_test() -> dict[str, Any]:
    """MLServer fails 4% of digits' requests; vLLM answers 90% of opt-125m's after 0.5 s,
    streams 90% of its first tokens after 1 s and 80% of the gaps between tokens are longer
    than 100 ms."""
    n = 75 * 60 // STEP
    e = {**VLLM, "model_name": "opt-125m", "engine": "0"}
    slow = [series("vllm:request_success_total", {**e, "finished_reason": "stop"}, 10, n),
            series("vllm:e2e_request_latency_seconds_bucket", {**e, "le": "0.5"}, 1, n),
            series("vllm:e2e_request_latency_seconds_bucket", {**e, "le": "+Inf"}, 10, n),
            series("vllm:e2e_request_latency_seconds_sum", e, 8, n),
            series("vllm:e2e_request_latency_seconds_count", e, 10, n),
            series("vllm:time_to_first_token_seconds_bucket", {**e, "le": "1.0"}, 1, n),
            series("vllm:time_to_first_token_seconds_bucket", {**e, "le": "+Inf"}, 10, n),
            series("vllm:time_to_first_token_seconds_count", e, 10, n),
            series("vllm:inter_token_latency_seconds_bucket", {**e, "le": "0.1"}, 20, n),
            series("vllm:inter_token_latency_seconds_bucket", {**e, "le": "+Inf"}, 100, n),
            series("vllm:inter_token_latency_seconds_count", e, 100, n)]
    alerts = {(a.name, a.labels["model"]): a for slo in SLOS for a in slo_alerts(slo)}

    def firing(name: str, model: str) -> dict[str, Any]:
        rule = alerts[(name, model)]
        return {"eval_time": "75m", "alertname": name, "exp_alerts": [{
            "exp_labels": {"severity": rule.severity, **rule.labels},
            "exp_annotations": rule.annotations()}]}

    return {"name": "SLO alerts fire on a server's own series", "interval": f"{STEP}s",
            "input_series": mlserver("digits", success=24, n=n) + slow,
            "alert_rule_test": [firing("InferenceErrorBudgetBurnFast", "digits"),
                                firing("InferenceLatencyBudgetBurnFast", "opt-125m"),
                                firing("InferenceTimeToFirstTokenBudgetBurnFast", "opt-125m"),
                                firing("InferenceInterTokenLatencyBudgetBurnFast", "opt-125m")],
            "promql_expr_test": [
                *close('model:inference_availability_errors:ratio_rate1h{model="digits"}',
                       [(m("digits"), 0.04)], at="75m"),
                *close('model:inference_latency_slow:ratio_rate1h{model="opt-125m"}',
                       [(m("opt-125m"), 0.9)], at="75m"),
                *close('model:inference_time_to_first_token_slow:ratio_rate1h'
                       '{model="opt-125m"}', [(m("opt-125m"), 0.9)], at="75m"),
                *close('model:inference_inter_token_latency_slow:ratio_rate1h'
                       '{model="opt-125m"}', [(m("opt-125m"), 0.8)], at="75m"),
            ]}


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    rules = write_yaml(tmp_path / "rules.yml", render_rule_file(DEFAULT, SLOS))
    otel = write_yaml(tmp_path / "otel-genai.yml", render_genai_rule_file())
    tests = write_yaml(tmp_path / "native-tests.yml", {
        "rule_files": [rules.name, otel.name], "evaluation_interval": f"{STEP}s",
        "tests": [canonical_test(), proxied_test(), old_names_test(), slo_test()]})
    return rules, tests


def promtool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *argv], capture_output=True, text=True, timeout=300)


def test_native_series_pass_for_canonical_ones(files: tuple[Path, Path]) -> None:
    rules, tests = files
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


def without_native_group(rules: dict[str, Any]) -> None:
    rules["groups"] = [g for g in rules["groups"] if g["name"] != "inferwatch-native"]


def without_exclusion(rules: dict[str, Any]) -> None:
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace(f" unless on (model) {MEASURED}", "")


@pytest.mark.parametrize(("break_rules", "failing"), [
    (without_native_group, 'expr: "inference_requests_total"'),
    (without_exclusion, 'expr: "sum by (model) (inference_requests_total)"'),
])
def test_the_tests_can_fail(files: tuple[Path, Path], break_rules: Callable[[Any], None],
                            failing: str) -> None:
    """Without the mapping, or without its exclusion of measured models, promtool fails."""
    rules, tests = files
    broken = render_rule_file(DEFAULT, SLOS)
    break_rules(broken)
    assert broken != render_rule_file(DEFAULT, SLOS)
    write_yaml(rules, broken)
    result = promtool("test", "rules", str(tests))
    assert result.returncode != 0
    assert failing in result.stdout + result.stderr
