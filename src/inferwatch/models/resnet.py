"""ResNet-18 on ImageNet, served with torch (an optional extra: ``inferwatch[torch]``).

The network is written here in plain torch with torchvision's parameter names, so the
official ``resnet18-f37072fd.pth`` loads with ``strict=True`` and torchvision itself, which
is broken beside the pinned torch, is not needed. torch is imported only when a model is
built, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from inferwatch.models.base import InputError, ModelCard, ServedModel

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ResNet18Model", "build_resnet18"]

logger = logging.getLogger("inferwatch.models.resnet")

INSTALL_HINT = "pip install 'inferwatch[torch]'"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE = 256
CROP = 224
MIN_SIDE = 16


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the resnet18 model needs torch: {INSTALL_HINT}") from exc


def build_resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision's ``resnet18`` architecture: same layers, same state_dict keys."""
    _require_torch()
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample: nn.Module | None = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    def stage(inplanes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1))

    # A Sequential with torchvision's child names: ReLU, pooling and Flatten hold no state,
    # so the keys are exactly those of torchvision's ResNet class.
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 64, 7, 2, padding=3, bias=False),
            bn1=nn.BatchNorm2d(64),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool2d(3, 2, padding=1),
            layer1=stage(64, 64, 1),
            layer2=stage(64, 128, 2),
            layer3=stage(128, 256, 2),
            layer4=stage(256, 512, 2),
            avgpool=nn.AdaptiveAvgPool2d((1, 1)),
            flatten=nn.Flatten(1),
            fc=nn.Linear(512, num_classes),
        )
    )
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ResNet18Model(ServedModel):
    """Classifies RGB images into the 1000 ImageNet classes (labels are class indices).

    >>> model = ResNet18Model("resnet18-f37072fd.pth")  # torchvision's official weights
    >>> model.predict_proba(model.from_image(image)[None]).argmax()
    """

    max_batch_size = 16

    def __init__(self, weights: str | Path | None = None, device: str | None = None) -> None:
        _require_torch()
        import torch

        start = time.perf_counter()
        threads = os.environ.get("INFERWATCH_TORCH_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if weights is None:
            logger.warning(
                "resnet18 has no weights: serving a randomly initialised network, its "
                "predictions are MEANINGLESS. Pass torchvision's official weight file with "
                "--resnet18-weights PATH (resnet18-f37072fd.pth)."
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = build_resnet18()
            version = "random-init"
        else:
            path = Path(weights)
            net = build_resnet18()
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            version = f"imagenet-{_file_sha256(path)[:8]}"
        self._net = net.to(device).eval()
        self._device = torch.device(device)
        self.card = ModelCard(
            name="resnet18",
            version=version,
            runtime=f"torch-{torch.__version__}-{device}",
            input_shape=(3, CROP, CROP),
            labels=tuple(f"class_{i}" for i in range(1000)),
            load_seconds=time.perf_counter() - start,
            heldout_accuracy=None,
        )

    def from_image(self, image: Image.Image) -> np.ndarray:
        if image.width < MIN_SIDE or image.height < MIN_SIDE:
            raise InputError(
                "invalid_shape", f"the image must be at least {MIN_SIDE}x{MIN_SIDE} pixels"
            )
        rgb = image.convert("RGB")
        # Same arithmetic as torchvision's Resize(256) and CenterCrop(224).
        short, long = sorted((rgb.width, rgb.height))
        scaled = int(RESIZE * long / short)
        size = (RESIZE, scaled) if rgb.width <= rgb.height else (scaled, RESIZE)
        resized = rgb.resize(size, Image.Resampling.BILINEAR)
        left = round((resized.width - CROP) / 2)
        top = round((resized.height - CROP) / 2)
        cropped = resized.crop((left, top, left + CROP, top + CROP))
        pixels = np.asarray(cropped, dtype=np.float32) * np.float32(1.0 / 255.0)
        return np.ascontiguousarray(((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
        with torch.inference_mode():
            probs = torch.softmax(self._net(x), dim=1)
        return probs.float().cpu().numpy()
