import ast
import re

import numpy as np
from prometheus_client import CollectorRegistry

from inferwatch.metrics import InferenceMetrics
from inferwatch.metrics.instruments import Completion
from inferwatch.metrics.names import KV_CACHE_USAGE_RATIO, PREEMPTIONS_TOTAL
from inferwatch.metrics.quality import (
    FeatureReference,
    QualityMetrics,
    QualityMonitor,
    QualityReference,
)
from inferwatch.stack.panels import (
    ALL,
    DASHBOARD,
    GPU_PRESENT,
    LLM_PRESENT,
    PANELS,
    SEED_PANELS,
    VARIABLES,
    literal_regex,
)
from inferwatch.stack.profiles import DEFAULT, FAST

GPU_METRICS = {"inferwatch_gpu_utilization_ratio", "inferwatch_gpu_memory_used_bytes",
               "inferwatch_gpu_memory_total_bytes", "inferwatch_gpu_available"}
SERVER_ONLY = {KV_CACHE_USAGE_RATIO, PREEMPTIONS_TOTAL}  # from servers that report them: vLLM


def emitted_names() -> set[str]:
    registry = CollectorRegistry()
    metrics = InferenceMetrics({"m": "1"}, registry=registry)
    metrics.watch_queue("m", lambda: 0, 1)
    metrics.set_model_loaded("m", runtime="numpy", load_seconds=1, accuracy=0.9)
    metrics.observe_request("m", 400, 0.1, "invalid_image")
    metrics.observe_completion("m", Completion(input_tokens=3, output_tokens=2,
                                               finish_reasons=("stop",), first_token=0.1,
                                               gaps=(0.02,), tokens_per_second=50))
    quality = QualityMetrics(registry)
    monitor = QualityMonitor(quality, "m", "1", ["a", "b"], QualityReference(
        {"x": FeatureReference(np.array([0.5]), np.array([0.5, 0.5]))}, np.array([0.5, 0.5])),
        features=lambda s: {"mean_intensity": s[:, 0], "x": s[:, 0]})
    monitor.observe(np.array([[0.9, 0.1]]), np.array([[0.2]]))
    monitor.flush()
    return {s.name for family in registry.collect() for s in family.samples}


def test_seed_panels_keep_their_keys_and_order() -> None:
    assert [p.key for p in SEED_PANELS] == ["qps", "latency_avg", "latency_p95", "error_ratio",
                                            "cpu"]
    assert set(SEED_PANELS) <= set(DASHBOARD.panels)


def test_rows_in_the_issue_order_and_every_panel_in_one() -> None:
    assert [r.key for r in DASHBOARD.rows] == ["business", "llm", "quality", "system",
                                               "alerts"]
    assert DASHBOARD.panels == PANELS  # PANELS is written row by row
    keys = [p.key for p in PANELS]
    assert len(keys) == len(set(keys))
    for row in DASHBOARD.rows:
        assert row.panels and all(p.row == row.key for p in row.panels)
        assert all(0 < p.width <= 24 for p in row.panels)
    assert [v.name for v in VARIABLES] == ["model", "instance"]


def test_queries_read_only_metrics_that_exist() -> None:
    emitted = emitted_names()
    for panel in PANELS:
        assert panel.metrics, panel.key
        for name in panel.metrics:
            assert (name in emitted or name.startswith("node_") or name == "ALERTS"
                    or name in GPU_METRICS or name in SERVER_ONLY), (panel.key, name)


def test_gpu_and_llm_panels_and_only_they_are_conditional() -> None:
    conditional = {p.key for p in PANELS if p.requires}
    gpu = {p.key for p in PANELS if p.metrics & GPU_METRICS}
    llm = {p.key for p in PANELS if p.row == "llm"}
    assert conditional == gpu | llm
    assert gpu == {"gpu_utilization", "gpu_memory"}
    assert all(p.requires == GPU_PRESENT for p in PANELS if p.key in gpu)
    # Each LLM panel appears with its series: tokens, streams, or a server's KV cache.
    assert {p.key for p in PANELS if p.requires == LLM_PRESENT} == {
        "llm_tokens", "llm_requests", "llm_finish_reasons"}
    assert all(p.absent for p in PANELS if p.requires)  # Grafana says why it is empty


def test_every_placeholder_is_substituted() -> None:
    for panel in PANELS:
        for profile in (DEFAULT, FAST):
            q = panel.query(profile, literal_regex("digits"), literal_regex("10.0.0.1"))
            assert "$" not in q, (panel.key, q)
            if "rate(" in q:
                assert f"[{profile.rate_window}]" in q
        assert "$" not in (panel.requirement(FAST) or "")
    assert 'model=~"digits"' in SEED_PANELS[0].query(FAST, "digits")
    assert 'model=~".+"' in SEED_PANELS[0].query(FAST)


def test_window_may_be_left_to_grafana() -> None:
    for panel in PANELS:
        grafana = panel.query(FAST, "$model", "$instance", window="$__rate_interval")
        assert grafana.replace("$__rate_interval", FAST.rate_window) == panel.query(
            FAST, "$model", "$instance")
        assert ("rate(" in grafana) == ("[$__rate_interval]" in grafana), panel.key


def test_literal_regex_matches_exactly_its_value_once_unquoted() -> None:
    for value in ["digits", "127.0.0.1", "[::1]", 'a"b', r"x\y", "a+b|c(d)"]:
        escaped = literal_regex(value)
        # A PromQL double-quoted string unescapes like a Python one for these sequences.
        regex = ast.literal_eval(f'"{escaped}"')
        assert re.fullmatch(regex, value), (value, regex)
        assert not re.fullmatch(regex, value + "x")
    assert literal_regex("") == "" and ALL == ".+"


def test_instance_variable_selects_hosts_for_service_and_node_exporter() -> None:
    instance = next(v for v in VARIABLES if v.name == "instance")
    assert instance.options(["10.0.0.1:8080", "10.0.0.1:8081", "gpu-2:8080", "[::1]:80"]) == [
        "10.0.0.1", "[::1]", "gpu-2"]
    model = next(v for v in VARIABLES if v.name == "model")
    assert model.options(["b", "a", "b"]) == ["a", "b"]
    cpu = next(p for p in PANELS if p.key == "cpu").query(FAST, instance=literal_regex("10.0.0.1"))
    selector = re.search(r'instance=~"([^"]*)"', cpu)
    assert selector
    regex = ast.literal_eval(f'"{selector.group(1)}"')
    assert re.fullmatch(regex, "10.0.0.1:9100") and re.fullmatch(regex, "10.0.0.1:8080")
    assert not re.fullmatch(regex, "10.0.0.10:9100")
