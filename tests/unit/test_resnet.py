import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from inferwatch.models.base import InputError  # noqa: E402
from inferwatch.models.resnet import ResNet18Model, build_resnet18  # noqa: E402


@pytest.fixture(scope="module")
def model() -> ResNet18Model:
    return ResNet18Model(device="cpu")


def gradient_image(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    pixels = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def test_state_dict_has_torchvision_names_and_shapes() -> None:
    state = build_resnet18().state_dict()
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "bn1.num_batches_tracked": (),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.running_var": (64,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.bias": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.1.bn2.weight": (512,),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in state
    assert len(state) == 122
    params = sum(p.numel() for p in build_resnet18().parameters())
    assert params == 11_689_512


def test_loads_a_weight_file_strictly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)

    loaded = ResNet18Model(path, device="cpu")

    assert loaded.card.version.startswith("imagenet-")
    assert len(loaded.card.version) == len("imagenet-") + 8
    batch = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        expected = torch.softmax(source(torch.from_numpy(batch)), dim=1).numpy()
    np.testing.assert_array_equal(loaded.predict_proba(batch), expected)


def test_weight_file_with_wrong_keys_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        ResNet18Model(path, device="cpu")


def test_card(model: ResNet18Model) -> None:
    card = model.card
    assert card.name == "resnet18"
    assert card.version == "random-init"
    assert card.runtime == f"torch-{torch.__version__}-cpu"
    assert card.input_shape == (3, 224, 224)
    assert card.labels[0] == "class_0" and card.labels[-1] == "class_999"
    assert len(card.labels) == 1000
    assert card.heldout_accuracy is None
    assert card.load_seconds > 0
    assert model.max_batch_size == 16


def test_random_init_is_deterministic_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="inferwatch.models.resnet"):
        first = ResNet18Model(device="cpu")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "meaningless" in record.getMessage().lower()
    assert "--resnet18-weights PATH" in record.getMessage()
    second = ResNet18Model(device="cpu")
    for key, value in first._net.state_dict().items():
        assert torch.equal(value, second._net.state_dict()[key]), key


def test_from_image_resizes_crops_and_normalises(model: ResNet18Model) -> None:
    sample = model.from_image(gradient_image(320, 240).convert("RGBA"))
    assert sample.shape == (3, 224, 224)
    assert sample.dtype == np.float32

    white = model.from_image(Image.new("RGB", (300, 500), (255, 255, 255)))
    black = model.from_image(Image.new("L", (40, 30), 0))
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    np.testing.assert_allclose(white[:, 100, 100], (1 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(black[:, 0, 0], -mean / std, rtol=1e-6)


def test_from_image_keeps_the_centre(model: ResNet18Model) -> None:
    # A wide image: the shorter side becomes 256 and the crop is the middle 224 columns.
    pixels = np.zeros((256, 512, 3), dtype=np.uint8)
    pixels[:, 144:368] = 255
    sample = model.from_image(Image.fromarray(pixels))
    assert (sample > 0).all()


def test_small_image_is_rejected(model: ResNet18Model) -> None:
    with pytest.raises(InputError) as info:
        model.from_image(Image.new("RGB", (15, 100)))
    assert info.value.reason == "invalid_shape"
    assert model.from_image(Image.new("RGB", (16, 16))).shape == (3, 224, 224)


def test_from_tensor_rejects_non_finite(model: ResNet18Model) -> None:
    values = np.zeros((1, 3, 224, 224), dtype=np.float32)
    assert model.from_tensor(values).shape == (1, 3, 224, 224)
    values[0, 1, 2, 3] = np.nan
    with pytest.raises(InputError) as info:
        model.from_tensor(values)
    assert info.value.reason == "invalid_shape"


def test_predict_proba_batches_like_single_samples(model: ResNet18Model) -> None:
    batch = np.stack([model.from_image(gradient_image(64 + 40 * i, 80)) for i in range(3)])
    probs = model.predict_proba(batch)
    assert probs.shape == (3, 1000)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    singles = np.concatenate([model.predict_proba(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(probs, singles, rtol=1e-4, atol=1e-6)


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'inferwatch\[torch\]'"):
        ResNet18Model()


def test_import_does_not_import_torch() -> None:
    code = "import sys, inferwatch.models.resnet; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
