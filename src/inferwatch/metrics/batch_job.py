"""Metrics of a batch inference job, pushed to a Prometheus Pushgateway when a run ends.

A short-lived job is gone before Prometheus could scrape it: it pushes its figures once,
grouped by ``job`` and ``instance``, and the Pushgateway serves them until the next push.
Prometheus scrapes the Pushgateway with ``honor_labels: true``, so the series keep the job's
own ``job`` and ``instance`` labels, and the Pushgateway adds ``push_time_seconds`` per group,
which the ``BatchJobStale`` alert watches.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import push_to_gateway, pushadd_to_gateway

from inferwatch.metrics.names import (
    BATCH_JOB_DURATION_SECONDS,
    BATCH_JOB_FAILURES_TOTAL,
    BATCH_JOB_ITEMS_TOTAL,
    BATCH_JOB_LAST_SUCCESS_TIMESTAMP_SECONDS,
    MODEL_LABEL,
    REASON_LABEL,
)

__all__ = ["BatchJobMetrics"]


class BatchJobMetrics:
    """The figures of one run of a batch job.

    >>> metrics = BatchJobMetrics("digits")
    >>> metrics.items.inc(450)
    >>> metrics.record_failure("invalid_image")
    >>> metrics.push("http://127.0.0.1:9091", job="nightly-digits", instance="host-1",
    ...              succeeded=True)  # doctest: +SKIP
    """

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self.duration = Gauge(
            BATCH_JOB_DURATION_SECONDS, "Wall time of the job's last run.",
            [MODEL_LABEL], registry=self.registry).labels(model)
        self.items = Counter(
            BATCH_JOB_ITEMS_TOTAL, "Inputs read by the last run, failed ones included.",
            [MODEL_LABEL], registry=self.registry).labels(model)
        self._failures = Counter(
            BATCH_JOB_FAILURES_TOTAL, "Inputs of the last run that could not be scored.",
            [MODEL_LABEL, REASON_LABEL], registry=self.registry)
        # Registered only when a run succeeds: see ``push``.
        self._last_success = Gauge(
            BATCH_JOB_LAST_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time at which the job last finished successfully.", [MODEL_LABEL], registry=None)

    def record_failure(self, reason: str) -> None:
        """``reason`` must come from a bounded set (an ``InputError`` reason)."""
        self._failures.labels(self.model, reason).inc()

    def push(self, gateway: str, job: str, instance: str, succeeded: bool,
             timeout: float = 10.0) -> None:
        """Push the run's figures to the Pushgateway at ``gateway``.

        A successful run replaces the whole group (PUT), with the time of this success. A
        failed run replaces only the metrics it carries (POST), so the group keeps the time
        of the last success from an earlier run.
        """
        key = {"instance": instance}
        if succeeded:
            self._last_success.labels(self.model).set_to_current_time()
            self.registry.register(self._last_success)
            try:
                push_to_gateway(gateway, job, self.registry, grouping_key=key, timeout=timeout)
            finally:
                self.registry.unregister(self._last_success)
        else:
            pushadd_to_gateway(gateway, job, self.registry, grouping_key=key, timeout=timeout)
