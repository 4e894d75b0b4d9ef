from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from inferwatch.metrics import InferenceMetrics
from inferwatch.metrics.instruments import Completion
from inferwatch.metrics.names import KV_CACHE_USAGE_RATIO, PREEMPTIONS_TOTAL
from inferwatch.stack.config import KNOWN_SERVERS
from inferwatch.stack.native import (
    COLUMNS,
    MEASURED,
    MLSERVER,
    NATIVE_SERVERS,
    TORCHSERVE,
    TRITON,
    VLLM,
    NativeServer,
    coverage_table,
    mapping_table,
    quantile_note,
)
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import FAST
from inferwatch.stack.rules import native_recordings, rule_groups

DOCS = Path(__file__).resolve().parents[2] / "docs" / "proxy.md"
# Reported by servers (vLLM), never measured by inferwatch itself.
SERVER_ONLY = {KV_CACHE_USAGE_RATIO, PREEMPTIONS_TOTAL}


def canonical_names() -> set[str]:
    """Every sample name that inferwatch's own instruments export, and the servers' only."""
    registry = CollectorRegistry()
    metrics = InferenceMetrics({"m": "1"}, registry=registry)
    metrics.observe_request("m", 200, 0.1)
    metrics.observe_stage("m", "queue", 0.01)
    metrics.observe_batch("m", 4)
    metrics.observe_first_byte("m", 0.05)
    metrics.watch_queue("m", lambda: 0, 8)
    metrics.set_model_loaded("m", runtime="numpy", load_seconds=1)
    metrics.observe_completion("m", Completion(input_tokens=3, output_tokens=2,
                                               finish_reasons=("stop",), first_token=0.1,
                                               gaps=(0.02,), tokens_per_second=50))
    return {s.name for family in registry.collect() for s in family.samples} | SERVER_ONLY


def test_servers_are_the_known_scrape_jobs() -> None:
    assert [s.name for s in NATIVE_SERVERS] == list(KNOWN_SERVERS)


def test_every_recorded_series_is_one_that_inferwatch_exports() -> None:
    exported = canonical_names()
    for rule in native_recordings():
        assert rule.record in exported, rule.record
        assert rule.labels["source"] in KNOWN_SERVERS


def test_rendering_renames_sums_away_converts_and_skips_measured_models() -> None:
    [latency] = TORCHSERVE.maps("inference_latency_seconds_sum")
    assert TORCHSERVE.expr(latency) == (
        "(sum without (model_name, model_version, hostname) (label_replace(label_replace("
        'ts_inference_latency_microseconds, "model", "$1", "model_name", "(.+)"), '
        '"version", "$1", "model_version", "(.+)")) * 1e-06) unless on (model) '
        'inference_requests_total{source=""}')
    [requests] = TRITON.maps("inference_requests_total")
    assert TRITON.expr(requests) == (
        "(sum without (reason) ({__name__=~\"nv_inference_request_success|"
        "nv_inference_request_failure\"})) unless on (model) " + MEASURED)
    assert VLLM.model_info_expr().startswith(
        "(group without (model_name, engine, finished_reason) (label_replace(")


def test_rules_carry_source_and_stage() -> None:
    rules = [(r.record, r.labels) for r in native_recordings([TRITON])]
    assert rules[0] == ("inference_model_info", {"source": "triton", "runtime": "triton"})
    assert ("inference_stage_seconds_sum", {"source": "triton", "stage": "compute"}) in rules
    groups = rule_groups(FAST)
    assert groups[0].name == "inferwatch-native"
    assert len(groups[0].rules) == sum(len(s.recorded()) for s in NATIVE_SERVERS)


@pytest.mark.parametrize("server", NATIVE_SERVERS, ids=lambda s: s.name)
def test_each_column_is_mapped_or_says_why_not(server: NativeServer) -> None:
    assert set(server.gaps) <= {title for title, _, _ in COLUMNS}
    for title, records, stage in COLUMNS:
        mapped = any(server.maps(r, stage) for r in records)
        assert mapped != (title in server.gaps), (title, mapped)


def test_docs_show_the_coverage_table_rendered_from_the_mappings() -> None:
    table = coverage_table()
    assert "| [TorchServe 0.12" in table and "| [MLServer 1.7]" in table
    assert table in DOCS.read_text(), "docs/proxy.md: paste stack.native.coverage_table()"


def test_quantile_panels_say_which_servers_have_no_histogram() -> None:
    note = quantile_note()
    assert note.startswith("From latency histograms: inferwatch's own, or a server's (vLLM).")
    assert "TorchServe, Triton and MLServer export no per-model latency histogram" in note
    for key in ("latency_p50", "latency_p95", "latency_p99"):
        assert DASHBOARD.panel(key).description == note
    assert quantile_note([VLLM, MLSERVER]).count("MLServer export") == 1


LLM_DOCS = DOCS.with_name("llm.md")


def test_vllm_maps_the_llm_series_under_old_and_new_names() -> None:
    [itl] = VLLM.maps("inference_inter_token_latency_seconds_bucket")
    # Both names while the old one is deprecated: the new one's series, never their sum.
    new, old = VLLM.expr(itl).removesuffix(f" unless on (model) {MEASURED}").split(" or ")
    assert "vllm:inter_token_latency_seconds_bucket" in new
    assert "vllm:time_per_output_token_seconds_bucket" in old
    [kv] = VLLM.maps("inference_kv_cache_usage_ratio")
    assert VLLM.expr(kv).startswith("(max without (model_name, engine, finished_reason) (")
    tokens = {r.labels["type"]: r.expr for r in native_recordings([VLLM])
              if r.record == "inference_tokens_total"}
    assert set(tokens) == {"input", "output"}
    assert "vllm:prompt_tokens_total" in tokens["input"]
    [reasons] = VLLM.maps("inference_finish_reasons_total")
    assert ('"finish_reason", "$1", "finished_reason", '
            '"(stop|length|tool_calls|content_filter|function_call)"), "finish_reason", '
            '"other", "finish_reason", ""') in VLLM.expr(reasons)


def test_docs_show_the_vllm_mapping_rendered_from_it() -> None:
    table = mapping_table(VLLM)
    assert "| `inference_tokens_total{type=\"output\"}` | `vllm:generation_tokens_total` |" \
        in table
    assert table in LLM_DOCS.read_text(), "docs/llm.md: paste stack.native.mapping_table(VLLM)"
