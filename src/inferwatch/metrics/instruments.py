"""The inference metrics: names kept from the seed tutorial, plus stages, batching and models."""

from __future__ import annotations

import array
import functools
import inspect
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from inferwatch.metrics.buckets import (
    DEFAULT_BATCH_SIZE_BUCKETS,
    DEFAULT_INTER_TOKEN_BUCKETS,
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_STAGE_BUCKETS,
    DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS,
    DEFAULT_TOKENS_PER_SECOND_BUCKETS,
)
from inferwatch.metrics.histogram import DeferredHistogram, ExemplarLabels, Exemplars
from inferwatch.metrics.names import (
    BATCH_SIZE,
    ERROR_REASONS,
    ERROR_REASONS_TOTAL,
    ERRORS_TOTAL,
    FINISH_REASON_LABEL,
    FINISH_REASONS,
    FINISH_REASONS_TOTAL,
    IN_FLIGHT_REQUESTS,
    INTER_TOKEN_LATENCY_SECONDS,
    LATENCY_SECONDS,
    MODEL_HELDOUT_ACCURACY_RATIO,
    MODEL_INFO,
    MODEL_LABEL,
    MODEL_LOAD_SECONDS,
    OUTPUT_TOKENS_PER_SECOND,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    REASON_LABEL,
    REQUESTS_TOTAL,
    RESPONSES_TOTAL,
    STAGE_LABEL,
    STAGE_SECONDS,
    TIME_TO_FIRST_BYTE_SECONDS,
    TIME_TO_FIRST_TOKEN_SECONDS,
    TOKEN_SOURCE_LABEL,
    TOKEN_TYPE_LABEL,
    TOKENS_TOTAL,
    VERSION_LABEL,
)

UNKNOWN_MODEL = "_unknown"
"""Label value that every model name outside the known set is folded into."""

STAGES = ("queue", "preprocess", "compute", "postprocess")
"""The ``stage`` label values of ``inference_stage_seconds``."""

_RECORDED_STAGES = ("preprocess", "queue", "compute", "postprocess")  # RequestRecorder's order
_RECORD = 2 + len(_RECORDED_STAGES)  # model index, seconds, the stages: what is folded
# What is appended: the model index, then the handler's readings as they come (started,
# preprocess, queue, compute, postprocess started, finished), then the request id, the
# latency's exemplar; the differences are taken at the fold, with numpy.
_ID_BYTES = 64  # serve's request ids are at most 64 ASCII characters
_RECORD_DTYPE = np.dtype([("readings", np.float64, 7), ("id", f"S{_ID_BYTES}")])
_RAW_RECORD = _RECORD_DTYPE.itemsize // 8  # numbers of the array("d") per record
_FOLD_AT = 4096  # records waiting for a scrape; bounds memory between scrapes
# A record packed to bytes and appended with one frombytes: half the cost of extending the
# array with a tuple, which converts and appends number by number.
_pack_record = struct.Struct(f"7d{_ID_BYTES}s").pack
_pack_batch = struct.Struct("2q").pack

# Status codes an inference service answers with; anything else is reported by class.
_KNOWN_CODES = frozenset(
    {200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429,
     500, 501, 502, 503, 504, 507}  # 507: TorchServe's "Out of resources"
)

F = TypeVar("F", bound=Callable[..., Any])

# The (type, source) pairs of inference_tokens_total: a prompt is never estimated. They and
# every finish reason are made at zero with a model's first completion, so that rate() sees
# the first increase of each.
_TOKEN_SERIES = (("input", "usage"), ("output", "usage"), ("output", "estimated"))


def _status_code_label(status: int) -> str:
    return str(status) if status in _KNOWN_CODES else f"{status // 100}xx"


