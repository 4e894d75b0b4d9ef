"""The protocol codecs of serve/protocols.py alone, with no app, model or event loop: bodies
as TorchServe's and tritonclient's clients send them, to what the service computes on, and
its answers back to bodies those clients read; each refusal with its reason."""

import base64
import doctest
import gzip
import json

import numpy as np
import pytest
import tritonclient.http as triton

from inferwatch.serve import protocols
from inferwatch.serve.errors import InferenceError
from inferwatch.serve.protocols import (
    CLASSIFIER_OUTPUTS,
    TOP_K,
    decode_infer_request,
    decode_predictions_body,
    encode_classification,
    encode_error,
    encode_top_classes,
)

LIMIT = 64 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(24))  # the codec never opens the image
LABELS = tuple("abcdefg")


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(protocols)
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", ""])
def test_a_predictions_body_that_is_not_json_is_the_image(content_type: str) -> None:
    assert decode_predictions_body(PNG, content_type) == PNG


@pytest.mark.parametrize("content_type", ["application/json",
                                          "application/json; charset=utf-8"])
def test_a_predictions_json_body_holds_the_image_in_base64(content_type: str) -> None:
    body = json.dumps({"image_base64": base64.b64encode(PNG).decode()}).encode()
    assert decode_predictions_body(body, content_type) == PNG


@pytest.mark.parametrize(("body", "reason"), [
    (b"{", "invalid_json"),
    (b"\xff", "invalid_json"),  # not UTF-8
    (b"[" * 100_000, "invalid_json"),  # nested too deeply
    (b'["iVBORw=="]', "invalid_json"),
    (b'{"image": "iVBORw=="}', "invalid_json"),
    (b'{"image_base64": 7}', "invalid_json"),
    (b'{"image_base64": "not base64!"}', "invalid_image"),
    (b'{"image_base64": "iVBORw"}', "invalid_image"),  # unpadded
    ('{"image_base64": "\u00e9t\u00e9"}'.encode(), "invalid_image"),  # not ASCII
])
def test_a_bad_predictions_json_body_is_refused_with_its_reason(body: bytes,
                                                                 reason: str) -> None:
    with pytest.raises(InferenceError) as error:
        decode_predictions_body(body, "application/json")
    assert error.value.reason == reason and error.value.status == 400, str(error.value)


def test_predictions_answer_is_the_top_classes_most_probable_first() -> None:
    probabilities = np.array([0.01, 0.3, 0.05, 0.123456789, 0.2, 0.0, 0.316543211],
                             np.float32)
    response = encode_top_classes(LABELS, probabilities, {"X-Request-ID": "r-1"})
    answer = json.loads(response.body)
    assert list(answer) == ["g", "b", "e", "d", "c"] and len(answer) == TOP_K
    assert answer["d"] == 0.123457 and answer["g"] == 0.316543  # 6 decimals
    assert response.headers["x-request-id"] == "r-1"
    assert json.loads(encode_top_classes(("no", "yes"), np.array([0.25, 0.75])).body) == {
        "yes": 0.75, "no": 0.25}  # fewer labels than TOP_K: all of them


