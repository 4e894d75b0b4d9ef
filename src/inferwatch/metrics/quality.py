"""Model quality as Prometheus metrics: confidence, class mix, input statistics, drift (PSI)
against a training reference, and accuracy from labelled feedback.

The batcher appends each batch's inputs and outputs to a queue; a task on the event loop
folds the queue into the metrics four times a second, so a request pays almost nothing. The
drift (PSI) of the window is computed when a scrape asks for it.
"""

from __future__ import annotations

import array
import asyncio
import collections
import logging
import os
import re
import threading
import time
import weakref
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
        labels = ("model", "version")
        self.feedback = Counter(
            "inference_feedback", "Labelled feedback received, by outcome of the top-1 answer.",
            (*labels, "outcome"), **kw)
        self.feedback_top5 = Counter(
            "inference_feedback_top5", "Labelled feedback received, by outcome of the top-5.",
            (*labels, "outcome"), **kw)
        self.feedback_rejected = Counter(
            "inference_feedback_rejected", "Feedback refused, by reason.", ("reason",), **kw)
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
        labels = ["model", "version"]
        confidence = HistogramMetricFamily(
            "inference_prediction_confidence", "Probability of the top-1 class per sample.",
            labels=labels)
        predictions = CounterMetricFamily(
            "inference_predictions", "Predicted (top-1) class per sample.",
            labels=[*labels, "class"])
        intensity = HistogramMetricFamily(
            "inference_input_mean_intensity", "Mean intensity of each input, 0..1.",
            labels=labels)
        drift = GaugeMetricFamily(
            "inference_drift_psi",
            "Population Stability Index of the last window of inputs against the training "
            'reference, per feature; feature="prediction" is the predicted class mix.',
            labels=[*labels, "feature"])
        window = GaugeMetricFamily(
            "inference_drift_window_samples", "Samples in the window the PSI is computed on.",
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
                        (names, cumulative(m._confidence.tolist()), m._confidence_sum))
                    series["intensity"].append(
                        (names, cumulative(m._intensity.tolist()), m._intensity_sum))
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

    On the loop, not in a thread: a thread's flushes contend with the loop for the GIL at
    every numpy call, and cost two to five times the CPU of the same flushes on the loop
    (10-40 ms against 4.5 ms for about 8,000 samples). Every 0.25 s: each flush leaves the
    caches cold for the requests after it, and flushing every 0.1 s cost the digits service
    about 0.2 us a request more (0.02 s: 0.3 us; 0.5 and 1 s saved little more;
    bench/overhead.py --asgi). A flush of 0.25 s of saturating traffic, about 3,000 digits,
    holds the loop for about 0.6 ms.
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


@dataclass(frozen=True)
class Answer:
    model: str
    top: tuple[int, ...]
    at: float


_NO_ID = hash(None)  # the key of a row without an id, and of an empty slot
_DRAWN_ID = re.compile(r"[0-9a-f]{16}")
_UINT64 = (1 << 64) - 1


class RequestIds:
    """Ids for requests that came without one: 16 hex digits, 64 random bits (as long as a
    W3C trace context's span id), drawn from the OS 4,096 at a time; 0.26 us an id where
    ``uuid.uuid4().hex`` took 1.5. :meth:`new` hands each out with its key in a
    :class:`FeedbackStore` (:func:`answer_key`), the same bits as a signed integer, so the
    store never hashes an id the service drew itself. A process forked from one that drew
    ids draws its own, never the rest of its parent's.
    """

    def __init__(self) -> None:
        self._keys = array.array("q")
        self._next = 0
        _DRAWING.add(self)

    def new(self) -> tuple[str, int]:
        if self._next == len(self._keys):
            self._keys, self._next = array.array("q", os.urandom(8 * 4096)), 0
        key = self._keys[self._next]
        self._next += 1
        return f"{key & _UINT64:016x}", key


_DRAWING: weakref.WeakSet[RequestIds] = weakref.WeakSet()


