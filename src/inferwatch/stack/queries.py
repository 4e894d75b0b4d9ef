"""The PromQL of every signal that more than one reader asks for, written once.

The recording and alert rules, the dashboard panels, ``diagnose`` and ``load`` build their
queries from these functions, each with its own window, selector and grouping. A selector is
matchers without braces (``'model="digits"'``, ``'job="inference"'``); empty ones are left
out. ``by`` groups a sum: ``()`` sums everything, ``None`` (where allowed) sums nothing.

>>> for part in error_ratio("5m", 'job="inference"', by=("model",)).split(" / "):
...     print(part)
sum by (model) (rate(inference_errors_total{job="inference"}[5m]))
sum by (model) (rate(inference_requests_total{job="inference"}[5m]))
"""

from __future__ import annotations

from collections.abc import Sequence

from inferwatch.metrics.names import (
    ERROR_REASONS_TOTAL,
    ERRORS_TOTAL,
    FEEDBACK_TOTAL,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_MEMORY_USED_BYTES,
    GPU_UTILIZATION_RATIO,
    LATENCY_SECONDS,
    REQUESTS_TOTAL,
    SHED_REASON,
)

__all__ = [
    "LOCAL_NODE",
    "accuracy",
    "cpu_utilisation",
    "error_ratio",
    "error_reason_rate",
    "gpu_memory_ratio",
    "gpu_utilisation",
    "histogram_mean",
    "histogram_quantile",
    "memory_utilisation",
    "request_rate",
    "requests_now",
    "run_latency_quantile",
    "run_requests",
    "select",
    "shed_rate",
    "slow_ratio",
    "summed",
]

LOCAL_NODE = 'job="node"'
"""node_exporter's scrape job in the local stack ("node-exporter" in kube-prometheus-stack)."""


def select(metric: str, *matchers: str) -> str:
    """``metric`` with the non-empty ``matchers`` as its selector.

    >>> select("up", 'job="inferwatch"', "", 'namespace="ml"')
    'up{job="inferwatch", namespace="ml"}'
    >>> select("up", "")
    'up'
    """
    inner = ", ".join(m for m in matchers if m)
    return f"{metric}{{{inner}}}" if inner else metric


def _sum(expr: str, by: Sequence[str] | None) -> str:
    if by is None:
        return expr
    return f"sum by ({', '.join(by)}) ({expr})" if by else f"sum ({expr})"


def summed(metric: str, window: str, *matchers: str, by: Sequence[str] | None = (),
           func: str = "rate") -> str:
    """``func`` (rate, increase) of ``metric`` over ``window``, summed ``by``.

    >>> summed("inference_errors_total", "1h", 'model="a"', by=("model",), func="increase")
    'sum by (model) (increase(inference_errors_total{model="a"}[1h]))'
    """
    return _sum(f"{func}({select(metric, *matchers)}[{window}])", by)


def request_rate(window: str, *matchers: str, by: Sequence[str] | None = ()) -> str:
    return summed(REQUESTS_TOTAL, window, *matchers, by=by)


def requests_now(*matchers: str) -> str:
    """The requests counted so far: take it before and after a run for an exact delta."""
    return f"sum({select(REQUESTS_TOTAL, *matchers)})"


# What ``load`` compares its own measurement with: every series of the run's window taken
# together (its tests pin this spelling, ``by`` after the sum).
def run_requests(window: str, *matchers: str) -> str:
    return f"sum(increase({select(REQUESTS_TOTAL, *matchers)}[{window}]))"


def run_latency_quantile(quantile: float, window: str, *matchers: str) -> str:
    buckets = select(f"{LATENCY_SECONDS}_bucket", *matchers)
    return f"histogram_quantile({quantile}, sum(increase({buckets}[{window}])) by (le))"


def error_ratio(window: str, *matchers: str, by: Sequence[str] | None = (),
                func: str = "rate") -> str:
    """Server-side failures (5xx) over all requests; ``func`` "increase" for SLO windows."""
    return (f"{summed(ERRORS_TOTAL, window, *matchers, by=by, func=func)}"
            f" / {summed(REQUESTS_TOTAL, window, *matchers, by=by, func=func)}")


