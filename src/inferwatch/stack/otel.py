"""OpenTelemetry's GenAI metrics, read from inferwatch's LLM series.

The GenAI semantic conventions (v1.36.0,
https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/) name the metrics that an
OpenTelemetry-instrumented LLM client or server reports. The Collector's Prometheus exporter
writes their names with underscores and the unit as a suffix
(``gen_ai.server.time_to_first_token`` in seconds is
``gen_ai_server_time_to_first_token_seconds``, ``{token}`` adds none), and their attributes
as labels (``gen_ai.request.model`` is ``gen_ai_request_model``).

``GENAI_METRICS`` maps each onto the inferwatch series that measures the same thing (the
table of docs/llm.md). ``genai_recordings`` records the series under OpenTelemetry's names,
for dashboards built on them: optional, since they copy every LLM histogram, so ``render``
writes them apart from the rules that Prometheus loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inferwatch.metrics.names import (
    INTER_TOKEN_LATENCY_SECONDS,
    LATENCY_SECONDS,
    MODEL_LABEL,
    TIME_TO_FIRST_TOKEN_SECONDS,
    TOKEN_TYPE_LABEL,
    TOKENS_TOTAL,
)
from inferwatch.stack.queries import histogram_quantile, select, summed
from inferwatch.stack.rules import LOCAL_SCOPE, RecordingRule, RuleGroup, RuleScope

__all__ = [
    "GENAI_GROUP",
    "GENAI_METRICS",
    "GenAIMetric",
    "genai_recordings",
    "genai_table",
    "render_genai_rule_file",
]

GENAI_GROUP = "inferwatch-otel-genai"
_HISTOGRAM = (("_bucket", "_bucket"), ("_sum", "_sum"), ("_count", "_count"))


@dataclass(frozen=True)
class GenAIMetric:
    """An OpenTelemetry GenAI metric and the inferwatch series that measures it.

    ``parts`` pairs each recorded series' suffix with the inferwatch one it copies; none:
    no recording (the series is not the LLM's own).
    """

    name: str
    prometheus: str  # the name the Collector's Prometheus exporter gives it
    series: str  # inferwatch's: a histogram's family, or a counter
    query: str  # its usual reading, in PromQL on inferwatch's series
    note: str
    parts: tuple[tuple[str, str], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)  # OpenTelemetry's: inferwatch's


_MODEL = {"gen_ai_request_model": MODEL_LABEL}

GENAI_METRICS = (
    GenAIMetric(
        "gen_ai.server.time_to_first_token", "gen_ai_server_time_to_first_token_seconds",
        TIME_TO_FIRST_TOKEN_SECONDS,
        histogram_quantile(0.95, "5m", by=(MODEL_LABEL,), histogram=TIME_TO_FIRST_TOKEN_SECONDS),
        "the same: streamed answers, from the request to the first token",
        _HISTOGRAM, _MODEL),
    GenAIMetric(
        "gen_ai.server.time_per_output_token", "gen_ai_server_time_per_output_token_seconds",
        INTER_TOKEN_LATENCY_SECONDS,
        histogram_quantile(0.95, "5m", by=(MODEL_LABEL,), histogram=INTER_TOKEN_LATENCY_SECONDS),
        "one observation per gap between tokens, where OpenTelemetry's is one per request (its "
        "mean gap): the quantiles and the mean weigh long answers more",
        _HISTOGRAM, _MODEL),
    GenAIMetric(
        "gen_ai.client.token.usage", "gen_ai_client_token_usage", TOKENS_TOTAL,
        summed(TOKENS_TOTAL, "5m", by=(MODEL_LABEL, TOKEN_TYPE_LABEL)),
        "a counter, recorded as the histogram's `_sum` (tokens by `gen_ai_token_type`); no "
        "buckets: inferwatch counts tokens, not their distribution per request",
        (("_sum", ""),), {**_MODEL, "gen_ai_token_type": TOKEN_TYPE_LABEL}),
    GenAIMetric(
        "gen_ai.server.request.duration", "gen_ai_server_request_duration_seconds",
        LATENCY_SECONDS,
        histogram_quantile(0.95, "5m", by=(MODEL_LABEL,)),
        "the same, for every model: not recorded (a copy of every model's latency histogram)"),
)


def _renamed(metric: str, labels: Mapping[str, str], scope: RuleScope) -> str:
    """``metric`` with OpenTelemetry's label names in place of inferwatch's."""
    expr = select(metric, scope.service)
    for otel, ours in labels.items():
        expr = f'label_replace({expr}, "{otel}", "$1", "{ours}", "(.+)")'
    return f"sum without ({', '.join(labels.values())}) ({expr})"


def genai_recordings(scope: RuleScope = LOCAL_SCOPE) -> list[RecordingRule]:
    return [RecordingRule(f"{m.prometheus}{otel}", _renamed(f"{m.series}{ours}", m.labels, scope))
            for m in GENAI_METRICS for otel, ours in m.parts]


def render_genai_rule_file(scope: RuleScope = LOCAL_SCOPE) -> dict[str, Any]:
    group = RuleGroup(GENAI_GROUP, genai_recordings(scope))
    return {"groups": [{"name": group.name, "rules": [r.render() for r in group.rules]}]}


def genai_table() -> str:
    """The Markdown table of docs/llm.md."""
    lines = ["| OpenTelemetry metric | as Prometheus name | inferwatch series | PromQL | "
             "how they differ |", "|---|---|---|---|---|"]
    lines += [f"| `{m.name}` | `{m.prometheus}` | `{m.series}` | `{m.query}` | {m.note} |"
              for m in GENAI_METRICS]
    return "\n".join(lines) + "\n"