@dataclass
class _ModelSeries:
    """Labelled children of one (model, version), resolved once instead of per request."""

    requests: Any
    errors: Any
    latency: Any
    in_flight: Any
    stages: dict[str, Any]
    batch_size: Any
    first_byte: Any = None
    codes: dict[int, Any] = field(default_factory=dict)
    reasons: dict[str, Any] = field(default_factory=dict)
    completions: _CompletionSeries | None = None


@dataclass
class _CompletionSeries:
    """A model's LLM series; the histograms only for a known model, as ``first_byte``."""

    tokens: dict[tuple[str, str], Any]  # by (type, source)
    finish_reasons: dict[str, Any]
    first_token: Any
    inter_token: Any
    tokens_per_second: Any


@dataclass
class Completion:
    """What one OpenAI-style answer produced, for :meth:`InferenceMetrics.observe_completion`.

    Tokens are the server's own ``usage``, or with ``estimated`` the output counted from a
    stream's chunks (no input then); None where unknown. Times are in seconds:
    ``first_token`` from the request's start, ``gaps`` between content chunks.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    estimated: bool = False
    finish_reasons: Sequence[str] = ()
    first_token: float | None = None
    gaps: Sequence[float] = ()
    tokens_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.estimated and self.input_tokens is not None:
            raise ValueError("input tokens are never estimated: only a stream's output is")


class InferenceMetrics:
    """Prometheus metrics for an inference service, guarded against unbounded labels.

    >>> from prometheus_client import CollectorRegistry
    >>> metrics = InferenceMetrics({"digits": "1"}, registry=CollectorRegistry())
    >>> with metrics.track("digits") as request:
    ...     request.status = 200
    >>> metrics.requests.labels("digits", "1")._value.get()
    1.0

    ``inference_requests_total``, ``inference_errors_total`` and ``inference_latency_seconds``
    keep the seed tutorial's names so its dashboard queries and alert rule work unchanged.
    ``inference_errors_total`` counts server-side failures (status >= 500); client mistakes are
    visible per status code and per reason in their own series.
    """

    def __init__(
        self,
        models: Mapping[str, str] | Iterable[str] = (),
        *,
        registry: CollectorRegistry | None = REGISTRY,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        stage_buckets: Sequence[float] = DEFAULT_STAGE_BUCKETS,
        batch_size_buckets: Sequence[float] = DEFAULT_BATCH_SIZE_BUCKETS,
        first_token_buckets: Sequence[float] = DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS,
        inter_token_buckets: Sequence[float] = DEFAULT_INTER_TOKEN_BUCKETS,
        tokens_per_second_buckets: Sequence[float] = DEFAULT_TOKENS_PER_SECOND_BUCKETS,
    ) -> None:
        kw: dict[str, Any] = {"registry": registry}
        labels = (MODEL_LABEL, VERSION_LABEL)
        self.shared = bool(getattr(values.ValueClass, "_multiprocess", False))
        # What RequestRecorders append, folded into the series below by `fold`.
        self._records = array.array("d")  # _RAW_RECORD numbers per request
        self._batches = array.array("q")  # model index, size
        self._recorders: list[RequestRecorder] = []
        self._fold_lock = threading.Lock()
        if registry is not None and not self.shared:
            registry.register(_Folder(self.fold))  # first: collected before the series
        # Another process reads shared values, and could not fold a deferred queue.
        histogram = Histogram if self.shared else DeferredHistogram
        self.requests = Counter(
            REQUESTS_TOTAL, "Inference requests received.", labels, **kw
        )
        self.errors = Counter(
            ERRORS_TOTAL,
            "Inference requests that failed on the server side (status >= 500).",
            labels, **kw,
        )
        self.responses = Counter(
            RESPONSES_TOTAL, "Inference responses by HTTP status code.",
            (*labels, "code"), **kw,
        )
        self.error_reasons = Counter(
            ERROR_REASONS_TOTAL, "Failed inference requests by reason, client or server.",
            (*labels, REASON_LABEL), **kw,
        )
        self.latency = histogram(
            LATENCY_SECONDS,
            "End-to-end time of successful inference requests.",
            labels, buckets=latency_buckets, **kw,
        )
        self.stage_latency = histogram(
            STAGE_SECONDS,
            "Time spent per request in each stage: queue, preprocess, compute, postprocess.",
            (*labels, STAGE_LABEL), buckets=stage_buckets, **kw,
        )
        self.first_byte = histogram(
            TIME_TO_FIRST_BYTE_SECONDS,
            "Time to the first byte of a streamed response (the first token of an LLM).",
            labels, buckets=latency_buckets, **kw,
        )
        self.batch_size = histogram(
            BATCH_SIZE, "Samples per executed model batch.",
            labels, buckets=batch_size_buckets, **kw,
        )
        self.tokens = Counter(
            TOKENS_TOTAL,
            "Tokens of OpenAI-style completions: input (prompt) and output (completion), from "
            "the server's usage or estimated from a stream's chunks.",
            (*labels, TOKEN_TYPE_LABEL, TOKEN_SOURCE_LABEL), **kw,
        )
        self.finish_reasons = Counter(
            FINISH_REASONS_TOTAL, "Choices of OpenAI-style completions by finish reason.",
            (*labels, FINISH_REASON_LABEL), **kw,
        )
        self.first_token = histogram(
            TIME_TO_FIRST_TOKEN_SECONDS,
            "Time to the first content chunk of a streamed completion.",
            labels, buckets=first_token_buckets, **kw,
        )
        self.inter_token = histogram(
            INTER_TOKEN_LATENCY_SECONDS,
            "Gaps between the content chunks of streamed completions.",
            labels, buckets=inter_token_buckets, **kw,
        )
        self.tokens_per_second = histogram(
            OUTPUT_TOKENS_PER_SECOND,
            "Output tokens of a streamed completion per second, from its first content chunk "
            "to its last.",
            labels, buckets=tokens_per_second_buckets, **kw,
        )
        # With several worker processes (values shared through files, see
        # inferwatch.metrics.workers) gauges are summed over the live workers or their maximum
        # is taken, so a dead worker's value goes with it; one process ignores the mode.
        summed: dict[str, Any] = {**kw, "multiprocess_mode": "livesum"}
        highest: dict[str, Any] = {**kw, "multiprocess_mode": "livemax"}
        self.in_flight = Gauge(
            IN_FLIGHT_REQUESTS, "Inference requests being processed.", labels,
            **summed,
        )
        self.queue_depth = Gauge(
            QUEUE_DEPTH, "Samples waiting in the batching queue.", labels, **summed
        )
        self.queue_capacity = Gauge(
            QUEUE_CAPACITY, "Capacity of the batching queue, in samples.", labels,
            **summed,
        )
        self.model_info = Gauge(
            MODEL_INFO, "Loaded model, with its runtime; always 1.",
            (*labels, "runtime"), **highest,
        )
        self.model_load = Gauge(
            MODEL_LOAD_SECONDS, "Time taken to load or train the model.", labels,
            **highest,
        )
        self.model_accuracy = Gauge(
            MODEL_HELDOUT_ACCURACY_RATIO,
            "Accuracy of the model on held-out data, measured at load time.", labels, **highest,
        )
        self._lock = threading.Lock()
        self._versions: dict[str, str] = {}
        self._series: dict[str, _ModelSeries] = {}
        items = models.items() if isinstance(models, Mapping) else ((m, "") for m in models)
        for name, version in items:
            self.add_model(name, version)

    @property
    def models(self) -> Mapping[str, str]:
        return dict(self._versions)

    def add_model(self, name: str, version: str = "") -> None:
        """Allow ``name`` as a label value and create its series at zero."""
        with self._lock:
            self._versions[name] = version
            self._series.pop(name, None)
        self._children(name)

    def model_label(self, name: str | None) -> str:
        """The label value for ``name``: itself when known, else ``UNKNOWN_MODEL``."""
        return name if name in self._versions else UNKNOWN_MODEL

    def _children(self, name: str | None) -> _ModelSeries:
        model = self.model_label(name)
        series = self._series.get(model)
        if series is not None:
            return series
        version = self._versions.get(model, "")
        series = _ModelSeries(
            requests=self.requests.labels(model, version),
            errors=self.errors.labels(model, version),
            latency=self.latency.labels(model, version),
            in_flight=self.in_flight.labels(model, version),
            stages={},
            batch_size=None,
        )
        if model != UNKNOWN_MODEL:  # requests for unknown models never reach a stage
            series.stages = {s: self.stage_latency.labels(model, version, s) for s in STAGES}
            series.batch_size = self.batch_size.labels(model, version)
        with self._lock:
            return self._series.setdefault(model, series)

    def observe_request(
        self, model: str | None, status: int, seconds: float, reason: str | None = None,
        exemplar: ExemplarLabels | None = None,
    ) -> None:
        """Count one finished request; latency is recorded for successes only, with
        ``exemplar`` (such as ``{"request_id": ...}``, see
        :meth:`DeferredHistogram.observe`) when given."""
        s = self._children(model)
        s.requests.inc()
        self._code(model, s, status).inc()
        if status >= 500:
            s.errors.inc()
        if status < 400:
            # shared values keep no exemplars, and the stock observe takes no function
            s.latency.observe(seconds, None if self.shared else exemplar)
        elif reason is not None:
            self._reason(model, s, reason).inc()

    def _code(self, model: str | None, s: _ModelSeries, status: int) -> Any:
        code = s.codes.get(status)
        if code is None:
            label = self.model_label(model)
            code = self.responses.labels(label, self._versions.get(label, ""),
                                         _status_code_label(status))
            s.codes[status] = code
        return code

    def _reason(self, model: str | None, s: _ModelSeries, reason: str) -> Any:
        if reason not in ERROR_REASONS:
            reason = "internal"
        child = s.reasons.get(reason)
        if child is None:
            label = self.model_label(model)
            child = self.error_reasons.labels(label, self._versions.get(label, ""), reason)
            s.reasons[reason] = child
        return child

    def observe_stage(self, model: str, stage: str, seconds: float) -> None:
        child = self._children(model).stages.get(stage)
        if child is not None:
            child.observe(seconds)

    def observe_stages(self, model: str, timings: Iterable[tuple[str, float]]) -> None:
        """``observe_stage`` for several stages of one request, the model looked up once."""
        stages = self._children(model).stages
        for stage, seconds in timings:
            child = stages.get(stage)
            if child is not None:
                child.observe(seconds)

    def observe_first_byte(self, model: str | None, seconds: float) -> None:
        """Time to first byte of a streamed response; unknown models get no series."""
        s = self._children(model)
        if s.first_byte is None:
            if not s.stages:
                return
            label = self.model_label(model)
            s.first_byte = self.first_byte.labels(label, self._versions.get(label, ""))
        s.first_byte.observe(seconds)

    def observe_completion(self, model: str | None, completion: Completion,
                           exemplar: ExemplarLabels | None = None) -> None:
        """Count one OpenAI-style answer's tokens and finish reasons, and time its stream;
        ``exemplar`` goes with the time to first token. Unknown models get counters only."""
        s = self._children(model)
        series = s.completions or self._completion_series(model, s)
        source = "estimated" if completion.estimated else "usage"
        if completion.output_tokens is not None:
            series.tokens[("output", source)].inc(completion.output_tokens)
        if completion.input_tokens is not None:
            series.tokens[("input", source)].inc(completion.input_tokens)
        reasons = series.finish_reasons
        for reason in completion.finish_reasons:
            reasons.get(reason, reasons["other"]).inc()
        if series.first_token is None:
            return
        if completion.first_token is not None:
            series.first_token.observe(completion.first_token,
                                       None if self.shared else exemplar)
        observe_gap = series.inter_token.observe
        for gap in completion.gaps:
            observe_gap(gap)
        if completion.tokens_per_second is not None:
            series.tokens_per_second.observe(completion.tokens_per_second)

    def _completion_series(self, model: str | None, s: _ModelSeries) -> _CompletionSeries:
        label = self.model_label(model)
        values = (label, self._versions.get(label, ""))
        known = bool(s.stages)
        series = _CompletionSeries(
            tokens={key: self.tokens.labels(*values, *key) for key in _TOKEN_SERIES},
            finish_reasons={r: self.finish_reasons.labels(*values, r) for r in FINISH_REASONS},
            first_token=self.first_token.labels(*values) if known else None,
            inter_token=self.inter_token.labels(*values) if known else None,
            tokens_per_second=self.tokens_per_second.labels(*values) if known else None,
        )
        s.completions = series
        return series

    def observe_batch(self, model: str, size: int) -> None:
        child = self._children(model).batch_size
        if child is not None:
            child.observe(size)

    def in_flight_gauge(self, model: str | None) -> Any:
        return self._children(model).in_flight

    def set_model_loaded(
        self, name: str, *, runtime: str, load_seconds: float, accuracy: float | None = None
    ) -> None:
        version = self._versions.get(name, "")
        self.model_info.labels(name, version, runtime).set(1)
        self.model_load.labels(name, version).set(load_seconds)
        if accuracy is not None:
            self.model_accuracy.labels(name, version).set(accuracy)

    def watch_queue(self, name: str, depth: Callable[[], float],
                    capacity: int) -> Callable[[float], None] | None:
        """Report the queue depth by calling ``depth`` at scrape time: no per-request cost.

        Values shared between worker processes are read by whichever process answers the
        scrape, which cannot call ``depth`` in another one: then the setter returned here must
        be called on every change instead.
        """
        version = self._versions.get(name, "")
        self.queue_capacity.labels(name, version).set(capacity)
        gauge = self.queue_depth.labels(name, version)
        if self.shared:
            return gauge.set
        gauge.set_function(depth)
        return None

    def recorder(self, model: str) -> RequestRecorder:
        """Lower level, for a service that times its own stages (``inferwatch serve``): see
        :class:`RequestRecorder`. Its ``active`` count becomes the model's in-flight gauge."""
        if model not in self._versions:
            raise ValueError(f"unknown model {model!r}: add_model it first")
        if self.shared:
            return _SharedRecorder(self, model, self.in_flight_gauge(model))
        recorder = RequestRecorder(self, model, len(self._recorders))
        self._recorders.append(recorder)
        self.in_flight_gauge(model).set_function(lambda: recorder.active)
        return recorder

    def fold(self) -> None:
        """Move what recorders appended into the series; a scrape of the registry calls it."""
        with self._fold_lock:
            n, m = len(self._records), len(self._batches)
            if not n and not m:
                return
            # Appends may go on meanwhile, from any thread: they land after the first n. An
            # append is one C call, so n is always a whole number of records.
            records, batches = self._records[:n], self._batches[:m]
            del self._records[:n], self._batches[:m]
            if records:
                raw = np.frombuffer(records, _RECORD_DTYPE)
                self._fold_records(_durations(raw["readings"]), raw)
            if batches:
                sizes = np.frombuffer(batches, np.int64).reshape(-1, 2)
                for i in np.unique(sizes[:, 0]):
                    child = self._children(self._recorders[i].model).batch_size
                    child.observe_many(sizes[sizes[:, 0] == i, 1].astype(float))

    def _fold_records(self, records: np.ndarray, raw: np.ndarray) -> None:
        """Fold ``records`` (see :func:`_durations`); ``raw``, as appended, has their ids."""
        index = records[:, 0].astype(np.intp)
        to_wall = time.time() - time.perf_counter()  # the exemplars' timestamps
        for i in np.unique(index):
            if len(self._recorders) > 1:
                mine = index == i
                rows, raw_rows = records[mine], raw[mine]
            else:
                rows, raw_rows = records, raw
            model = self._recorders[i].model
            s = self._children(model)
            s.requests.inc(len(rows))
            self._code(model, s, 200).inc(len(rows))
            ids = raw_rows["id"]
            carried = ids != b""  # b"": recorded without an id
            finished = raw_rows["readings"][:, 6] + to_wall
            if carried.all():  # serve: every request has an id
                s.latency.observe_many(rows[:, 1], _exemplars(rows[:, 1], ids, finished))
            else:
                s.latency.observe_many(rows[:, 1])
                if carried.any():
                    seconds = rows[carried, 1]
                    s.latency.keep_exemplars(seconds, _exemplars(seconds, ids[carried],
                                                                 finished[carried]))
            for column, stage in enumerate(_RECORDED_STAGES, start=2):
                s.stages[stage].observe_many(rows[:, column])

    @contextmanager
    def track(self, model: str | None) -> Iterator[RequestTracker]:
        """Time and count one request; an exception counts as a 500 ``internal`` failure."""
        tracker = RequestTracker()
        gauge = self.in_flight_gauge(model)
        gauge.inc()
        start = time.perf_counter()
        try:
            yield tracker
        except BaseException:
            tracker.status, tracker.reason = 500, tracker.reason or "internal"
            raise
        finally:
            gauge.dec()
            self.observe_request(model, tracker.status, time.perf_counter() - start,
                                 tracker.reason, tracker.exemplar)

    def instrument(self, model: str) -> Callable[[F], F]:
        """Decorator form of :meth:`track` for sync and async functions.

        >>> from prometheus_client import CollectorRegistry
        >>> metrics = InferenceMetrics(["m"], registry=CollectorRegistry())
        >>> @metrics.instrument("m")
        ... def predict(x):
        ...     return x * 2
        >>> predict(2)
        4
        """

        def decorate(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    with self.track(model):
                        return await fn(*args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.track(model):
                    return fn(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate


@dataclass
class RequestTracker:
    """Outcome of one tracked request; set ``status``/``reason`` (and the latency's
    ``exemplar``, such as ``{"trace_id": ...}``) before the block ends."""

    status: int = 200
    reason: str | None = None
    exemplar: Mapping[str, str] | None = None


class RequestRecorder:
    """Accounts for one model's requests by appending one record per success to an array,
    folded into the series with numpy when the registry is collected.

    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> recorder = InferenceMetrics({"m": "1"}, registry=registry).recorder("m")
    >>> recorder.active += 1
    >>> recorder.succeeded(time.perf_counter(), 1e-4, 2e-4, 3e-4, time.perf_counter(), "r-1")
    >>> recorder.active -= 1
    >>> registry.get_sample_value("inference_requests_total", {"model": "m", "version": "1"})
    1.0

    ``active`` is a plain int the handler adds to and takes from. Failures are rare: count
    them with :meth:`InferenceMetrics.observe_request`. What this saves against the per-call
    path: docs/instrumentation.md#the-request-recorder.
    """

    __slots__ = ("_append", "_batches", "_index", "_metrics", "_pack", "_records", "active",
                 "model")

    def __init__(self, metrics: InferenceMetrics, model: str, index: int) -> None:
        self._metrics, self.model, self._index = metrics, model, index
        self._records, self._batches = metrics._records, metrics._batches
        self.active = 0  # requests in the handler; the in-flight gauge reads it
        # ``serve``'s handler calls ``_append(_pack(<succeeded's arguments>, finished,
        # id as bytes))``: the same record with no Python function called, only C ones (its
        # ``batch`` per model call then keeps the array in bounds). The array is the same
        # object for life (a fold empties it in place), so its bound method stays valid.
        self._pack: Callable[..., Any] = functools.partial(_pack_record, float(index))
        self._append: Callable[[Any], None] = self._records.frombytes

    def succeeded(self, started: float, preprocess: float, queue: float, compute: float,
                  postprocess_started: float, request_id: str = "") -> None:
        """A 200 for a request that began at ``started`` and spent ``preprocess``, ``queue``
        and ``compute`` seconds in those stages (``time.perf_counter`` times); its id (at
        most 64 ASCII characters) becomes the latency's exemplar."""
        rid = request_id.encode("ascii") if request_id else b""
        if len(rid) > _ID_BYTES:
            raise ValueError(f"request id longer than {_ID_BYTES} characters")
        records = self._records
        records.frombytes(_pack_record(self._index, started, preprocess, queue, compute,
                                       postprocess_started, time.perf_counter(), rid))
        if len(records) >= _FOLD_AT * _RAW_RECORD:
            self._metrics.fold()

    def batch(self, size: int) -> None:
        """One model call on ``size`` samples."""
        batches = self._batches
        batches.frombytes(_pack_batch(self._index, size))
        if len(batches) >= _FOLD_AT * 2 or len(self._records) >= _FOLD_AT * _RAW_RECORD:
            self._metrics.fold()


def _exemplars(seconds: np.ndarray, ids: np.ndarray, finished: np.ndarray) -> Exemplars:
    """The exemplars of requests: their ids, latencies and ends (Unix times)."""
    return lambda rows: [
        Exemplar({"request_id": i.decode("ascii", "replace")}, value, at)
        for i, value, at in zip(ids[rows].tolist(), seconds[rows].tolist(),
                                finished[rows].tolist(), strict=True)]


def _durations(raw: np.ndarray) -> np.ndarray:
    """Appended readings (seven a record) as folded records: the model index, the
    request's seconds, and its seconds in each of ``_RECORDED_STAGES``."""
    records = np.empty((len(raw), _RECORD))
    records[:, 0] = raw[:, 0]
    records[:, 1] = raw[:, 6] - raw[:, 1]
    records[:, 2:5] = raw[:, 2:5]
    records[:, 5] = raw[:, 6] - raw[:, 5]
    return records


class _SharedRecorder(RequestRecorder):
    """With values shared between worker processes every record goes straight into them:
    whichever worker answers a scrape could not fold another one's records. Shared values
    keep no exemplars (prometheus_client's multiprocess mode), so the id is dropped."""

    __slots__ = ("_active", "_gauge")

    def __init__(self, metrics: InferenceMetrics, model: str, gauge: Any) -> None:
        self._gauge, self._active = gauge, 0
        super().__init__(metrics, model, -1)
        self._pack = lambda *readings: readings
        self._append = self._observe

    @property
    def active(self) -> int:
        return self._active

    @active.setter
    def active(self, value: int) -> None:
        self._active = value
        self._gauge.set(value)

    def succeeded(self, started: float, preprocess: float, queue: float, compute: float,
                  postprocess_started: float, request_id: str = "") -> None:
        self._observe((started, preprocess, queue, compute, postprocess_started,
                       time.perf_counter(), b""))

    def _observe(self, readings: tuple[Any, ...]) -> None:
        started, preprocess, queue, compute, postprocess_started, now, _ = readings
        self._metrics.observe_request(self.model, 200, now - started)
        self._metrics.observe_stages(self.model, zip(_RECORDED_STAGES, (
            preprocess, queue, compute, now - postprocess_started), strict=True))

    def batch(self, size: int) -> None:
        self._metrics.observe_batch(self.model, size)


class _Folder(Collector):
    """Registered before the series so that collecting the registry folds records first."""

    def __init__(self, fold: Callable[[], None]) -> None:
        self._fold = fold

    def collect(self) -> Iterable[Any]:
        self._fold()
        return []
