"""Instrumentation for inference services: import this into your own service.

>>> from prometheus_client import CollectorRegistry
>>> from inferwatch.metrics import InferenceMetrics, MetricsMiddleware
>>> metrics = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())

What each name is for:

- :class:`InferenceMetrics`: the request, latency, stage, batch and model series, with
  model labels bounded to the models you name; its ``track`` (or ``instrument``) times a
  block of code that is not an ASGI app, its ``observe_*`` methods are the lower level.
- :class:`MetricsMiddleware`: counts and times every inference request of an ASGI app;
  the recommended way to count requests. :func:`model_from_path` is its default resolver,
  and a handler puts an :data:`ERROR_REASONS` reason under :data:`REASON_STATE_KEY` of
  ``request.state`` to classify a failure.
- :data:`STAGES`, :data:`UNKNOWN_MODEL`: label values the series use.
- :func:`log_buckets` and the ``DEFAULT_*_BUCKETS``: histogram bucket layouts.
- :class:`GPUCollector`: NVIDIA GPU metrics from NVML.
- :class:`QualityMetrics`, :class:`QualityMonitor`, :class:`QualityReference`,
  :class:`FeatureReference`, :class:`QualityWorker`: model quality and drift (PSI) against
  the training data; :class:`FeedbackStore`: answers kept by request id, for feedback.
- :class:`BatchJobMetrics`: a batch job's figures, pushed to a Pushgateway.
"""

from inferwatch.metrics.batch_job import BatchJobMetrics
from inferwatch.metrics.buckets import (
    DEFAULT_BATCH_SIZE_BUCKETS,
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_STAGE_BUCKETS,
    log_buckets,
)
from inferwatch.metrics.feedback import FeedbackStore
from inferwatch.metrics.gpu import GPUCollector
from inferwatch.metrics.instruments import STAGES, UNKNOWN_MODEL, InferenceMetrics
from inferwatch.metrics.middleware import REASON_STATE_KEY, MetricsMiddleware, model_from_path
from inferwatch.metrics.names import ERROR_REASONS
from inferwatch.metrics.quality import (
    FeatureReference,
    QualityMetrics,
    QualityMonitor,
    QualityReference,
    QualityWorker,
)

__all__ = [
    "DEFAULT_BATCH_SIZE_BUCKETS",
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_STAGE_BUCKETS",
    "ERROR_REASONS",
    "REASON_STATE_KEY",
    "STAGES",
    "UNKNOWN_MODEL",
    "BatchJobMetrics",
    "FeatureReference",
    "FeedbackStore",
    "GPUCollector",
    "InferenceMetrics",
    "MetricsMiddleware",
    "QualityMetrics",
    "QualityMonitor",
    "QualityReference",
    "QualityWorker",
    "log_buckets",
    "model_from_path",
]
