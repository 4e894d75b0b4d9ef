"""Answers kept by request id, so that labelled feedback sent later can be scored.

How the store stays off the request's path (keys instead of id strings, one vectorised
scan per lookup) and what that saved: docs/quality.md#how-answers-are-kept.
"""

from __future__ import annotations

import array
import os
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Answer:
    """What a model answered: its top classes, best first, and when (``time.monotonic``)."""

    model: str
    top: tuple[int, ...]
    at: float


_NO_ID = hash(None)  # the key of a row without an id, and of an empty slot
_DRAWN_ID = re.compile(r"[0-9a-f]{16}")
_UINT64 = (1 << 64) - 1


class RequestIds:
    """Ids for requests that came without one: 16 hex digits, 64 random bits, each with its
    :func:`answer_key` (the same bits), so the store never hashes an id drawn here.

    Drawn from the OS 4,096 at a time; a forked process draws its own, never its parent's.
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

    >>> import numpy as np
    >>> store = FeedbackStore(capacity=1000)
    >>> store.defer("digits", ["req-1"], np.array([[0.1, 0.7, 0.2]]))
    >>> store.lookup("req-1").top
    (1, 2, 0)

    A ring of ``capacity`` answers kept ``ttl`` seconds, ``top_k`` classes each: feedback
    for an unknown or expired id is refused, feedback for an id counted once. Answers are
    deferred a model call at a time and stored a flush at a time (:meth:`settle`, run by
    :class:`~inferwatch.metrics.quality.QualityWorker`). Event loop thread only: no lock.
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
