"""Triton's own Open Inference Protocol v2 client, ``tritonclient[http]``, against `inferwatch
serve` and against `inferwatch proxy` in front of it, both real processes: health, metadata,
inference in JSON and binary tensors, compressed, with the outputs and ids it asks for, and
every request counted once."""

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from processes import Samples, process, scrape
from servers import free_port
from tritonclient.utils import InferenceServerException

from inferwatch.models import load_model
from inferwatch.models.digits import heldout_digits

pytestmark = pytest.mark.integration
VIA = ["serve", "proxy"]


@dataclass
class Served:
    serve: str  # host:port, as tritonclient takes it
    proxy: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    serve_port, proxy_port = free_port(), free_port()
    upstream = f"127.0.0.1:{serve_port}"
    log: Path = tmp_path_factory.mktemp("tritonclient") / "processes.log"
    inferwatch = [sys.executable, "-m", "inferwatch"]
    with process([*inferwatch, "serve", "--port", str(serve_port)], f"http://{upstream}/ping",
                 log), \
            process([*inferwatch, "proxy", "--upstream", f"http://{upstream}", "--port",
                     str(proxy_port), "--model", "digits"],
                    f"http://127.0.0.1:{proxy_port}/metrics", log):
        yield Served(upstream, f"127.0.0.1:{proxy_port}")


def counted(url: str) -> Samples:
    return scrape(f"http://{url}/metrics")


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.mark.parametrize("via", VIA)
def test_health_and_metadata(served: Served, via: str) -> None:
    with triton.InferenceServerClient(getattr(served, via)) as client:
        health_and_metadata(client)


def health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2") and not client.is_model_ready("nosuch")
    server = client.get_server_metadata()
    assert server["name"] == "inferwatch" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("digits")
    assert model == client.get_model_metadata("digits", "1")
    assert model["versions"] == ["1"] and model["inputs"][0]["shape"] == [-1, 8, 8]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nosuch")
    assert unknown.value.status() == "404" and "is not served" in str(unknown.value.message())


@pytest.mark.parametrize("via", VIA)
def test_inference_in_every_encoding_is_right_and_counted_once(served: Served,
                                                               via: str) -> None:
    # serve's counts, and the proxy's when it is in front (it does not know the version)
    counts = {served.serve: {"model": "digits", "version": "1"}}
    if via == "proxy":
        counts[served.proxy] = {"model": "digits", "version": ""}
    before = {url: counted(url) for url in counts}
    with triton.InferenceServerClient(getattr(served, via)) as client:
        sent = infer_every_way(client)
    for url, labels in counts.items():
        after = counted(url)
        assert grew(before[url], after, "inference_requests_total", **labels) == sent, url
        assert grew(before[url], after, "inference_responses_total", code="200",
                    **labels) == sent - 1, url
        assert grew(before[url], after, "inference_responses_total", code="400",
                    **labels) == 1, url
        if url == served.serve:
            assert grew(before[url], after, "inference_error_reasons_total",
                        reason="unknown_output", **labels) == 1


def infer_every_way(client: triton.InferenceServerClient) -> int:
    """Inference in JSON and binary, compressed or not, with and without outputs and ids,
    then once for an unknown output; returns the requests sent."""
    images = heldout_digits().images[:5].reshape(5, 64).astype(np.float32)
    expected = load_model("digits").predict_proba(images.reshape(5, 8, 8))
    sent = 0
    output_choices = [None, ["label"], ["probabilities", "label"]]
    for binary, outputs, compression, request_id in itertools.product(
            [True, False], output_choices, [None, "gzip", "deflate"],
            ["", "req-7", "my request #7"]):
        tensor = triton.InferInput("input-0", [5, 64], "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary)
        asked = None if outputs is None else [
            triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
        result = client.infer("digits", [tensor], outputs=asked, request_id=request_id,
                              request_compression_algorithm=compression)
        sent += 1
        answer = result.get_response()
        names = [o["name"] for o in answer["outputs"]]
        assert names == (outputs or ["probabilities", "label"])
        if request_id:
            assert answer["id"] == request_id
        else:  # the one the service drew
            assert len(answer["id"]) == 16
        assert (result.as_numpy("label") == expected.argmax(axis=1)).all()
        if "probabilities" in names:  # 6 decimals in JSON, float32 as binary data
            assert np.allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("digits", [tensor], outputs=[triton.InferRequestedOutput("logits")])
    sent += 1
    assert unknown.value.status() == "400"
    assert "no output 'logits'" in str(unknown.value.message())  # OIP's "error": the message
    return sent
