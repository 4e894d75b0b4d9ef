"""What the server needs from a model: decode one input, predict a batch."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from inferwatch.metrics.quality import QualityReference


class InputError(ValueError):
    """The client sent an input this model cannot use; ``reason`` is a bounded label value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes) -> Image.Image:
    if not data:
        raise InputError("empty_body", "the request body is empty")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError("invalid_image", f"cannot decode the image: {exc}") from None
    return image


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    runtime: str
    input_shape: tuple[int, ...]
    labels: tuple[str, ...]
    load_seconds: float
    heldout_accuracy: float | None = None
    input_range: tuple[float, float] | None = None  # value range of one input, for drift drills


class ServedModel(ABC):
    """A model served by ``inferwatch serve``.

    ``predict_proba`` is called from one worker thread per model with a batch stacked from
    several requests; it must not keep per-request state.
    """

    card: ModelCard
    max_batch_size: int = 32
    quality_reference: QualityReference | None = None

    def features(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """Per-sample input statistics watched for drift; keys match the reference."""
        return {}

    @abstractmethod
    def from_image(self, image: Image.Image) -> np.ndarray:
        """One sample of shape ``card.input_shape`` from a decoded image."""

    @abstractmethod
    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities of shape ``(len(batch), len(card.labels))``."""

    def from_tensor(self, values: np.ndarray) -> np.ndarray:
        """Samples from a client tensor of shape ``(n, *input_shape)`` or ``(n, prod(shape))``."""
        shape = self.card.input_shape
        size = int(np.prod(shape))
        if values.ndim >= 1 and values.size % size == 0 and values.size > 0:
            n = values.size // size
            if values.shape in ((n, *shape), (n, size), shape, (size,)):
                if not np.isfinite(values).all():
                    raise InputError("invalid_shape", "the tensor holds NaN or infinite values")
                return values.reshape((n, *shape)).astype(np.float32, copy=False)
        raise InputError(
            "invalid_shape",
            f"expected shape [n, {', '.join(map(str, shape))}] or [n, {size}], "
            f"got {list(values.shape)}",
        )
