"""A histogram that records an observation in O(1) and sorts it into buckets later."""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from prometheus_client import Histogram, metrics
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from inferwatch.metrics.exposition import (
    HistogramSeries,
    cumulative,
    families_text,
    histogram_text,
)

_FOLD_AT = 4096  # pending observations; bounds memory between scrapes
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MAX_EXEMPLAR_RUNES = 128  # names and values together, as OpenMetrics allows
_USUAL_NAMES = frozenset({"request_id", "trace_id", "span_id"})  # valid: no regex to run

Exemplars = Callable[[np.ndarray], list[Exemplar]]
"""The exemplars of the observations at the given positions, in that order."""

ExemplarLabels = Mapping[str, str] | Callable[[], Mapping[str, str] | None]
"""An exemplar's labels, or what makes them if they are still the latest at the fold."""


class DeferredHistogram(Histogram):
    """A ``prometheus_client.Histogram`` whose ``observe`` only appends to a queue, sorted
    into buckets with numpy when a scrape collects it (or every few thousand observations).

    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> h = DeferredHistogram("t_seconds", "Time.", buckets=(0.1, 1.0), registry=registry)
    >>> h.observe(0.05); h.observe(0.5, {"request_id": "3f2a"})
    >>> registry.get_sample_value("t_seconds_bucket", {"le": "0.1"})
    1.0

    Each bucket keeps the exemplar of its latest observation that had one, as the stock
    ``observe`` does. Values shared between worker processes are read by another process,
    which cannot fold this one's queue: use ``Histogram`` there. Why: docs/instrumentation.md.
    """

    def _metric_init(self) -> None:
        super()._metric_init()
        self._pending: deque[float] = deque()
        # Per bucket, the latest (amount, exemplar, time) that observe was given: a list item
        # set without a lock, made an Exemplar of the bucket's value at the fold.
        self._latest: list[tuple[float, ExemplarLabels, float] | None] = \
            [None] * len(self._upper_bounds)
        self._folded = list(self._latest)  # what the last fold found there
        self._new_exemplars = False  # observe gave one since the last fold
        # The buckets' exemplars as their values hold them, read here without their locks.
        self._exemplar_of: list[Exemplar | None] = [None] * len(self._upper_bounds)
        self._has_exemplars = False  # the exposition writes exemplars only then
        self._fold_lock = threading.Lock()
        self._bounds = np.array(self._upper_bounds)

    def observe(self, amount: float, exemplar: ExemplarLabels | None = None) -> None:
        """``exemplar`` may be a function that makes the labels, called only if its
        observation is still its bucket's latest at the fold: the work of one per bucket and
        scrape, not one per request (an empty result leaves the bucket as it was)."""
        try:
            pending = self._pending
        except AttributeError:  # a labelled parent: only its children are observable
            self._raise_if_not_observable()
            raise
        if exemplar:
            if not callable(exemplar):
                _check_exemplar(exemplar)  # here, as the stock observe does, not at a scrape
            if amount == amount:  # NaN is in no bucket
                # the first bound >= amount, as `amount <= bound` in the stock observe
                i = bisect.bisect_left(self._upper_bounds, amount)
                self._latest[i] = (amount, exemplar, time.time())
                self._new_exemplars = True  # after the item: a fold that misses it sees this
        pending.append(amount)  # atomic: safe from any thread without a lock
        if len(pending) >= _FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        with self._fold_lock:
            n = len(self._pending)
            if n:
                popleft = self._pending.popleft
                self._add(np.fromiter((popleft() for _ in range(n)), dtype=float, count=n))
            if self._new_exemplars:
                self._new_exemplars = False
                for bucket, latest in enumerate(self._latest):
                    if latest is not self._folded[bucket] and latest is not None:
                        self._folded[bucket] = latest
                        amount, given, at = latest
                        labels = given() if callable(given) else given
                        if labels and (not callable(given) or _valid_exemplar(labels)):
                            self._offer(bucket, Exemplar(dict(labels), amount, at))

    def observe_many(self, amounts: np.ndarray, exemplars: Exemplars | None = None) -> None:
        """``observe`` each of ``amounts`` at once, with numpy; with ``exemplars``, each
        bucket's exemplar becomes that of the last of ``amounts`` in it."""
        if len(amounts):
            with self._fold_lock:
                index = self._add(amounts)
                if exemplars is not None:
                    self._keep_exemplars(index, exemplars)

    def keep_exemplars(self, amounts: np.ndarray, exemplars: Exemplars) -> None:
        """``observe_many``'s exemplars alone, for amounts it counted without them."""
        if len(amounts):
            with self._fold_lock:
                self._keep_exemplars(self._index(amounts), exemplars)

    def _index(self, amounts: np.ndarray) -> np.ndarray:
        # first bound >= amount, as `amount <= bound` in the stock observe; NaN matches none
        return np.searchsorted(self._bounds, amounts, side="left")

    def _add(self, amounts: np.ndarray) -> np.ndarray:
        """Count ``amounts``; their buckets (``len(bounds)``: none, for NaN)."""
        self._sum.inc(float(amounts.sum()))
        index = self._index(amounts)
        counts = np.bincount(index, minlength=len(self._bounds) + 1)
        for i in np.flatnonzero(counts[:len(self._bounds)]):
            self._buckets[i].inc(float(counts[i]))
        return index

    def _keep_exemplars(self, index: np.ndarray, exemplars: Exemplars) -> None:
        """Offer each bucket in ``index`` the exemplar of its last observation there."""
        last = np.full(len(self._bounds) + 1, -1, np.intp)
        np.maximum.at(last, index, np.arange(len(index)))
        buckets = np.flatnonzero(last[:len(self._bounds)] >= 0)  # NaN is in none
        for bucket, found in zip(buckets.tolist(), exemplars(last[buckets]), strict=True):
            self._offer(bucket, found)

    def _offer(self, bucket: int, exemplar: Exemplar) -> None:
        """``exemplar`` for ``bucket`` unless it holds a later one: observe's and recorded
        ones are folded in turn."""
        held = self._exemplar_of[bucket]
        if held is None or float(exemplar.timestamp or 0) >= float(held.timestamp or 0):
            self._exemplar_of[bucket] = exemplar
            self._buckets[bucket].set_exemplar(exemplar)
            self._has_exemplars = True

    def _child_samples(self) -> Iterable[Sample]:
        self._fold()
        return super()._child_samples()

    def exposition(self, openmetrics: bool) -> str:
        """This family's text, for :func:`inferwatch.metrics.exposition.render_exposition`."""
        if metrics._use_created or self._unit:  # lines only the stock encoder writes
            return families_text(self.collect(), openmetrics)
        children: list[tuple[Any, Any]] = [((), self)]
        if self._labelnames:
            with self._lock:
                children = list(self._metrics.items())
        series: list[HistogramSeries] = []
        for values, child in children:
            child._fold()
            exemplars = child._exemplar_of if openmetrics and child._has_exemplars else ()
            series.append((dict(zip(self._labelnames, values, strict=True)),
                           cumulative(b.get() for b in child._buckets), child._sum.get(),
                           exemplars))
        bounds = [floatToGoString(b) for b in self._upper_bounds]
        return histogram_text(self._name, self._documentation, bounds, series, openmetrics)


def _valid_exemplar(exemplar: Mapping[str, str]) -> bool:
    try:
        _check_exemplar(exemplar)
    except ValueError:
        return False
    return True


def _check_exemplar(exemplar: Mapping[str, str]) -> None:
    """Raise what the stock ``observe`` raises for an exemplar OpenMetrics cannot carry."""
    runes = 0
    for name, value in exemplar.items():
        if name not in _USUAL_NAMES and (not _LABEL.fullmatch(name) or name.startswith("__")):
            raise ValueError(f"invalid exemplar label name: {name!r}")
        runes += len(name) + len(value)
    if runes > _MAX_EXEMPLAR_RUNES:
        raise ValueError(f"exemplar labels have {runes} characters, over the limit of "
                         f"{_MAX_EXEMPLAR_RUNES}")
