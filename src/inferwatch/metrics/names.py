"""The names of every series inferwatch exports, and why a request failed: written once here.

The instruments define their series under these names; the rules, panels, ``diagnose`` and
``load`` (through ``stack/queries.py``) read them back. Counters are named as Prometheus
stores them, with ``_total``; histograms by their family, read as ``_bucket``, ``_sum`` and
``_count``.
"""

from __future__ import annotations

# The seed tutorial's names, kept so its dashboard queries and alert rule work unchanged.
REQUESTS_TOTAL = "inference_requests_total"
ERRORS_TOTAL = "inference_errors_total"  # server-side failures: status >= 500
LATENCY_SECONDS = "inference_latency_seconds"

RESPONSES_TOTAL = "inference_responses_total"
ERROR_REASONS_TOTAL = "inference_error_reasons_total"
STAGE_SECONDS = "inference_stage_seconds"
TIME_TO_FIRST_BYTE_SECONDS = "inference_time_to_first_byte_seconds"
BATCH_SIZE = "inference_batch_size"
IN_FLIGHT_REQUESTS = "inference_in_flight_requests"
QUEUE_DEPTH = "inference_queue_depth"
QUEUE_CAPACITY = "inference_queue_capacity"
MODEL_INFO = "inference_model_info"
MODEL_LOAD_SECONDS = "inference_model_load_seconds"
MODEL_HELDOUT_ACCURACY_RATIO = "inference_model_heldout_accuracy_ratio"

# LLM serving (OpenAI-style APIs through the proxy; vLLM's own series mapped by recording
# rules). Token type is OpenTelemetry's gen_ai.token.type: input (prompt), output (completion).
TOKENS_TOTAL = "inference_tokens_total"  # labels: model, version, type, source
TIME_TO_FIRST_TOKEN_SECONDS = "inference_time_to_first_token_seconds"
INTER_TOKEN_LATENCY_SECONDS = "inference_inter_token_latency_seconds"
OUTPUT_TOKENS_PER_SECOND = "inference_output_tokens_per_second"
FINISH_REASONS_TOTAL = "inference_finish_reasons_total"  # labels: model, version, finish_reason
KV_CACHE_USAGE_RATIO = "inference_kv_cache_usage_ratio"  # from servers that report it (vLLM)
PREEMPTIONS_TOTAL = "inference_preemptions_total"  # from servers that report it (vLLM)
TOKEN_TYPE_LABEL = "type"
TOKEN_TYPES = ("input", "output")
TOKEN_SOURCE_LABEL = "source"
TOKEN_SOURCES = ("usage", "estimated")
"""The proxy's sources. usage: the server's own ``usage`` counts; estimated: one token per
streamed content chunk, for a stream without ``stream_options.include_usage`` (a lower bound: a
server that falls behind sends several tokens in one chunk). Series recorded from a server's
own (stack/native.py) carry its kind instead, e.g. ``vllm``."""
FINISH_REASON_LABEL = "finish_reason"
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call", "other")
"""OpenAI's finish reasons; any other value is counted as ``other`` (a bounded label)."""

# Model quality.
FEEDBACK_TOTAL = "inference_feedback_total"
FEEDBACK_TOP5_TOTAL = "inference_feedback_top5_total"
FEEDBACK_REJECTED_TOTAL = "inference_feedback_rejected_total"
PREDICTION_CONFIDENCE = "inference_prediction_confidence"
PREDICTIONS_TOTAL = "inference_predictions_total"
INPUT_MEAN_INTENSITY = "inference_input_mean_intensity"
DRIFT_PSI = "inference_drift_psi"
DRIFT_WINDOW_SAMPLES = "inference_drift_window_samples"

# Batch jobs, pushed to a Pushgateway.
BATCH_JOB_DURATION_SECONDS = "inference_batch_job_duration_seconds"
BATCH_JOB_ITEMS_TOTAL = "inference_batch_job_items_total"
BATCH_JOB_FAILURES_TOTAL = "inference_batch_job_failures_total"
BATCH_JOB_LAST_SUCCESS_TIMESTAMP_SECONDS = "inference_batch_job_last_success_timestamp_seconds"

# GPUs, from NVML.
GPU_AVAILABLE = "inferwatch_gpu_available"
GPU_UTILIZATION_RATIO = "inferwatch_gpu_utilization_ratio"
GPU_MEMORY_USED_BYTES = "inferwatch_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL_BYTES = "inferwatch_gpu_memory_total_bytes"
GPU_TEMPERATURE_CELSIUS = "inferwatch_gpu_temperature_celsius"
GPU_POWER_WATTS = "inferwatch_gpu_power_watts"
GPU_ENERGY_JOULES_TOTAL = "inferwatch_gpu_energy_joules_total"

# Labels that most series carry.
MODEL_LABEL = "model"
VERSION_LABEL = "version"
STAGE_LABEL = "stage"
REASON_LABEL = "reason"

SHED_REASON = "overloaded"
"""A request shed by a full queue: saturation, answered 503 (or 429 by other servers)."""

# Why a request failed (the ``reason`` label of inference_error_reasons_total), with the
# status it is answered with. Serve answers each with its status; the proxy its own
# (upstream_*, proxy_internal) and the ones it shares with serve. client_closed is nginx's
# 499: nobody is left to read it, but it is counted as a client error.
STATUS_BY_REASON = {
    "empty_body": 400, "invalid_json": 400, "invalid_image": 400, "bad_request": 400,
    "unknown_output": 400,
    "invalid_shape": 422, "unknown_model": 404, "not_found": 404, "method_not_allowed": 405,
    "body_too_large": 413, "image_too_large": 413, "unsupported_media_type": 415,
    SHED_REASON: 503,
    "timeout": 504, "internal": 500, "injected": 500,
    "client_closed": 499,
    "upstream_connect": 502, "upstream_timeout": 504, "proxy_internal": 500,
}

RELAYED_REASONS = frozenset({"upstream_4xx", "upstream_5xx"})
"""The proxy's reasons for an upstream's own error answer: their status is the upstream's."""

ERROR_REASONS = frozenset(STATUS_BY_REASON) | RELAYED_REASONS
"""The ``reason`` label values: a closed set, so free text never becomes a label value."""

# Feedback refused (inference_feedback_rejected_total): never an inference request's reason.
FEEDBACK_STATUS_BY_REASON = {
    "unknown_request_id": 404, "duplicate_feedback": 409, "invalid_label": 422,
}

# The reason of an error answered without one (an app's own 4xx, starlette's routing), by
# its status; any other 4xx is a bad_request, a 5xx internal. 429 is other servers' way of
# shedding load.
REASON_BY_STATUS = {
    404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
    415: "unsupported_media_type", 429: SHED_REASON,
}


def reason_for_status(status: int) -> str:
    """The reason of an error answered without one.

    >>> reason_for_status(405), reason_for_status(418), reason_for_status(502)
    ('method_not_allowed', 'bad_request', 'internal')
    """
    return "internal" if status >= 500 else REASON_BY_STATUS.get(status, "bad_request")