def _forget_drawn() -> None:
    for ids in _DRAWING:
        ids._keys, ids._next = array.array("q"), 0


os.register_at_fork(after_in_child=_forget_drawn)


def answer_key(request_id: str) -> int:
    """What an answer given under ``request_id`` is kept under in a :class:`FeedbackStore`:
    the bits of an id of the form :class:`RequestIds` draws (16 lowercase hex digits, drawn
    or sent by a client), the ``hash()`` of any other."""
    if len(request_id) == 16 and _DRAWN_ID.fullmatch(request_id):
        key = int(request_id, 16)
        return key - (1 << 64) if key >> 63 else key
    return hash(request_id)


def _key(request_id: str | int | None) -> int:
    if request_id is None:
        return _NO_ID
    return answer_key(request_id) if isinstance(request_id, str) else request_id


class FeedbackStore:
    """Answers by request id, so feedback can be matched to what was predicted.

    Bounded in size and age: a ring of ``capacity`` answers, the oldest overwritten first;
    feedback for an unknown or expired id is refused, and feedback for an id is counted
    once. Keeps at most ``top_k`` classes per answer. Used from the event loop's thread
    only, so it takes no lock.

    Answers arrive a batch at a time (:meth:`defer`, once per model call) and are stored a
    flush at a time (:meth:`settle`): the top classes of every deferred row sorted in one
    numpy call, and every column of the ring (key, model, classes, time) written by slice.
    An answer is kept under its id's key (:func:`answer_key`), a 64-bit integer taken as
    the model call is deferred: for an id the service drew (:class:`RequestIds`) it comes
    with the id. No id string is held until the flush, and the store keeps no Python object
    per answer, so the garbage collector has nothing to walk. Holding each request's id
    string until the flush cost the digits service about 0.35 us a request
    (bench/overhead.py --asgi), an index by id (a dict) about 3 us, an OrderedDict of
    answer tuples 15% of its CPU.

    An id is found by one vectorised scan of the ring's keys per feedback request (about
    20 us for 100,000 answers, bench/quality.py), the newest match taken. Two ids with one
    key would share an answer: with a full ring, a chance of about 1 in 10^14 per feedback
    request. Drawn ids are random and ``hash()`` is keyed per process, so no id can be
    aimed at another's without knowing it.
    """

    def __init__(self, capacity: int = 100_000, ttl: float = 600.0, top_k: int = 5) -> None:
        if capacity < 1 or top_k < 1:
            raise ValueError("capacity and top_k must be >= 1")
        self.capacity, self.ttl, self.top_k = capacity, ttl, top_k
        # Per (model, classes): the deferred rows' keys, and each model call's answers
        # (rows, classes) with its time.
        self._deferred: dict[tuple[str, int],
                             tuple[array.array[int], list[tuple[np.ndarray, float]]]] = {}
        self._deferred_rows = 0
        self._next = 0  # answers ever stored; the next goes to slot _next % capacity
        self._models: list[str] = []
        self._model_index: dict[str, int] = {}
        self._key = np.full(capacity, _NO_ID, np.int64)
        self._model = np.full(capacity, -1, np.int32)  # -1: an empty slot
        self._top = np.full((capacity, top_k), -1, np.int64)  # best first, -1 past the end
        self._at = np.zeros(capacity)
        self._scored = np.zeros(capacity, bool)
        self._found: tuple[str, int, int | None] = ("", -1, None)  # the last _slot answer

    def defer(self, model: str, ids: Sequence[str | int | None],
              probabilities: np.ndarray) -> None:
        """Keep the answers of one model call: row ``i`` of ``probabilities`` (samples,
        classes) under ``ids[i]``, an id or the key :meth:`RequestIds.new` gave with one;
        rows whose id is None not at all. Stored at the next :meth:`settle`, which runs
        often (``QualityWorker``) and before any lookup."""
        if probabilities.ndim != 2:
            probabilities = probabilities.reshape(len(ids), -1)
        if len(probabilities) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(probabilities)} answers")
        key = (model, probabilities.shape[1])
        group = self._deferred.get(key) or (array.array("q"), [])
        try:  # a list of the keys the service drew with its ids: 20 ns each
            group[0].fromlist(ids)  # type: ignore[arg-type]
        except TypeError:  # ids, rows without one, or not a list; nothing was added
            group[0].fromlist([_key(i) for i in ids])  # raises with nothing added, too
        group[1].append((probabilities, time.monotonic()))
        self._deferred[key] = group
        self._deferred_rows += len(ids)
        if self._deferred_rows >= self.capacity:
            self.settle()

    def settle(self) -> None:
        """Store every deferred answer: per model, the top classes of all rows sorted at
        once."""
        if not self._deferred:
            return
        deferred, self._deferred, self._deferred_rows = self._deferred, {}, 0
        for (model, _), (keys, calls) in deferred.items():
            key = np.frombuffer(keys, np.int64)
            rows = np.concatenate([c[0] for c in calls])
            at = np.repeat([c[1] for c in calls], [len(c[0]) for c in calls])
            kept = key != _NO_ID
            if not kept.all():
                key, rows, at = key[kept], rows[kept], at[kept]
            if len(key):
                tops = np.argsort(rows, axis=1)[:, ::-1][:, :self.top_k]
                self._store(model, key, tops, at)

    def remember(self, request_id: str | int, model: str,
                 top: Sequence[int] | np.ndarray) -> None:
        """Keep the answer for ``request_id``, an id or the key :meth:`RequestIds.new` gave
        with one (replacing an earlier answer under it)."""
        self.settle()  # deferred answers came first
        classes = np.asarray(top, dtype=np.int64)[None, :self.top_k]
        self._store(model, np.array([_key(request_id)], np.int64), classes,
                    np.array([time.monotonic()]))

    def _store(self, model: str, keys: np.ndarray, tops: np.ndarray, at: np.ndarray) -> None:
        if len(keys) > self.capacity:
            keys, tops, at = keys[-self.capacity:], tops[-self.capacity:], at[-self.capacity:]
        n, start = len(keys), self._next
        index = self._model_index.get(model)
        if index is None:
            index = self._model_index[model] = len(self._models)
            self._models.append(model)
        first = start % self.capacity
        slots: slice | np.ndarray = (slice(first, first + n) if first + n <= self.capacity
                                     else np.arange(start, start + n) % self.capacity)
        self._key[slots] = keys
        self._model[slots] = index
        self._top[slots] = -1
        self._top[slots, :tops.shape[1]] = tops
        self._at[slots] = at
        self._scored[slots] = False
        self._next = start + n

    def _slot(self, request_id: str) -> int | None:
        """The slot of the newest answer stored under ``request_id``."""
        self.settle()
        if self._found[:2] == (request_id, self._next):  # lookup, then mark: one scan
            return self._found[2]
        key = answer_key(request_id)
        slot = None if key == _NO_ID else self._newest(np.flatnonzero(self._key == key))
        self._found = (request_id, self._next, slot)
        return slot

    def _newest(self, slots: np.ndarray) -> int | None:
        """The slot among ``slots`` written last: the fewest answers stored since."""
        if not len(slots):
            return None
        return int(slots[np.argmin((self._next - 1 - slots) % self.capacity)])

    def lookup(self, request_id: str) -> Answer | str:
        """The answer for ``request_id``, or why there is none to score:
        ``unknown_request_id`` (never seen, or expired) or ``duplicate_feedback``."""
        slot = self._slot(request_id)
        if slot is None or time.monotonic() - self._at[slot] > self.ttl:
            return "unknown_request_id"
        if self._scored[slot]:
            return "duplicate_feedback"
        top = tuple(int(c) for c in self._top[slot] if c >= 0)
        return Answer(self._models[self._model[slot]], top, float(self._at[slot]))

    def mark(self, request_id: str) -> None:
        """Record that feedback for ``request_id`` was counted."""
        slot = self._slot(request_id)
        if slot is not None:
            self._scored[slot] = True
