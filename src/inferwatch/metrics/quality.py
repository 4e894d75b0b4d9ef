"""Model quality as Prometheus metrics: confidence, class mix, input statistics, drift (PSI)
against a training reference, and accuracy from labelled feedback.

A monitor queues each batch; :class:`QualityWorker` folds the queues on the event loop, so a
request pays almost nothing, and the drift of the window is computed when a scrape asks.
Answers kept for feedback by request id: :mod:`inferwatch.metrics.feedback`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Metric
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from inferwatch.looptask import LoopTask
from inferwatch.metrics.exposition import (
    HistogramSeries,
    cumulative,
    families_text,
    histogram_text,
)
from inferwatch.metrics.feedback import FeedbackStore
from inferwatch.metrics.names import (
    DRIFT_PSI,
    DRIFT_WINDOW_SAMPLES,
    FEEDBACK_REJECTED_TOTAL,
    FEEDBACK_TOP5_TOTAL,
    FEEDBACK_TOTAL,
    INPUT_MEAN_INTENSITY,
    MODEL_LABEL,
    PREDICTION_CONFIDENCE,
    PREDICTIONS_TOTAL,
    REASON_LABEL,
    VERSION_LABEL,
)

log = logging.getLogger("inferwatch.metrics.quality")

CONFIDENCE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(2, 21))
INTENSITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
_CONFIDENCE_LE = [*map(floatToGoString, CONFIDENCE_BUCKETS), "+Inf"]
_INTENSITY_LE = [*map(floatToGoString, INTENSITY_BUCKETS), "+Inf"]
MAX_CLASS_SERIES = 100  # a model with more classes gets no per-class series
PSI_EPSILON = 1e-4  # keeps ln(p/q) finite when a bin is empty on one side


@dataclass(frozen=True)
class FeatureReference:
    """Bin edges of one input feature and the share of training samples in each bin."""

    edges: np.ndarray  # interior edges, increasing; len(shares) - 1 of them
    shares: np.ndarray

    @classmethod
    def from_samples(cls, values: np.ndarray, bins: int = 10) -> FeatureReference:
        """Quantile bins of the training values: each holds about 1/bins of them."""
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, values, side="right"),
                             minlength=len(edges) + 1)
        return cls(edges, counts / counts.sum())

    def shares_of(self, values: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(self.edges, values, side="right"),
                             minlength=len(self.edges) + 1)
        return counts / max(counts.sum(), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population Stability Index: sum((a - e) * ln(a / e)). Under 0.1 is usually read as
    stable, 0.1-0.25 as a moderate shift, above 0.25 as a significant one."""
    e = np.clip(expected, PSI_EPSILON, None)
    a = np.clip(actual, PSI_EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class QualityReference:
    """What the training data looked like: input features and the predicted class mix."""

    features: Mapping[str, FeatureReference]
    class_shares: np.ndarray | None = None


class QualityMetrics:
    """The quality metric families of a registry; every model's monitor reports through it.

    Confidence, class counts, input intensity and drift are kept in numpy arrays by the
    monitors and exposed at scrape time by a collector: folding a thousand predictions is a
    few vectorised operations, not a thousand ``observe`` calls.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.monitors: list[QualityMonitor] = []
        kw: dict[str, Any] = {"registry": registry}
        labels = (MODEL_LABEL, VERSION_LABEL)
        self.feedback = Counter(
            FEEDBACK_TOTAL, "Labelled feedback received, by outcome of the top-1 answer.",
            (*labels, "outcome"), **kw)
        self.feedback_top5 = Counter(
            FEEDBACK_TOP5_TOTAL, "Labelled feedback received, by outcome of the top-5.",
            (*labels, "outcome"), **kw)
        self.feedback_rejected = Counter(
            FEEDBACK_REJECTED_TOTAL, "Feedback refused, by reason.", (REASON_LABEL,), **kw)
        self.collector = _QualityCollector(self)
        if registry is not None:
            registry.register(self.collector)


def _histogram(family: HistogramMetricFamily, labels: list[str], bounds: Sequence[float],
               counts: np.ndarray, total: float) -> None:
    cumulative = np.cumsum(counts)
    buckets = [(floatToGoString(b), float(c)) for b, c in zip(bounds, cumulative, strict=False)]
    buckets.append(("+Inf", float(cumulative[-1])))
    family.add_metric(labels, buckets, total)


class _QualityCollector(Collector):
    def __init__(self, metrics: QualityMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._families(None)

    def exposition(self, openmetrics: bool) -> str:
        """The text of :meth:`collect`, histograms written by :func:`histogram_text`."""
        series: dict[str, list[HistogramSeries]] = {"confidence": [], "intensity": []}
        confidence, predictions, intensity, drift, window = self._families(series)
        return "".join([
            histogram_text(confidence.name, confidence.documentation, _CONFIDENCE_LE,
                           series["confidence"], openmetrics),
            families_text([predictions], openmetrics),
            histogram_text(intensity.name, intensity.documentation, _INTENSITY_LE,
                           series["intensity"], openmetrics),
            families_text([drift, window], openmetrics),
        ])

    def _families(self, series: dict[str, list[HistogramSeries]] | None) -> list[Metric]:
        """With ``series``, the histograms' values go there instead of into their family."""
        labels = [MODEL_LABEL, VERSION_LABEL]
        confidence = HistogramMetricFamily(
            PREDICTION_CONFIDENCE, "Probability of the top-1 class per sample.",
            labels=labels)
        predictions = CounterMetricFamily(
            PREDICTIONS_TOTAL, "Predicted (top-1) class per sample.",
            labels=[*labels, "class"])
        intensity = HistogramMetricFamily(
            INPUT_MEAN_INTENSITY, "Mean intensity of each input, 0..1.",
            labels=labels)
        drift = GaugeMetricFamily(
            DRIFT_PSI,
            "Population Stability Index of the last window of inputs against the training "
            'reference, per feature; feature="prediction" is the predicted class mix.',
            labels=[*labels, "feature"])
        window = GaugeMetricFamily(
            DRIFT_WINDOW_SAMPLES, "Samples in the window the PSI is computed on.",
            labels=labels)
        for m in self.metrics.monitors:
            with m._lock:
                key = [m.model, m.version]
                if series is None:
                    _histogram(confidence, key, CONFIDENCE_BUCKETS, m._confidence,
                               m._confidence_sum)
                    _histogram(intensity, key, INTENSITY_BUCKETS, m._intensity,
                               m._intensity_sum)
                else:
                    names = {"model": m.model, "version": m.version}
                    series["confidence"].append(
                        (names, cumulative(m._confidence.tolist()), m._confidence_sum, ()))
                    series["intensity"].append(
                        (names, cumulative(m._intensity.tolist()), m._intensity_sum, ()))
                if len(m.labels) <= MAX_CLASS_SERIES:
                    for label, n in zip(m.labels, m._classes, strict=True):
                        predictions.add_metric([*key, label], float(n))
                for feature, value in m.drift().items():
                    drift.add_metric([*key, feature], value)
                if m.reference is not None:
                    window.add_metric(key, float(m.window_size))
        return [confidence, predictions, intensity, drift, window]


class QualityMonitor:
    """Quality tracking of one model.

    >>> from prometheus_client import CollectorRegistry
    >>> monitor = QualityMonitor(QualityMetrics(CollectorRegistry()), "m", "1", ["a", "b"],
    ...                          features=lambda x: {"mean_intensity": x.mean(axis=1)})
    >>> monitor.observe(np.array([[0.9, 0.1]]), np.array([[0.2, 0.4]]))
    >>> monitor.flush()

    ``features`` maps a batch of inputs to per-sample statistics; it runs at the flush
    (``QualityWorker``), not in the request.
    """

    def __init__(self, metrics: QualityMetrics, model: str, version: str,
                 labels: Sequence[str], reference: QualityReference | None = None,
                 features: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
                 window: int = 500, top_k: int = 5) -> None:
        self.metrics, self.model, self.version = metrics, model, version
        self._features = features
        self.labels = list(labels)
        self.reference = reference
        self.top_k = min(top_k, len(self.labels))
        self._pending: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._lock = threading.Lock()
        self._confidence = np.zeros(len(CONFIDENCE_BUCKETS) + 1, np.int64)
        self._confidence_sum = 0.0
        self._intensity = np.zeros(len(INTENSITY_BUCKETS) + 1, np.int64)
        self._intensity_sum = 0.0
        self._classes = np.zeros(len(self.labels), np.int64)
        # The drift window: the last ``window`` samples' features and predicted classes.
        self._window = window
        names = list(reference.features) if reference else []
        self._ring = {name: np.zeros(window) for name in names}
        self._ring_classes = np.zeros(window, np.int64)
        self._ring_next = 0
        self.window_size = 0
        self._psi: dict[str, float] = {}
        self._psi_stale = False  # the window moved since the PSI was computed
        for outcome in ("correct", "incorrect"):
            metrics.feedback.labels(model, version, outcome)
            metrics.feedback_top5.labels(model, version, outcome)
        metrics.monitors.append(self)

    def observe(self, probabilities: np.ndarray, samples: np.ndarray) -> None:
        """Queue a batch of predictions (n, classes) with the inputs (n, ...) they came from."""
        self._pending.append((probabilities, samples))

    def flush(self) -> None:
        """Fold everything queued into the counts and the drift window."""
        batches = []
        while self._pending:
            batches.append(self._pending.popleft())
        if not batches:
            return
        probs = np.concatenate([p for p, _ in batches])
        samples = np.concatenate([x for _, x in batches])
        features = dict(self._features(samples)) if self._features else {}
        top = probs.argmax(axis=1)
        confidence = probs[np.arange(len(top)), top]  # max(axis=1) takes 6x as long
        with self._lock:
            self._confidence += _bucket_counts(confidence, CONFIDENCE_BUCKETS)
            self._confidence_sum += float(confidence.sum())
            self._classes += np.bincount(top, minlength=len(self.labels))
            if "mean_intensity" in features:
                intensity = features["mean_intensity"]
                self._intensity += _bucket_counts(intensity, INTENSITY_BUCKETS)
                self._intensity_sum += float(intensity.sum())
            if self.reference is not None:
                self._roll(top, features)
                self._psi_stale = True

    def _roll(self, top: np.ndarray, features: dict[str, np.ndarray]) -> None:
        n = min(len(top), self._window)
        slots = (self._ring_next + np.arange(n)) % self._window
        self._ring_classes[slots] = top[-n:]
        for name, ring in self._ring.items():
            if name in features:
                ring[slots] = features[name][-n:]
        self._ring_next = int((self._ring_next + n) % self._window)
        self.window_size = min(self.window_size + n, self._window)

    def drift(self) -> dict[str, float]:
        """PSI of the window against the reference, per feature: computed when asked (at a
        scrape) after the window moved, not at every flush. Call with ``_lock`` held."""
        if self._psi_stale and self.reference is not None:
            size = self.window_size
            for name, ref in self.reference.features.items():
                self._psi[name] = psi(ref.shares, ref.shares_of(self._ring[name][:size]))
            if self.reference.class_shares is not None:
                counts = np.bincount(self._ring_classes[:size],
                                     minlength=len(self.reference.class_shares))
                self._psi["prediction"] = psi(self.reference.class_shares, counts / size)
            self._psi_stale = False
        return self._psi

    def record_feedback(self, top: Sequence[int] | np.ndarray, truth: int
                        ) -> tuple[bool, bool]:
        classes = [int(i) for i in top[: self.top_k]]
        correct, in_top = classes[0] == truth, truth in classes
        self.metrics.feedback.labels(self.model, self.version,
                                     "correct" if correct else "incorrect").inc()
        self.metrics.feedback_top5.labels(self.model, self.version,
                                          "correct" if in_top else "incorrect").inc()
        return correct, in_top


def _bucket_counts(values: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    """Per-bucket (not cumulative) counts; a value equal to a bound falls in that bucket."""
    return np.bincount(np.searchsorted(bounds, values, side="left"),
                       minlength=len(bounds) + 1)


class QualityWorker:
    """Flushes monitors, and settles a feedback store, on the event loop every ``interval``
    seconds, off every request's path.

    On the loop rather than in a thread, whose flushes contend with the loop for the GIL;
    why 0.25 s: docs/quality.md#the-flushes.
    """

    def __init__(self, monitors: Sequence[QualityMonitor],
                 feedback: FeedbackStore | None = None, interval: float = 0.25) -> None:
        self.jobs: list[Callable[[], None]] = [m.flush for m in monitors]
        if feedback is not None:
            self.jobs.append(feedback.settle)
        self.interval = interval
        self._task = LoopTask(self._run)

    def start(self) -> None:
        if self.jobs:
            self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        self._run_jobs()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._run_jobs()

    def _run_jobs(self) -> None:
        for job in self.jobs:
            try:
                job()
            except Exception:  # the next flush may succeed; a dead task would never flush
                log.exception("quality flush failed")
