"""Inference servers' own metrics, recorded under inferwatch's names.

TorchServe, Triton, vLLM and MLServer export Prometheus series of their own. Recording rules
(``rules.native_recordings``) copy each server's series into inferwatch's canonical ones
(``inference_requests_total``, ``inference_latency_seconds_sum`` ...): the model's label
renamed to ``model``, microseconds turned into seconds, and ``source="<server>"`` added.
Every recording rule, alert, dashboard panel and ``inferwatch diagnose`` reads the canonical
names only, so each works on a server that no inferwatch process measures, and no query is
written a second time for it. A model that inferwatch measures itself (``serve`` or the proxy: its
``inference_requests_total`` has no ``source``) is left out of the mapping, so a server
behind the proxy is never counted twice.

>>> rule = TORCHSERVE.expr(TORCHSERVE.series[0])
>>> rule.startswith("(sum without (model_name, model_version, hostname) (label_replace(")
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from inferwatch.metrics.names import (
    BATCH_SIZE,
    ERRORS_TOTAL,
    FINISH_REASON_LABEL,
    FINISH_REASONS,
    FINISH_REASONS_TOTAL,
    IN_FLIGHT_REQUESTS,
    INTER_TOKEN_LATENCY_SECONDS,
    KV_CACHE_USAGE_RATIO,
    LATENCY_SECONDS,
    MODEL_INFO,
    PREEMPTIONS_TOTAL,
    QUEUE_DEPTH,
    REQUESTS_TOTAL,
    STAGE_SECONDS,
    TIME_TO_FIRST_BYTE_SECONDS,
    TIME_TO_FIRST_TOKEN_SECONDS,
    TOKEN_TYPE_LABEL,
    TOKENS_TOTAL,
)

__all__ = [
    "COLUMNS",
    "MEASURED",
    "MLSERVER",
    "NATIVE_SERVERS",
    "TORCHSERVE",
    "TRITON",
    "VLLM",
    "Mapped",
    "NativeServer",
    "coverage_table",
    "mapping_table",
    "quantile_note",
]

MEASURED = REQUESTS_TOTAL + '{source=""}'
"""The models that inferwatch measures itself: ``serve``, the proxy and the metrics library
create this series for every model they know, at zero, and never with a ``source``."""

MICRO = 1e-6  # microseconds to seconds


@dataclass(frozen=True)
class Mapped:
    """One canonical series: the ``aggregate`` (sum) of the server's ``natives``, times
    ``scale``.

    ``renamed_from`` names the same series in older releases, read where the current name is
    absent: a release that exports both (while one is deprecated) is not counted twice.
    """

    record: str
    natives: tuple[str, ...]
    scale: float = 1.0
    stage: str | None = None  # the ``stage`` label of inference_stage_seconds_*
    renamed_from: tuple[str, ...] = ()
    aggregate: str = "sum"
    fixed: Mapping[str, str] = field(default_factory=dict)  # labels such as type="input"
    finish_reason: str | None = None  # the native label of the finish reason, if any

    @property
    def labels(self) -> dict[str, str]:
        return {**({"stage": self.stage} if self.stage else {}), **self.fixed}


def _histogram(record: str, native: str, stage: str | None = None,
               buckets: bool = True, renamed_from: str | None = None) -> tuple[Mapped, ...]:
    """A native histogram (or summary) in seconds onto a canonical one."""
    parts = ("sum", "count", "bucket") if buckets else ("sum", "count")
    return tuple(Mapped(f"{record}_{p}", (f"{native}_{p}",), stage=stage,
                        renamed_from=(f"{renamed_from}_{p}",) if renamed_from else ())
                 for p in parts)


# Finish reasons outside OpenAI's (vLLM's "abort") are counted as "other", a bounded label.
_KNOWN_REASONS = "|".join(r for r in FINISH_REASONS if r != "other")


def _finish_reason(expr: str, native: str) -> str:
    expr = f'label_replace({expr}, "{FINISH_REASON_LABEL}", "$1", "{native}", "({_KNOWN_REASONS})")'
    return f'label_replace({expr}, "{FINISH_REASON_LABEL}", "other", "{FINISH_REASON_LABEL}", "")'


@dataclass(frozen=True)
class NativeServer:
    """What one server exports, and what it cannot give (``gaps``, by column of the
    coverage table)."""

    name: str  # the scrape job (stack.config.KNOWN_SERVERS) and the ``source`` label
    title: str
    release: str  # the release whose documented series are mapped
    docs: str
    series: tuple[Mapped, ...]
    gaps: Mapping[str, str]
    proxy_adds: str
    model_label: str = "model"
    version_label: str = "version"
    drop: tuple[str, ...] = ()  # labels summed away: reasons, engines, host names

    def maps(self, record: str, stage: str | None = None) -> list[Mapped]:
        return [m for m in self.series
                if m.record == record and (stage is None or m.stage == stage)]

    def _relabelled(self, natives: tuple[str, ...], op: str = "sum",
                    finish_reason: str | None = None) -> str:
        """The native series with ``model`` and ``version`` labels, the others aggregated
        away with ``op``.

        ``without``, not ``by``: the target's labels (instance, job, a pod's) stay, so each
        result sums series of one process only, whose counters reset together.
        """
        names = "|".join(natives)
        expr = natives[0] if len(natives) == 1 else f'{{__name__=~"{names}"}}'
        dropped = []
        for canonical, native in (("model", self.model_label), ("version", self.version_label)):
            if native != canonical:
                expr = f'label_replace({expr}, "{canonical}", "$1", "{native}", "(.+)")'
                dropped.append(native)
        if finish_reason is not None:
            expr = _finish_reason(expr, finish_reason)
            dropped.append(finish_reason)
        return f"{op} without ({', '.join(dict.fromkeys((*dropped, *self.drop)))}) ({expr})"

    def expr(self, mapped: Mapped) -> str:
        parts = []
        for natives in filter(None, (mapped.natives, mapped.renamed_from)):
            part = self._relabelled(natives, mapped.aggregate, mapped.finish_reason)
            parts.append(f"{part} * {mapped.scale:g}" if mapped.scale != 1 else part)
        return f"({' or '.join(parts)}) unless on (model) {MEASURED}"

    def model_info_expr(self) -> str:
        """One series per model the server reports requests for, like ``inference_model_info``."""
        requests = self.maps(REQUESTS_TOTAL)[0]
        return f"({self._relabelled(requests.natives, 'group')}) unless on (model) {MEASURED}"

    def recorded(self) -> list[tuple[str, str, dict[str, str]]]:
        """(record, expr, labels) of every rule, the model info first."""
        rules = [(MODEL_INFO, self.model_info_expr(),
                  {"source": self.name, "runtime": self.name})]
        rules += [(m.record, self.expr(m), {"source": self.name, **m.labels})
                  for m in self.series]
        return rules


# Documented in https://pytorch.org/serve/metrics.html; the default ts/configs/metrics.yaml
# of 0.12 gives the labels. Latency and queue time are counters of microseconds, added per
# successful response; ts_inference_requests_total counts every request, so the mean
# latency divides by all requests.
TORCHSERVE = NativeServer(
    "torchserve", "TorchServe", "0.12, `metrics_mode=prometheus`",
    "https://pytorch.org/serve/metrics.html",
    series=(
        Mapped(REQUESTS_TOTAL, ("ts_inference_requests_total",)),
        Mapped(f"{LATENCY_SECONDS}_sum", ("ts_inference_latency_microseconds",), MICRO),
        Mapped(f"{LATENCY_SECONDS}_count", ("ts_inference_requests_total",)),
        Mapped(f"{STAGE_SECONDS}_sum", ("ts_queue_latency_microseconds",), MICRO,
               "queue"),
        Mapped(f"{STAGE_SECONDS}_count", ("ts_inference_requests_total",),
               stage="queue"),
    ),
    gaps={"errors": "`Requests5XX` counts every API's answers per host, not per model",
          "latency quantiles": "latencies are totals (counters of microseconds), no histogram",
          "batch": "batch sizes are configured, not measured"},
    proxy_adds="5xx errors per model and by reason, status codes, a latency histogram "
               "(quantiles, the latency SLO), requests in flight",
    model_label="model_name", version_label="model_version", drop=("hostname",),
)

# https://github.com/triton-inference-server/server/blob/r24.04/docs/user_guide/metrics.md:
# durations are counters of microseconds over successful requests (a summary's _count
# matches nv_inference_request_success); failures carry a `reason` label in later releases.
TRITON = NativeServer(
    "triton", "Triton", "r24.04",
    "https://github.com/triton-inference-server/server/blob/r24.04/docs/user_guide/metrics.md",
    series=(
        Mapped(REQUESTS_TOTAL,
               ("nv_inference_request_success", "nv_inference_request_failure")),
        Mapped(ERRORS_TOTAL, ("nv_inference_request_failure",)),
        Mapped(f"{LATENCY_SECONDS}_sum", ("nv_inference_request_duration_us",), MICRO),
        Mapped(f"{LATENCY_SECONDS}_count", ("nv_inference_request_success",)),
        Mapped(f"{STAGE_SECONDS}_sum", ("nv_inference_queue_duration_us",), MICRO,
               "queue"),
        Mapped(f"{STAGE_SECONDS}_count", ("nv_inference_request_success",),
               stage="queue"),
        Mapped(f"{BATCH_SIZE}_sum", ("nv_inference_count",)),
        Mapped(f"{BATCH_SIZE}_count", ("nv_inference_exec_count",)),
        Mapped(f"{STAGE_SECONDS}_sum",
               ("nv_inference_compute_input_duration_us",
                "nv_inference_compute_infer_duration_us",
                "nv_inference_compute_output_duration_us"), MICRO, "compute"),
        Mapped(f"{STAGE_SECONDS}_count", ("nv_inference_request_success",),
               stage="compute"),
        Mapped(QUEUE_DEPTH, ("nv_inference_pending_request_count",)),
    ),
    gaps={"latency quantiles": "counters of microseconds; the optional summaries "
                               "(`--metrics-config summary_latencies=true`) hold per-process "
                               "quantiles that cannot be aggregated"},
    proxy_adds="status codes and reasons, a latency histogram (quantiles, the latency SLO), "
               "the HTTP layer's time",
    drop=("reason",),
)

# https://docs.vllm.ai/en/v0.9.1/usage/metrics.html (the V1 engine): histograms in seconds,
# a series per engine (`engine` label) and finish reason, summed here. Two series were
# renamed (vllm/v1/metrics/loggers.py): `vllm:gpu_cache_usage_perc` is
# `vllm:kv_cache_usage_perc` from 0.9, `vllm:time_per_output_token_seconds` (the time between
# two iterations' tokens, 0.13 removes it) `vllm:inter_token_latency_seconds` from 0.11;
# both names are exported while the old one is deprecated. The KV cache's share is the
# fullest engine's: a sum of shares is not one.
VLLM = NativeServer(
    "vllm", "vLLM", "0.9 (V1 engine)", "https://docs.vllm.ai/en/v0.9.1/usage/metrics.html",
    series=(
        Mapped(REQUESTS_TOTAL, ("vllm:request_success_total",)),
        *_histogram(LATENCY_SECONDS, "vllm:e2e_request_latency_seconds"),
        *_histogram(STAGE_SECONDS, "vllm:request_queue_time_seconds", "queue"),
        *_histogram(STAGE_SECONDS, "vllm:request_inference_time_seconds",
                    "compute"),
        *_histogram(TIME_TO_FIRST_BYTE_SECONDS, "vllm:time_to_first_token_seconds"),
        Mapped(QUEUE_DEPTH, ("vllm:num_requests_waiting",)),
        Mapped(IN_FLIGHT_REQUESTS,
               ("vllm:num_requests_running", "vllm:num_requests_waiting")),
        *_histogram(TIME_TO_FIRST_TOKEN_SECONDS, "vllm:time_to_first_token_seconds"),
        *_histogram(INTER_TOKEN_LATENCY_SECONDS, "vllm:inter_token_latency_seconds",
                    renamed_from="vllm:time_per_output_token_seconds"),
        Mapped(TOKENS_TOTAL, ("vllm:prompt_tokens_total",), fixed={TOKEN_TYPE_LABEL: "input"}),
        Mapped(TOKENS_TOTAL, ("vllm:generation_tokens_total",),
               fixed={TOKEN_TYPE_LABEL: "output"}),
        Mapped(FINISH_REASONS_TOTAL, ("vllm:request_success_total",),
               finish_reason="finished_reason"),
        Mapped(KV_CACHE_USAGE_RATIO, ("vllm:kv_cache_usage_perc",),
               renamed_from=("vllm:gpu_cache_usage_perc",), aggregate="max"),
        Mapped(PREEMPTIONS_TOTAL, ("vllm:num_preemptions_total",)),
    ),
    gaps={"errors": "there is no failure counter; `vllm:request_success_total` counts every "
                    "finished request, aborted ones included",
          "batch": "`vllm:num_requests_running` is the running batch, a gauge"},
    proxy_adds="5xx errors and reasons (the error SLO), status codes, the HTTP layer's time",
    model_label="model_name", drop=("engine", "finished_reason"),
)

# https://docs.seldon.ai/mlserver/user-guide/metrics; the duration summary and the labels
# are those of MLServer 1.7.1's mlserver/handlers/dataplane.py. Its REST histogram
# (rest_server_request_duration_seconds) is per route, `/v2/models/{model_name}/infer`,
# not per model.
MLSERVER = NativeServer(
    "mlserver", "MLServer", "1.7", "https://docs.seldon.ai/mlserver/user-guide/metrics",
    series=(
        Mapped(REQUESTS_TOTAL,
               ("model_infer_request_success_total", "model_infer_request_failure_total")),
        Mapped(ERRORS_TOTAL, ("model_infer_request_failure_total",)),
        *_histogram(LATENCY_SECONDS, "model_infer_request_duration",
                    buckets=False),
    ),
    gaps={"latency quantiles": "the per-model duration is a summary without quantiles; the "
                               "REST histogram is per route",
          "queue time": "`batch_request_queue` is the queue's length, not a time",
          "batch": "not exported"},
    proxy_adds="errors as 5xx only, unknown models folded into `_unknown` (MLServer's "
               "failures count them, under the requested name), status codes and reasons, a "
               "latency histogram (quantiles, the latency SLO)",
)

NATIVE_SERVERS = (TORCHSERVE, TRITON, VLLM, MLSERVER)

# The coverage table's columns: (title, canonical series, stage).
COLUMNS = (
    ("requests", (REQUESTS_TOTAL,), None),
    ("errors", (ERRORS_TOTAL,), None),
    ("latency mean", (f"{LATENCY_SECONDS}_sum", f"{LATENCY_SECONDS}_count"),
     None),
    ("latency quantiles", (f"{LATENCY_SECONDS}_bucket",), None),
    ("queue time", (f"{STAGE_SECONDS}_sum", f"{STAGE_SECONDS}_count"), "queue"),
    ("batch", (f"{BATCH_SIZE}_sum", f"{BATCH_SIZE}_count"), None),
)


def _cell(server: NativeServer, title: str, records: Iterable[str], stage: str | None) -> str:
    found = [m for record in records for m in server.maps(record, stage)]
    if not found:
        return f"no: {server.gaps[title]}"
    natives = dict.fromkeys(" + ".join(f"`{n}`" for n in m.natives) for m in found)
    return " / ".join(natives)


def coverage_table(servers: Iterable[NativeServer] = NATIVE_SERVERS) -> str:
    """The Markdown table of docs/proxy.md: what each server's own series give."""
    head = ["server", *(title for title, _, _ in COLUMNS), "what the proxy adds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in servers:
        cells = [f"[{s.title} {s.release}]({s.docs})",
                 *(_cell(s, title, records, stage) for title, records, stage in COLUMNS),
                 s.proxy_adds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_PARTS = ("_bucket", "_count", "_sum")


def _family(record: str, natives: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A histogram's part as its family, when the native's is the same part."""
    for part in _PARTS:
        if record.endswith(part) and all(n.endswith(part) for n in natives):
            return record.removesuffix(part), tuple(n.removesuffix(part) for n in natives)
    return record, natives


def mapping_table(server: NativeServer) -> str:
    """The Markdown table of docs/llm.md: each canonical series and the server's series that
    it is recorded from (summed over the labels in ``drop`` unless it says otherwise)."""
    lines = [f"| inferwatch series | {server.title} series | how |", "|---|---|---|"]
    rows = []
    for m in server.series:
        record, natives = _family(m.record, m.natives)
        labels = ", ".join(f'{k}="{v}"' for k, v in m.labels.items())
        how = [f"`{m.aggregate}`, not the sum"] if m.aggregate != "sum" else []
        if m.scale != 1:
            how.append(f"times {m.scale:g}")
        if m.finish_reason:
            how.append(f"`{m.finish_reason}` as `{FINISH_REASON_LABEL}`, outside "
                       f"{', '.join(FINISH_REASONS[:-1])}: `other`")
        if m.renamed_from:
            old = " + ".join(f"`{n}`" for n in _family(m.record, m.renamed_from)[1])
            how.append(f"else {old} (before the rename)")
        native = " + ".join(f"`{n}`" for n in natives)
        series = f"{record}{{{labels}}}" if labels else record
        rows.append(f"| `{series}` | {native} | {'; '.join(how)} |")
    lines += dict.fromkeys(rows)
    return "\n".join(lines) + "\n"


def _and(names: list[str]) -> str:
    return " and ".join(filter(None, (", ".join(names[:-1]), *names[-1:])))


def quantile_note(servers: Iterable[NativeServer] = NATIVE_SERVERS) -> str:
    """The latency quantile panels' description: which servers' models they can show.

    >>> print(quantile_note([VLLM, TRITON, MLSERVER])[:80])
    From latency histograms: inferwatch's own, or a server's (vLLM). Triton and MLSe
    """
    servers = list(servers)
    with_ = [s.title for s in servers if s.maps(f"{LATENCY_SECONDS}_bucket")]
    without = [s.title for s in servers if not s.maps(f"{LATENCY_SECONDS}_bucket")]
    return (f"From latency histograms: inferwatch's own, or a server's ({_and(with_)}). "
            f"{_and(without)} export no per-model latency histogram: their models show in "
            "the average latency only, and have no latency SLO; `inferwatch proxy` in front "
            "adds both (docs/proxy.md).")