def error_reason_rate(window: str, *matchers: str, by: Sequence[str] | None = ()) -> str:
    """Failed requests per second, by their ``reason`` label where ``matchers`` or ``by`` say."""
    return summed(ERROR_REASONS_TOTAL, window, *matchers, by=by)


def shed_rate(window: str, *matchers: str, by: Sequence[str] | None = ()) -> str:
    """Requests per second shed by a full queue: saturation, not a failure of its own."""
    return error_reason_rate(window, *matchers, f'reason="{SHED_REASON}"', by=by)


def histogram_mean(histogram: str, window: str, *matchers: str,
                   by: Sequence[str] | None = ()) -> str:
    """The mean over the window, ``rate(sum) / rate(count)``: not an average of the
    lifetime means that ``sum / count`` of each series would give."""
    return (f"{summed(f'{histogram}_sum', window, *matchers, by=by)}"
            f" / {summed(f'{histogram}_count', window, *matchers, by=by)}")


def histogram_quantile(quantile: float | str, window: str, *matchers: str,
                       by: Sequence[str] = (), histogram: str = LATENCY_SECONDS,
                       func: str = "rate") -> str:
    """``quantile`` (written as given: 0.5 or "0.50") of ``histogram`` over the window, per
    ``by``; the ``le`` label is kept for it.

    >>> print(histogram_quantile(0.95, "5m", by=("model",)))
    histogram_quantile(0.95, sum by (model, le) (rate(inference_latency_seconds_bucket[5m])))
    """
    buckets = summed(f"{histogram}_bucket", window, *matchers, by=(*by, "le"), func=func)
    return f"histogram_quantile({quantile}, {buckets})"


def slow_ratio(histogram: str, le: str, window: str, *matchers: str,
               by: Sequence[str] = (), func: str = "increase") -> str:
    """The share of ``histogram``'s observations above the bucket bound ``le``: exact, where
    a quantile is an estimate. "increase" (the default) for SLO windows.

    >>> for part in slow_ratio("t_seconds", "0.5", "1h").split(" / "):
    ...     print(part)
    (sum (increase(t_seconds_count[1h])) - sum (increase(t_seconds_bucket{le="0.5"}[1h])))
    sum (increase(t_seconds_count[1h]))
    """
    total = summed(f"{histogram}_count", window, *matchers, by=by, func=func)
    fast = summed(f"{histogram}_bucket", window, *matchers, f'le="{le}"', by=by, func=func)
    return f"({total} - {fast}) / {total}"


def accuracy(window: str, *matchers: str, by: Sequence[str] = (),
             feedback: str = FEEDBACK_TOTAL) -> str:
    """The share of labelled feedback whose answer was right (``feedback``: top-1 or top-5)."""
    correct = summed(feedback, window, *matchers, 'outcome="correct"', by=by)
    return f"{correct} / {summed(feedback, window, *matchers, by=by)}"


def gpu_utilisation(window: str, *matchers: str) -> str:
    """Per GPU, the share of the window in which a kernel ran."""
    return f"avg_over_time({select(GPU_UTILIZATION_RATIO, *matchers)}[{window}])"


def gpu_memory_ratio(*matchers: str) -> str:
    return (f"{select(GPU_MEMORY_USED_BYTES, *matchers)}"
            f" / {select(GPU_MEMORY_TOTAL_BYTES, *matchers)}")


# The node-mixin formulas (node_exporter's own mixin), per instance. ``node`` selects
# node_exporter.
def cpu_utilisation(window: str, node: str = LOCAL_NODE) -> str:
    cpu = select("node_cpu_seconds_total", node, 'mode=~"idle|iowait|steal"')
    return f"1 - avg without (cpu) (sum without (mode) (rate({cpu}[{window}])))"


def memory_utilisation(node: str = LOCAL_NODE) -> str:
    return (f"1 - ({select('node_memory_MemAvailable_bytes', node)}"
            f" / {select('node_memory_MemTotal_bytes', node)})")
