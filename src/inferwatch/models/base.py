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


# Raster formats only: Pillow would otherwise also open EPS (through Ghostscript, when
# installed) and dozens of rarely used decoders on anything a client sends.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The image with only its header read, refused beyond ``max_pixels`` pixels: decoding
    it (``load``) costs its width times height, whatever the size of ``data`` (a 688 KB PNG
    of zeros declares 13300x13300 RGBA, 0.7 GB)."""
    if not data:
        raise InputError("empty_body", "the request body is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # beyond Pillow's own limit, 179 Mpx
        raise InputError("image_too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError):
        # Pillow's own text names the BytesIO object and its heap address: not for clients.
        raise InputError("invalid_image", "cannot decode the image: not a "
                         f"{', '.join(IMAGE_FORMATS)} image") from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise InputError("image_too_large", f"the image has {image.width}x{image.height} "
                                            f"pixels, more than the {max_pixels} allowed")
    return image


def load_image(image: Image.Image) -> Image.Image:
    """``image`` (from :func:`open_image`) with its pixels decoded."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise InputError("image_too_large", str(exc)) from None
    except (OSError, ValueError):
        raise InputError("invalid_image", "cannot decode the image: its data is truncated "
                         "or corrupt") from None
    return image


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    return load_image(open_image(data, max_pixels))


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
                # Checked after the cast: a finite float64 above float32's range becomes inf.
                with np.errstate(over="ignore", invalid="ignore"):
                    samples = values.reshape((n, *shape)).astype(np.float32, copy=False)
                if not np.isfinite(samples).all():
                    raise InputError(
                        "invalid_shape",
                        "the tensor holds NaN, infinite or beyond-float32 values")
                return samples
        raise InputError(
            "invalid_shape",
            f"expected shape [n, {', '.join(map(str, shape))}] or [n, {size}], "
            f"got {list(values.shape)}",
        )
