"""``inferwatch batch``: score a folder of images, or the held-out digits, once, and push the
job's figures to a Pushgateway.

The model runs in this process (no service needed), in batches of the model's own size.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferwatch.metrics.batch_job import BatchJobMetrics
from inferwatch.models import InputError, ServedModel, decode_image

__all__ = ["DIGITS", "BatchInput", "BatchResult", "read_inputs", "run_batch"]

DIGITS = "digits"
"""The ``--input`` value that names the held-out split of scikit-learn's digits."""


@dataclass(frozen=True)
class BatchInput:
    name: str
    data: bytes | None = None  # an encoded image file
    sample: np.ndarray | None = None  # or a decoded sample
    label: int | None = None  # the true class, when known


@dataclass
class BatchResult:
    items: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    correct: int = 0
    labelled: int = 0
    duration: float = 0.0
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def succeeded(self, max_failure_ratio: float) -> bool:
        return self.items > 0 and self.failed <= max_failure_ratio * self.items


def read_inputs(source: str) -> list[BatchInput]:
    """``digits`` (the held-out split) or a directory, whose regular files are read in name
    order; a file that is no image counts as a failed input."""
    if source == DIGITS:
        from inferwatch.models.digits import heldout_digits

        data = heldout_digits()
        return [BatchInput(f"digits/{i}", sample=image, label=int(label))
                for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True))]
    directory = Path(source)
    if not directory.is_dir():
        raise ValueError(f"--input must be {DIGITS!r} or a directory, got {source!r}")
    return [BatchInput(path.name, data=path.read_bytes())
            for path in sorted(directory.iterdir())
            if path.is_file() and not path.name.startswith(".")]


def run_batch(model: ServedModel, inputs: Sequence[BatchInput],
              metrics: BatchJobMetrics) -> BatchResult:
    started = time.perf_counter()
    result = BatchResult(items=len(inputs))
    metrics.items.inc(len(inputs))
    ready: list[tuple[BatchInput, np.ndarray]] = []
    for item in inputs:
        try:
            sample = item.sample if item.sample is not None else model.from_image(
                decode_image(item.data or b""))
        except InputError as exc:
            result.failures[exc.reason] = result.failures.get(exc.reason, 0) + 1
            metrics.record_failure(exc.reason)
            continue
        ready.append((item, sample))
    for chunk in _chunks(ready, model.max_batch_size):
        probs = model.predict_proba(np.stack([sample for _, sample in chunk]))
        for (item, _), p in zip(chunk, probs, strict=True):
            top = int(p.argmax())
            result.predictions.append({"input": item.name, "label": model.card.labels[top],
                                       "confidence": round(float(p[top]), 6)})
            if item.label is not None:
                result.labelled += 1
                result.correct += int(top == item.label)
    result.duration = time.perf_counter() - started
    return result


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
