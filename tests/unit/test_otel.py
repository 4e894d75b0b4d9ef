"""stack/otel.py: OpenTelemetry's GenAI metrics over inferwatch's LLM series."""

from pathlib import Path

from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.config import write_stack_config
from inferwatch.stack.otel import GENAI_METRICS, genai_recordings, genai_table
from inferwatch.stack.profiles import FAST

DOCS = Path(__file__).resolve().parents[2] / "docs" / "llm.md"


def test_names_are_the_collectors_prometheus_names() -> None:
    """Dots become underscores; a unit in seconds adds `_seconds`, `{token}` nothing."""
    for metric in GENAI_METRICS:
        unit = "_seconds" if metric.series.endswith("_seconds") else ""
        assert metric.prometheus == metric.name.replace(".", "_") + unit


def test_recordings_copy_the_llm_histograms_and_the_token_counter() -> None:
    records = {r.record: r.expr for r in genai_recordings()}
    assert set(records) == {
        *(f"gen_ai_server_{name}_seconds_{part}" for name in ("time_to_first_token",
                                                              "time_per_output_token")
          for part in ("bucket", "sum", "count")),
        "gen_ai_client_token_usage_sum"}
    tokens = records["gen_ai_client_token_usage_sum"]
    assert tokens.startswith("sum without (model, type) (label_replace(label_replace("
                             "inference_tokens_total{")
    assert '"gen_ai_token_type", "$1", "type", "(.+)"' in tokens


def test_render_writes_them_apart_from_the_rules_prometheus_loads(tmp_path: Path) -> None:
    paths = write_stack_config(tmp_path, FAST, StackPorts())
    optional = paths["optional_rules_otel"]
    assert optional.parent != paths["rules"].parent
    assert "gen_ai_server_time_to_first_token_seconds_bucket" in optional.read_text()
    assert "gen_ai_" not in paths["rules"].read_text()


def test_docs_show_the_table_rendered_from_the_mapping() -> None:
    assert genai_table() in DOCS.read_text(), "docs/llm.md: paste stack.otel.genai_table()"
