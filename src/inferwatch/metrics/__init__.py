"""Instrumentation for inference services: import this into your own service.

>>> from prometheus_client import CollectorRegistry
>>> from inferwatch.metrics import InferenceMetrics, MetricsMiddleware
>>> metrics = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
"""

from inferwatch.metrics.buckets import (
    DEFAULT_BATCH_SIZE_BUCKETS,
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_STAGE_BUCKETS,
    SEED_LATENCY_BUCKETS,
    log_buckets,
)
from inferwatch.metrics.gpu import GPUCollector
from inferwatch.metrics.instruments import (
    ERROR_REASONS,
    STAGES,
    UNKNOWN_MODEL,
    InferenceMetrics,
    RequestRecorder,
    RequestTracker,
)
from inferwatch.metrics.middleware import REASON_STATE_KEY, MetricsMiddleware, model_from_path

__all__ = [
    "DEFAULT_BATCH_SIZE_BUCKETS",
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_STAGE_BUCKETS",
    "ERROR_REASONS",
    "REASON_STATE_KEY",
    "SEED_LATENCY_BUCKETS",
    "STAGES",
    "UNKNOWN_MODEL",
    "GPUCollector",
    "InferenceMetrics",
    "MetricsMiddleware",
    "RequestRecorder",
    "RequestTracker",
    "log_buckets",
    "model_from_path",
]
