"""Models served by ``inferwatch serve``."""

from __future__ import annotations

from pathlib import Path

from inferwatch.extras import require

require("serve", "sklearn", "PIL")

from inferwatch.models.base import (
    InputError,
    ModelCard,
    ServedModel,
    decode_image,
    load_image,
    open_image,
)

MODEL_NAMES = ("digits", "resnet18")

__all__ = ["MODEL_NAMES", "InputError", "ModelCard", "ServedModel", "decode_image", "load_image",
           "load_model", "open_image"]


def load_model(name: str, *, resnet18_weights: Path | None = None) -> ServedModel:
    """Load one of the built-in models by name."""
    if name == "digits":
        from inferwatch.models.digits import DigitsModel

        return DigitsModel()
    if name == "resnet18":
        from inferwatch.models.resnet import ResNet18Model

        return ResNet18Model(resnet18_weights)
    raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(MODEL_NAMES)}")