def triton_request(values: np.ndarray, binary: bool,
                   outputs: list[triton.InferRequestedOutput] | None = None,
                   ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A body and its raw headers as tritonclient sends them."""
    tensor = triton.InferInput("input-0", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values, binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id="req-1")
    headers = [(b"content-type", b"application/octet-stream")]
    if json_size is not None:
        headers.append((b"inference-header-content-length", str(json_size).encode()))
    return body, headers


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("encoding", [None, b"gzip"])
def test_oip_requests_json_or_binary_plain_or_gzip_decode_to_their_tensor(
        binary: bool, encoding: bytes | None) -> None:
    values = np.arange(3 * 64, dtype=np.float32).reshape(3, 64) / 7
    body, headers = triton_request(values, binary)
    if encoding is not None:
        body = gzip.compress(body)
        headers.append((b"content-encoding", encoding))
    asked = decode_infer_request(body, headers, LIMIT, CLASSIFIER_OUTPUTS)
    assert asked.values.shape == (3, 64) and (asked.values == values).all()
    assert asked.id == "req-1"
    # tritonclient asks for every output as binary data, whatever its input's form.
    assert asked.outputs == {"probabilities": True, "label": True}


def test_a_plain_json_oip_request_asks_for_every_output_in_json() -> None:
    body = b'{"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "INT64", ' \
           b'"data": [[3, 4]]}]}'
    asked = decode_infer_request(body, [(b"content-type", b"application/json")], LIMIT,
                                 CLASSIFIER_OUTPUTS)
    assert asked.values.tolist() == [[3.0, 4.0]] and asked.values.dtype == np.float32
    assert asked.id is None and asked.outputs is None


@pytest.mark.parametrize(("headers", "body", "reason", "status"), [
    ([], b"", "invalid_json", 400),
    ([], b'{"inputs": []}', "invalid_json", 400),
    ([], b'{"inputs": [{"shape": [2], "data": [1]}]}', "invalid_shape", 422),
    ([], b'{"inputs": [{"shape": [1], "data": [1]}], "outputs": [{"name": "logits"}]}',
     "unknown_output", 400),
    ([(b"content-encoding", b"br")], b"{}", "unsupported_media_type", 415),
    ([(b"content-encoding", b"gzip")], b"{}", "bad_request", 400),  # not gzip
    ([(b"content-encoding", b"gzip")], gzip.compress(b" " * (LIMIT + 1)), "body_too_large",
     413),
    ([(b"inference-header-content-length", b"99")], b"{}", "bad_request", 400),
])
def test_a_bad_oip_request_is_refused_with_its_reason(
        headers: list[tuple[bytes, bytes]], body: bytes, reason: str, status: int) -> None:
    with pytest.raises(InferenceError) as error:
        decode_infer_request(body, headers, LIMIT, CLASSIFIER_OUTPUTS)
    assert (error.value.reason, error.value.status) == (reason, status), str(error.value)


PROBS = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], np.float32)
HEAD = {"model_name": "m", "model_version": "1", "id": "caf\u00e9"}


def test_an_oip_answer_in_json_holds_every_output() -> None:
    response = encode_classification(dict(HEAD), PROBS, None)
    answer = json.loads(response.body)
    assert {k: answer[k] for k in HEAD} == HEAD
    assert [o["name"] for o in answer["outputs"]] == list(CLASSIFIER_OUTPUTS)
    probabilities, label = answer["outputs"]
    assert probabilities == {"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
                             "data": [0.1, 0.7, 0.2, 0.6, 0.3, 0.1]}
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}


@pytest.mark.parametrize("outputs", [{"label": False},
                                     {"label": True, "probabilities": False},
                                     {"probabilities": True, "label": True}])
def test_an_oip_answer_with_the_outputs_asked_reads_back_in_tritonclient(
        outputs: dict[str, bool]) -> None:
    response = encode_classification(dict(HEAD), PROBS, outputs)
    binary = any(outputs.values())
    header_length = response.headers.get("inference-header-content-length")
    assert (header_length is not None) == binary
    assert response.media_type == ("application/octet-stream" if binary else "application/json")
    result = triton.InferenceServerClient.parse_response_body(
        response.body, header_length=None if header_length is None else int(header_length))
    assert result.get_response()["id"] == "caf\u00e9"
    assert [o["name"] for o in result.get_response()["outputs"]] == list(outputs)
    assert result.as_numpy("label").tolist() == ([1, 0])
    if "probabilities" in outputs:
        assert np.allclose(result.as_numpy("probabilities"), PROBS)


def test_an_oip_error_carries_the_message_in_error_and_the_reason_beside() -> None:
    response = encode_error("overloaded", "server overloaded", 503, {"Retry-After": "1"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert json.loads(response.body) == {"code": 503, "error": "server overloaded",
                                         "reason": "overloaded"}
