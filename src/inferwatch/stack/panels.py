"""Dashboard panels: the only place a dashboard query is written.

Grafana JSON (``stack/grafana.py``) and the built-in page (``stack/dashboard``) both render
``DASHBOARD``. The first panels are the seed tutorial's five, with its average-latency formula
corrected (``avg(sum / count)`` averages per-series lifetime means; the mean over a window is
``rate(sum) / rate(count)``).

Queries use three placeholders: ``$window`` (the profile's rate window, or Grafana's
``$__rate_interval`` in its JSON), ``$model`` and ``$instance`` (template variables holding
regexes). ``$instance`` selects a *host*: the
service and node_exporter on one machine have different ports, so the port is matched apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from inferwatch.metrics.names import (
    BATCH_SIZE,
    DRIFT_PSI,
    FEEDBACK_TOP5_TOTAL,
    FINISH_REASONS_TOTAL,
    GPU_AVAILABLE,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_MEMORY_USED_BYTES,
    GPU_UTILIZATION_RATIO,
    IN_FLIGHT_REQUESTS,
    INPUT_MEAN_INTENSITY,
    INTER_TOKEN_LATENCY_SECONDS,
    KV_CACHE_USAGE_RATIO,
    LATENCY_SECONDS,
    MODEL_HELDOUT_ACCURACY_RATIO,
    MODEL_INFO,
    OUTPUT_TOKENS_PER_SECOND,
    PREDICTION_CONFIDENCE,
    PREDICTIONS_TOTAL,
    PREEMPTIONS_TOTAL,
    QUEUE_DEPTH,
    RESPONSES_TOTAL,
    STAGE_SECONDS,
    TIME_TO_FIRST_TOKEN_SECONDS,
    TOKENS_TOTAL,
)
from inferwatch.stack.native import quantile_note
from inferwatch.stack.profiles import DEFAULT, Profile
from inferwatch.stack.queries import (
    accuracy,
    error_ratio,
    error_reason_rate,
    histogram_mean,
    histogram_quantile,
    request_rate,
    select,
    summed,
)

__all__ = [
    "DASHBOARD",
    "GPU_PRESENT",
    "LLM_PRESENT",
    "PANELS",
    "ROWS",
    "SEED_PANELS",
    "VARIABLES",
    "Dashboard",
    "Panel",
    "Row",
    "Threshold",
    "Variable",
    "literal_regex",
]

ALL = ".+"
"""The regex that a template variable holds when every value is selected."""


@dataclass(frozen=True)
class Threshold:
    """From ``value`` upwards the panel is drawn in ``color``; ``None`` is the base colour."""

    value: float | None
    color: str


OK = Threshold(None, "green")


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    expr: str  # PromQL with $window for the rate range, $model and $instance for the selectors
    unit: str  # a Grafana unit id: reqps, s, percentunit, percent, bytes, Bps, none
    row: str = "business"
    legend: str = "{{model}}"  # Grafana legendFormat: {{label}} is replaced by its value
    kind: str = "timeseries"  # or "stat": the last value, large
    thresholds: tuple[Threshold, ...] = ()
    width: int = 8  # of 24 grid columns
    requires: str | None = None  # PromQL that returns a sample when the panel can have data
    absent: str = ""  # what Grafana shows where ``requires`` returns none
    description: str = ""

    def query(self, profile: Profile = DEFAULT, model: str = ALL, instance: str = ALL,
              window: str | None = None) -> str:
        """The PromQL with placeholders replaced; ``model``/``instance`` are regexes,
        ``window`` the range of every rate (default: the profile's)."""
        return _substitute(self.expr, profile, model, instance, window)

    @property
    def metrics(self) -> frozenset[str]:
        """The metric names the panel reads (every selector here carries braces)."""
        return frozenset(_METRIC.findall(self.expr + " " + (self.requires or "")))

    def requirement(self, profile: Profile = DEFAULT, model: str = ALL,
                    instance: str = ALL) -> str | None:
        return None if self.requires is None else _substitute(self.requires, profile, model,
                                                               instance)


_METRIC = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def _substitute(expr: str, profile: Profile, model: str, instance: str,
                window: str | None = None) -> str:
    return (expr.replace("$window", window or profile.rate_window).replace("$model", model)
            .replace("$instance", instance))


_REGEX_META = frozenset("\\.+*?()|[]{}^$")


def literal_regex(value: str) -> str:
    r"""A regex matching exactly ``value``, escaped to sit inside a PromQL double-quoted string.

    >>> print(literal_regex("127.0.0.1"))
    127\\.0\\.0\\.1
    """
    regex = "".join("\\" + ch if ch in _REGEX_META else ch for ch in value)
    return regex.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True)
