"""Histogram bucket layouts.

The seed's buckets (0.1, 0.5, 1, 2 s) put a 1 ms service's whole distribution into one
bucket, so ``histogram_quantile`` can only guess. Ours are log-spaced with neighbours at most
17% apart, so linear interpolation inside a bucket stays within a few percent of the truth
(`bench/quantiles.py` measures it against a real Prometheus).
"""

from collections.abc import Iterable

# Mantissas per decade: neighbours differ by at most 1/6 (1.5 -> 1.75, 6 -> 7).
_FINE = (1.0, 1.125, 1.25, 1.375, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5,
         5.0, 5.5, 6.0, 7.0, 8.0, 9.0)
_COARSE = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
# Neighbours at most 1/3 apart: the LLM series below are three histograms per model, each
# over three to four decades, where alerts read quantiles to within about 15%.
_MEDIUM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def log_buckets(low: float, high: float, mantissas: Iterable[float] = _FINE) -> tuple[float, ...]:
    """Bucket bounds from ``low`` to ``high`` (inclusive) using the given mantissas per decade.

    >>> log_buckets(0.001, 0.01, (1.0, 2.0, 5.0))
    (0.001, 0.002, 0.005, 0.01)
    """
    if not 0 < low < high:
        raise ValueError("need 0 < low < high")
    steps = sorted(mantissas)
    bounds: list[float] = []
    exponent = -12
    while 10.0**exponent * steps[-1] < low:
        exponent += 1
    while True:
        for m in steps:
            value = float(f"{m * 10.0**exponent:.12g}")
            if value < low * (1 - 1e-9):
                continue
            if value > high * (1 + 1e-9):
                return tuple(bounds)
            bounds.append(value)
        exponent += 1


DEFAULT_LATENCY_BUCKETS = log_buckets(0.0001, 10.0)
"""End-to-end latency: 0.1 ms to 10 s, 20 bounds per decade."""

DEFAULT_STAGE_BUCKETS = log_buckets(0.0001, 10.0, _COARSE)
"""Per-stage latency: 0.1 ms to 10 s, 6 bounds per decade (four stages per model)."""

DEFAULT_BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)

DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS = log_buckets(0.005, 60.0, _MEDIUM)
"""Time to first token: 5 ms (a warm, idle server) to 60 s (a long prompt queued under load,
near clients' timeouts)."""

DEFAULT_INTER_TOKEN_BUCKETS = log_buckets(0.001, 2.0, _MEDIUM)
"""Gaps between streamed tokens: 1 ms (a small model, or chunks that arrive in one read) to
2 s (a server stalled by preemption or prefills of other requests)."""

DEFAULT_TOKENS_PER_SECOND_BUCKETS = log_buckets(1.0, 2000.0, _MEDIUM)
"""Output tokens per second of a stream: 1 (a large model on CPU) to 2000 (a small one on a
GPU, or speculative decoding)."""

SEED_LATENCY_BUCKETS = (0.1, 0.5, 1.0, 2.0)
"""The seed tutorial's buckets, kept for comparison benchmarks."""
