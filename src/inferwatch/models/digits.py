"""The embedded default model: a small MLP trained on scikit-learn's bundled 8x8 digits.

Training is deterministic (fixed split and seed) and takes a couple of seconds; the weights
are cached, so later starts only load them. Inference is two matrix products in numpy,
which ``bench/runtime.py`` measured against scikit-learn's own ``predict_proba``.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inferwatch.metrics.quality import FeatureReference, QualityReference
from inferwatch.models.base import InputError, ModelCard, ServedModel

TRAINING_RECIPE = "mlp-64-relu-adam-seed0-split25-v3"
VERSION = "1"


def cache_dir() -> Path:
    root = os.environ.get("INFERWATCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inferwatch"
    )
    return Path(root)


@dataclass(frozen=True)
class DigitsData:
    """The held-out split, also used by the load generator to send real labelled digits."""

    images: np.ndarray  # (n, 8, 8) float32, 0..16, ink is bright
    labels: np.ndarray  # (n,) int64


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    return x_train, x_test, y_train, y_test


def heldout_digits() -> DigitsData:
    _, x_test, _, y_test = _split()
    return DigitsData(x_test, y_test)


def train_classifier() -> Any:
    """The fitted scikit-learn MLP (inputs scaled to 0..1) that ``train_weights`` exports."""
    from sklearn.neural_network import MLPClassifier

    x_train, _, y_train, _ = _split()
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0, alpha=1e-3)
    return clf.fit(x_train.reshape(len(x_train), -1) / 16.0, y_train)


def train_weights() -> dict[str, np.ndarray]:
    _, x_test, _, y_test = _split()
    clf = train_classifier()
    weights = {
        "w1": clf.coefs_[0].astype(np.float32),
        "b1": clf.intercepts_[0].astype(np.float32),
        "w2": clf.coefs_[1].astype(np.float32),
        "b2": clf.intercepts_[1].astype(np.float32),
    }
    probs = _forward(weights, x_test.reshape(len(x_test), -1) / 16.0)
    weights["heldout_accuracy"] = np.array(float((probs.argmax(1) == y_test).mean()))
    # The training distribution that live inputs are compared with (drift).
    x_train = _split()[0]
    for name, values in digit_features(x_train).items():
        ref = FeatureReference.from_samples(values)
        weights[f"ref_{name}_edges"], weights[f"ref_{name}_shares"] = ref.edges, ref.shares
    train_pred = _forward(weights, x_train.reshape(len(x_train), -1) / 16.0).argmax(1)
    weights["ref_class_shares"] = np.bincount(train_pred, minlength=10) / len(train_pred)
    return weights


def digit_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean intensity, share of inked pixels, and share of the ink in the top half.

    Summed in float64 from the raw 0..16 pixels and scaled after: dividing by 16 is exact,
    so the values are those of the scaled image in float64, bit for bit, without a scaled
    copy of the batch. float64 also holds the sum of 64 pixels near float32's limit, which
    a client may send: the features stay finite.
    """
    raw = images.reshape(len(images), 8, 8)
    ink = raw.sum(axis=(1, 2), dtype=np.float64) / 16.0
    top = raw[:, :4].sum(axis=(1, 2), dtype=np.float64) / 16.0
    return {
        "mean_intensity": ink / 64,
        # Between the integer levels 7 and 8: PNG's 8-bit round trip moves no pixel across.
        "ink_fraction": np.count_nonzero(raw > 7.5, axis=(1, 2)) / 64,
        "top_half_ink": top / np.maximum(ink, 1e-9),
    }


def _reference(weights: dict[str, np.ndarray]) -> QualityReference:
    names = [k[4:-6] for k in weights if k.startswith("ref_") and k.endswith("_edges")]
    return QualityReference(
        {n: FeatureReference(weights[f"ref_{n}_edges"], weights[f"ref_{n}_shares"])
         for n in names},
        weights["ref_class_shares"])


def _forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    hidden = np.maximum(x @ weights["w1"] + weights["b1"], 0.0)
    logits = hidden @ weights["w2"] + weights["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def load_weights(directory: Path | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Cached weights, training them first when the cache is empty. Returns (weights, trained)."""
    path = (directory or cache_dir()) / f"digits-{TRAINING_RECIPE}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}, False
    weights = train_weights()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **weights)  # type: ignore[arg-type]
    tmp.replace(path)
    return weights, True


class DigitsModel(ServedModel):
    """Classifies 8x8 digit images (values 0..16, bright ink on dark), like sklearn's digits."""

    max_batch_size = 64

    def __init__(self, directory: Path | None = None) -> None:
        start = time.perf_counter()
        weights, _ = load_weights(directory)
        self.quality_reference = _reference(weights)
        self._weights = {k: v for k, v in weights.items()
                         if k in ("w1", "b1", "w2", "b2")}
        self._weights["x_scale"] = np.float32(1.0 / 16.0)  # type: ignore[assignment]
        digest = hashlib.sha256(self._weights["w1"].tobytes()).hexdigest()[:8]
        self.card = ModelCard(
            name="digits",
            version=VERSION,
            runtime=f"numpy-{np.__version__}",
            input_shape=(8, 8),
            labels=tuple(str(i) for i in range(10)),
            load_seconds=time.perf_counter() - start,
            heldout_accuracy=float(weights["heldout_accuracy"]),
            input_range=(0.0, 16.0),
        )
        self.weights_digest = digest

    def from_image(self, image: Image.Image) -> np.ndarray:
        if image.width < 8 or image.height < 8:
            raise InputError("invalid_shape", "the image must be at least 8x8 pixels")
        try:
            gray = image.convert("L").resize((8, 8), Image.Resampling.BOX)
        except ValueError as exc:  # a LAB TIFF, for one: Pillow cannot make it grey
            raise InputError("invalid_image", f"cannot use the image: {exc}") from None
        return np.asarray(gray, dtype=np.float32) * (16.0 / 255.0)

    def features(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        return digit_features(samples)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(len(batch), -1) * self._weights["x_scale"]
        return _forward(self._weights, x)


def digit_png(image: np.ndarray) -> bytes:
    """PNG bytes of one 8x8 digit (0..16), as a client would send it."""
    import io

    pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