class Variable:
    """A template variable: its options are the values of ``label`` on series of ``metric``.

    ``regex``, when set, keeps its first group of each value (Grafana's variable regex).
    """

    name: str
    title: str
    metric: str
    label: str
    regex: str | None = None

    @property
    def grafana_query(self) -> str:
        return f"label_values({self.metric}, {self.label})"

    def options(self, values: Iterable[str]) -> list[str]:
        if self.regex is None:
            return sorted(set(values))
        pattern = re.compile(self.regex)
        found = (pattern.search(v) for v in values)
        return sorted({m.group(1) for m in found if m is not None})


VARIABLES = (
    # Loaded models, not every model label: requests for an unknown model are "_unknown".
    Variable("model", "Model", MODEL_INFO, "model"),
    Variable("instance", "Host", MODEL_INFO, "instance", r"^(.+?)(?::[0-9]+)?$"),
)

_M = 'model=~"$model"'
_I = 'instance=~"$instance(:[0-9]+)?"'
_S = f"{_M}, {_I}"
_WINDOW = "$window"
_W = f"[{_WINDOW}]"
_BY_MODEL = ("model",)


def _quantile(q: float, histogram: str = LATENCY_SECONDS) -> str:
    return histogram_quantile(q, _WINDOW, _S, by=_BY_MODEL, histogram=histogram)


def _both(metric_a: str, name_a: str, metric_b: str, name_b: str, by: str, selector: str) -> str:
    """Two rates in one panel, told apart by a ``direction`` label."""
    def one(metric: str, name: str) -> str:
        return (f'label_replace(sum by ({by}) (rate({metric}{{{selector}}}{_W})), '
                f'"direction", "{name}", "", "")')

    return f"{one(metric_a, name_a)} or {one(metric_b, name_b)}"


SEED_PANELS = (
    Panel("qps", "Requests per second (QPS)", request_rate(_WINDOW, _S, by=_BY_MODEL), "reqps"),
    Panel("latency_avg", "Average latency",
          histogram_mean(LATENCY_SECONDS, _WINDOW, _S, by=_BY_MODEL), "s", width=6),
    Panel("latency_p95", "p95 latency", _quantile(0.95), "s", width=6,
          description=quantile_note()),
    Panel("error_ratio", "Error ratio (5xx)",
          error_ratio(_WINDOW, _S, by=_BY_MODEL),
          "percentunit", thresholds=(OK, Threshold(0.05, "red")),
          description="Server-side failures over all requests; the seed's alert fires above "
                      "5%."),
    Panel("cpu", "Host CPU utilisation",
          f'100 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle", {_I}}}{_W}))'
          " * 100",
          "percent", row="system", legend="{{instance}}",
          thresholds=(OK, Threshold(80, "orange"), Threshold(90, "red"))),
)
_QPS, _LATENCY_AVG, _LATENCY_P95, _ERROR_RATIO, _CPU = SEED_PANELS

GPU_PRESENT = f"max({select(GPU_AVAILABLE, _I)}) > 0"
"""Returns a sample when a host in ``$instance`` reports a usable GPU."""
_GPU_NOTE = f"Appears when the host reports a GPU ({GPU_AVAILABLE} = 1)."
_GPU_ABSENT = "no GPU reported"

def _counted(metric: str, by: str = "") -> str:
    """Returns a sample when a model in ``$model`` counted some of ``metric``."""
    return f"sum{by} ({select(metric, _S)}) > 0"


def _reported(metric: str) -> str:
    """Returns a sample when a server reports the gauge ``metric`` for a model in ``$model``."""
    return f"count({select(metric, _S)})"


LLM_PRESENT = _counted(TOKENS_TOTAL)
"""Returns a sample when a model in ``$model`` counted tokens: an LLM, behind the proxy or
on vLLM."""
_LLM_NOTE = "Appears when a selected model counts tokens (an LLM behind the proxy, or vLLM)."
_STREAM_NOTE = "Appears when a selected model streams its answers."
_LLM_ABSENT = "no LLM traffic"


def _llm_only(expr: str) -> str:
    """``expr`` for the models that counted tokens only: a digits model has a queue too."""
    return f"({expr}) and on (model) ({_counted(TOKENS_TOTAL, ' by (model)')})"


def _states(*states: tuple[str, str]) -> str:
    """Gauges summed per model in one panel, told apart by a ``state`` label."""
    return " or ".join(f'label_replace(sum by (model) ({select(metric, _S)}), "state", '
                       f'"{name}", "", "")' for name, metric in states)


_FS = 'fstype!~"tmpfs|ramfs|squashfs|nsfs|devtmpfs"'
_GPU = "instance, gpu, name"

PANELS = (
    # Business: what clients get.
    _QPS,
    _ERROR_RATIO,
    Panel("responses_by_code", "Responses by status code",
          summed(RESPONSES_TOTAL, _WINDOW, _S, by=("code",)), "reqps",
          legend="{{code}}"),
    _LATENCY_AVG,
    Panel("latency_p50", "p50 latency", _quantile(0.5), "s", width=6,
          description=quantile_note()),
    _LATENCY_P95,
    Panel("latency_p99", "p99 latency", _quantile(0.99), "s", width=6,
          description=quantile_note()),
    Panel("stage_latency", "Mean time per stage",
          histogram_mean(STAGE_SECONDS, _WINDOW, _S, by=("model", "stage")), "s",
          legend="{{model}} {{stage}}",
          description="Where a request's time goes: queue, preprocess, compute, postprocess."),
    Panel("error_reasons", "Failed requests by reason",
          error_reason_rate(_WINDOW, _S, by=("model", "reason")), "reqps",
          legend="{{model}} {{reason}}"),
    Panel("batch_size", "Mean batch size",
          histogram_mean(BATCH_SIZE, _WINDOW, _S, by=_BY_MODEL), "none"),
    Panel("queue_depth", "Queue depth (samples waiting)",
          f"sum by (model) ({select(QUEUE_DEPTH, _S)})", "none", width=12),
    Panel("in_flight", "Requests in flight",
          f"sum by (model) ({select(IN_FLIGHT_REQUESTS, _S)})", "none", width=12),
    # LLM serving: tokens and the stream's timing, from the proxy or a server's own series.
    Panel("llm_tokens", "Tokens per second",
          summed(TOKENS_TOTAL, _WINDOW, _S, by=("model", "type")), "none",
          row="llm", legend="{{model}} {{type}}", width=12,
          requires=LLM_PRESENT, absent=_LLM_ABSENT,
          description=f"Input (prompt) and output (completion) tokens. {_LLM_NOTE}"),
    Panel("llm_ttft_p95", "p95 time to first token",
          _quantile(0.95, TIME_TO_FIRST_TOKEN_SECONDS), "s", row="llm", width=6,
          requires=_counted(f"{TIME_TO_FIRST_TOKEN_SECONDS}_count"), absent="no streams",
          description=f"From the request to the first token. {_STREAM_NOTE}"),
    Panel("llm_itl_p95", "p95 inter-token latency",
          _quantile(0.95, INTER_TOKEN_LATENCY_SECONDS), "s", row="llm", width=6,
          requires=_counted(f"{INTER_TOKEN_LATENCY_SECONDS}_count"), absent="no streams",
          description=f"The gaps between a stream's tokens, after the first. {_STREAM_NOTE}"),
    Panel("llm_requests", "LLM requests waiting and in flight",
          _llm_only(_states(("waiting", QUEUE_DEPTH), ("in flight", IN_FLIGHT_REQUESTS))),
          "none", row="llm", legend="{{model}} {{state}}", requires=LLM_PRESENT,
          absent=_LLM_ABSENT,
          description="Waiting: queued by the server. In flight: being answered, waiting "
                      f"ones included. {_LLM_NOTE}"),
    Panel("llm_kv_cache", "KV cache usage",
          f"max by (model) ({select(KV_CACHE_USAGE_RATIO, _S)})", "percentunit", row="llm",
          thresholds=(OK, Threshold(0.9, "orange"), Threshold(0.99, "red")),
          requires=_reported(KV_CACHE_USAGE_RATIO), absent="not reported",
          description="The fullest engine's share of KV cache blocks in use; when full, "
                      "requests are preempted. From servers that report it (vLLM)."),
    Panel("llm_preemptions", "Preemptions per second",
          summed(PREEMPTIONS_TOTAL, _WINDOW, _S, by=_BY_MODEL), "none", row="llm",
          requires=_reported(PREEMPTIONS_TOTAL), absent="not reported",
          description="Requests evicted from the batch for want of KV cache: each stalls a "
                      "stream. From servers that report it (vLLM)."),
    Panel("llm_finish_reasons", "Finished answers by reason",
          summed(FINISH_REASONS_TOTAL, _WINDOW, _S, by=("model", "finish_reason")), "reqps",
          row="llm", legend="{{model}} {{finish_reason}}", width=12,
          requires=LLM_PRESENT, absent=_LLM_ABSENT,
          description=f"length: cut short by max_tokens or the context. {_LLM_NOTE}"),
    Panel("llm_stream_speed", "Output tokens per second per stream (median)",
          _quantile(0.5, OUTPUT_TOKENS_PER_SECOND), "none", row="llm", width=12,
          requires=_counted(f"{OUTPUT_TOKENS_PER_SECOND}_count"), absent="no streams",
          description="A stream's output tokens per second after its first, as the proxy "
                      "measures it."),
    # Model quality: accuracy measured at load and from labelled feedback, drift, confidence.
    Panel("heldout_accuracy", "Held-out accuracy",
          f"max by (model, version) ({select(MODEL_HELDOUT_ACCURACY_RATIO, _S)})",
          "percentunit", row="quality", kind="stat", legend="{{model}} v{{version}}",
          thresholds=(Threshold(None, "red"), Threshold(0.9, "orange"), Threshold(0.95, "green")),
          description="Accuracy on held-out data, measured when the model was loaded.", width=6),
    Panel("feedback_accuracy", "Accuracy from feedback (top-1)",
          accuracy(_WINDOW, _S, by=_BY_MODEL), "percentunit", row="quality", width=6,
          thresholds=(Threshold(None, "red"), Threshold(0.9, "green")),
          description="Share of answers whose labelled feedback (POST /feedback) agreed."),
    Panel("feedback_top5_accuracy", "Accuracy from feedback (top-5)",
          accuracy(_WINDOW, _S, by=_BY_MODEL, feedback=FEEDBACK_TOP5_TOTAL), "percentunit",
          row="quality", width=6,
          thresholds=(Threshold(None, "red"), Threshold(0.9, "green"))),
    Panel("drift_psi", "Input drift (PSI vs training data)",
          f"max by (model, feature) ({select(DRIFT_PSI, _S)})", "none", row="quality",
          legend="{{model}} {{feature}}", width=6,
          thresholds=(OK, Threshold(0.1, "orange"), Threshold(0.25, "red")),
          description="Population Stability Index of the last window of inputs; "
                      "feature=prediction is the predicted class mix."),
    Panel("confidence", "Median top-1 confidence",
          _quantile(0.5, PREDICTION_CONFIDENCE), "percentunit",
          row="quality", width=12),
    Panel("class_mix", "Predicted class mix",
          summed(PREDICTIONS_TOTAL, _WINDOW, _S, by=("class",)), "reqps",
          row="quality", legend="{{class}}", width=12),
    Panel("input_mean", "Mean input intensity (median)",
          _quantile(0.5, INPUT_MEAN_INTENSITY), "percentunit",
          row="quality", width=12),
    # System: the hosts, from node_exporter (and the GPU exporter where there is a GPU).
    _CPU,
    Panel("memory", "Host memory used",
          f"1 - sum by (instance) (node_memory_MemAvailable_bytes{{{_I}}})"
          f" / sum by (instance) (node_memory_MemTotal_bytes{{{_I}}})",
          "percentunit", row="system", legend="{{instance}}",
          thresholds=(OK, Threshold(0.8, "orange"), Threshold(0.9, "red"))),
    Panel("disk_space", "Disk space used",
          f"1 - max by (instance, mountpoint) (node_filesystem_avail_bytes{{{_FS}, {_I}}})"
          f" / max by (instance, mountpoint) (node_filesystem_size_bytes{{{_FS}, {_I}}})",
          "percentunit", row="system", legend="{{instance}} {{mountpoint}}",
          thresholds=(OK, Threshold(0.8, "orange"), Threshold(0.9, "red"))),
    Panel("disk_io", "Disk throughput",
          _both("node_disk_read_bytes_total", "read", "node_disk_written_bytes_total", "write",
                "instance", _I),
          "Bps", row="system", legend="{{instance}} {{direction}}", width=12),
    Panel("network", "Network throughput",
          _both("node_network_receive_bytes_total", "receive",
                "node_network_transmit_bytes_total", "transmit",
                "instance", f'device!="lo", {_I}'),
          "Bps", row="system", legend="{{instance}} {{direction}}", width=12),
    Panel("gpu_utilization", "GPU utilisation",
          f"max by ({_GPU}) ({select(GPU_UTILIZATION_RATIO, _I)})", "percentunit",
          row="system", legend="{{instance}} GPU {{gpu}} {{name}}", width=12,
          thresholds=(OK, Threshold(0.9, "red")), requires=GPU_PRESENT,
          absent=_GPU_ABSENT, description=_GPU_NOTE),
    Panel("gpu_memory", "GPU memory used",
          f"max by ({_GPU}) ({select(GPU_MEMORY_USED_BYTES, _I)})"
          f" / max by ({_GPU}) ({select(GPU_MEMORY_TOTAL_BYTES, _I)})",
          "percentunit", row="system", legend="{{instance}} GPU {{gpu}} {{name}}", width=12,
          thresholds=(OK, Threshold(0.9, "red")), requires=GPU_PRESENT,
          absent=_GPU_ABSENT, description=_GPU_NOTE),
    # Alerts: Prometheus' ALERTS series. "or on() vector(0)" makes "none" a 0, not a gap.
    Panel("alerts_firing", "Alerts firing",
          'count(ALERTS{alertstate="firing"}) or on() vector(0)', "none", row="alerts",
          kind="stat", legend="firing", width=4, thresholds=(OK, Threshold(1, "red"))),
    Panel("alerts_pending", "Alerts pending",
          'count(ALERTS{alertstate="pending"}) or on() vector(0)', "none", row="alerts",
          kind="stat", legend="pending", width=4, thresholds=(OK, Threshold(1, "orange"))),
    Panel("alert_history", "Alert history",
          'count by (alertname, alertstate) (ALERTS{alertstate=~"pending|firing"})'
          ' or on() label_replace(vector(0), "alertname", "none", "", "")',
          "none", row="alerts", legend="{{alertname}} {{alertstate}}", width=16,
          description="Alerts pending or firing over time, by name; 'none' while there are "
                      "none."),
)


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    panels: tuple[Panel, ...]


ROWS = (
    ("business", "Business: traffic, latency, errors, saturation"),
    ("llm", "LLM serving: tokens, time to first token, inter-token latency, KV cache"),
    ("quality", "Model quality"),
    ("system", "System: CPU, memory, disk, network, GPU"),
    ("alerts", "Alerts"),
)


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...]

    @property
    def panels(self) -> tuple[Panel, ...]:
        return tuple(p for row in self.rows for p in row.panels)

    def panel(self, key: str) -> Panel:
        for p in self.panels:
            if p.key == key:
                return p
        raise KeyError(key)


DASHBOARD = Dashboard(
    uid="inferwatch-inference",
    title="AI inference monitoring",
    rows=tuple(Row(key, title, tuple(p for p in PANELS if p.row == key)) for key, title in ROWS),
    variables=VARIABLES,
)
