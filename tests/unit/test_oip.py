"""The Open Inference Protocol v2 codec (serve/protocols.py), checked against Triton's own
client library's request builder and response parser, and serve's OIP routes in process."""

import gzip
import json
import tracemalloc
import zlib

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client import CollectorRegistry
from test_serve import Client, count, run_with_client

from inferwatch.models.digits import heldout_digits
from inferwatch.serve.errors import InferenceError
from inferwatch.serve.protocols import (
    MAX_ID_CHARS,
    decode_content,
    encode_infer_response,
    parse_infer_request,
)

OUTPUTS = ("probabilities", "label")
LIMIT = 4 * 1024 * 1024


def triton_body(values: np.ndarray, binary: bool, datatype: str = "FP32",
                outputs: list[triton.InferRequestedOutput] | None = None,
                request_id: str = "") -> tuple[bytes, str | None]:
    """A request body as tritonclient sends it, and its Inference-Header-Content-Length."""
    tensor = triton.InferInput("input-0", list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id=request_id)
    return body, None if json_size is None else str(json_size)


def refused(reason: str, body: bytes, header_length: str | None = None) -> str:
    with pytest.raises(InferenceError) as error:
        parse_infer_request(body, header_length, OUTPUTS)
    assert error.value.reason == reason, str(error.value)
    return str(error.value)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "INT64", "UINT8"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_request_parses_to_its_tensor(datatype: str, binary: bool) -> None:
    values = (np.arange(2 * 64) % 17).reshape(2, 64).astype(triton.triton_to_np_dtype(datatype))
    body, header_length = triton_body(values, binary, datatype, request_id="req #1")
    asked = parse_infer_request(body, header_length, OUTPUTS)
    assert (header_length is not None) == binary
    assert asked.values.dtype == np.float32 and asked.values.shape == (2, 64)
    assert (asked.values == values.astype(np.float32)).all()
    assert asked.id == "req #1"
    # tritonclient asks for every output as binary data when it names none.
    assert asked.outputs == {"probabilities": True, "label": True}


def test_requested_outputs_and_their_binary_flags_are_kept_in_order() -> None:
    values = np.ones((1, 64), np.float32)
    body, header_length = triton_body(values, True, outputs=[
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities")])
    asked = parse_infer_request(body, header_length, OUTPUTS)
    assert list(asked.outputs or {}) == ["label", "probabilities"]
    assert asked.outputs == {"label": False, "probabilities": True}
    plain = json.dumps({"inputs": [{"shape": [1], "data": [1]}]}).encode()
    assert parse_infer_request(plain, None, OUTPUTS).outputs is None  # all, in JSON


def test_unknown_or_odd_outputs_are_refused_with_a_reason() -> None:
    values = np.ones((1, 64), np.float32)
    body, header_length = triton_body(values, False, outputs=[
        triton.InferRequestedOutput("logits")])
    assert "'logits'" in refused("unknown_output", body, header_length)
    body, _ = triton_body(values, False, outputs=[
        triton.InferRequestedOutput("probabilities", class_count=3)])
    assert "classification" in refused("bad_request", body)
    tensor = {"shape": [1], "data": [1]}
    for outputs in ({"name": "label"}, [{"nom": "label"}], ["label"]):
        refused("invalid_json", json.dumps({"inputs": [tensor], "outputs": outputs}).encode())
    refused("invalid_json", json.dumps({"inputs": [tensor], "parameters": [1]}).encode())


def test_request_id_is_kept_as_sent_or_refused_when_absurd() -> None:
    def body(request_id: object) -> bytes:
        return json.dumps({"id": request_id, "inputs": [{"shape": [1], "data": [1]}]}).encode()

    for kept in ("", "caf\u00e9 #1\n", "x" * MAX_ID_CHARS):
        assert parse_infer_request(body(kept), None, OUTPUTS).id == kept
    for absurd in ("x" * (MAX_ID_CHARS + 1), 7, ["a"], "\ud800"):  # no answer can carry a
        assert "id must be" in refused("invalid_json", body(absurd))  # lone surrogate


def test_binary_framing_errors_are_400s_and_size_errors_422s() -> None:
    values = np.ones((1, 64), np.float32)
    body, header_length = triton_body(values, True)
    assert header_length is not None
    size = int(header_length)
    for bad in ("0", str(len(body) + 1), "-5", "12a", "\u00b2", "", "9" * 5000):
        assert "Inference-Header-Content-Length" in refused("bad_request", body, bad)
    assert "binary_data_size is 256, but 255" in refused("bad_request", body[:-1], header_length)
    header = json.loads(body[:size])
    header["inputs"][0].pop("parameters")
    plain = json.dumps(header).encode()
    assert "no input has" in refused("bad_request", plain + body[size:], str(len(plain)))
    header["inputs"][0]["parameters"] = {"binary_data_size": 6}
    odd = json.dumps(header).encode()
    assert "no whole number" in refused("invalid_shape", odd + b"\0" * 6, str(len(odd)))
    header["inputs"][0]["parameters"] = {"binary_data_size": 128}
    short = json.dumps(header).encode()
    assert "32 values, shape [1, 64] needs 64" in refused("invalid_shape", short + b"\0" * 128,
                                                         str(len(short)))
    header["inputs"][0].update(data=[1] * 64, parameters={"binary_data_size": 256})
    both = json.dumps(header).encode()
    refused("invalid_json", both + body[size:], str(len(both)))


def test_compressed_bodies_are_decompressed_within_the_limit() -> None:
    body = json.dumps({"inputs": [{"shape": [1], "data": [1]}]}).encode()
    assert decode_content(gzip.compress(body), "gzip", LIMIT) == body
    assert decode_content(gzip.compress(body), " GZIP", LIMIT) == body
    assert decode_content(zlib.compress(body), "deflate", LIMIT) == body
    assert decode_content(body, "identity", LIMIT) == body
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 KiB that holds 64 MiB
    for encoding, data in (("gzip", bomb), ("deflate", zlib.compress(b"\0" * (LIMIT + 1)))):
        tracemalloc.start()
        try:
            with pytest.raises(InferenceError) as error:
                decode_content(data, encoding, LIMIT)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert error.value.reason == "body_too_large" and error.value.status == 413
        assert peak < 3 * LIMIT, peak  # never the whole 64 MiB
    assert decode_content(zlib.compress(b"\0" * LIMIT), "deflate", LIMIT) == b"\0" * LIMIT
    for encoding, data, reason in (
            ("gzip", body, "bad_request"),  # not compressed
            ("gzip", gzip.compress(body)[:-5], "bad_request"),  # truncated
            ("deflate", zlib.compress(body) + b"x", "bad_request"),
            # Each member would copy the rest again: 4 MB of empty ones, 30 s of one core.
            ("gzip", gzip.compress(body) + gzip.compress(b"") * 200_000, "bad_request"),
            ("br", body, "unsupported_media_type"),
            ("gzip, br", body, "unsupported_media_type")):
        with pytest.raises(InferenceError) as error:
            decode_content(data, encoding, LIMIT)
        assert error.value.reason == reason, (encoding, str(error.value))


@pytest.mark.parametrize("binary", [{}, {"label": True}, {"probabilities": True, "label": True}])
def test_answers_read_back_by_tritonclient(binary: dict[str, bool]) -> None:
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    labels = np.array([1, 0], np.int64)
    outputs = []
    for name, datatype, values in (("probabilities", "FP32", probs), ("label", "INT64", labels)):
        output = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        if binary.get(name):
            outputs.append((output, values.tobytes()))
        else:
            outputs.append(({**output, "data": values.ravel().tolist()}, None))
    response = encode_infer_response({"model_name": "m", "model_version": "1",
                                      "id": "caf\u00e9"}, outputs)
    header_length = response.headers.get("inference-header-content-length")
    assert (header_length is not None) == bool(binary)
    result = triton.InferenceServerClient.parse_response_body(
        response.body, header_length=None if header_length is None else int(header_length))
    assert result.get_response()["id"] == "caf\u00e9"
    assert (result.as_numpy("probabilities") == probs).all()
    assert (result.as_numpy("label") == labels).all()


def test_server_metadata_model_readiness_and_liveness() -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        server = (await c.get("/v2")).json()
        assert server["name"] == "inferwatch" and server["version"]
        assert server["extensions"] == ["binary_tensor_data"]
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}
        for path in ("/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"):
            r = await c.get(path)
            assert (r.status_code, r.json()) == (200, {"name": "digits", "ready": True}), path
        versioned = await c.get("/v2/models/digits/versions/1")
        assert versioned.json() == (await c.get("/v2/models/digits")).json()
        for path in ("/v2/models/digits/versions/2/ready", "/v2/models/nosuch/ready",
                     "/v2/models/digits/versions/2"):
            r = await c.get(path)
            assert r.status_code == 404 and r.json()["reason"] == "unknown_model", path

    run_with_client(test)


def test_v2_errors_put_the_message_in_error_and_others_keep_their_form() -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.post("/v2/models/digits/infer", content=b"{")
        assert r.status_code == 400 and set(r.json()) == {"code", "error", "reason"}
        assert r.json()["reason"] == "invalid_json" and r.json()["code"] == 400
        assert r.json()["error"].startswith("invalid JSON")
        r = await c.get("/v2/nothing/here")
        assert r.status_code == 404 and r.json()["reason"] == "not_found"
        r = await c.post("/predictions/digits", content=b"x", headers={"content-type": "a/b"})
        assert r.status_code == 400 and set(r.json()) == {"code", "error", "message"}
        assert r.json()["error"] == "invalid_image"

    run_with_client(test)


def test_outputs_asked_for_are_the_outputs_answered() -> None:
    images = heldout_digits().images[:2].reshape(2, 64).astype(np.float32)

    async def test(c: Client, reg: CollectorRegistry) -> None:
        body = {"inputs": [{"name": "input-0", "shape": [2, 64], "datatype": "FP32",
                            "data": images.ravel().tolist()}]}
        everything = (await c.post("/v2/models/digits/infer", json=body)).json()
        assert [o["name"] for o in everything["outputs"]] == ["probabilities", "label"]
        r = await c.post("/v2/models/digits/infer", json={**body, "outputs": [{"name": "label"}]})
        assert r.status_code == 200 and r.json()["outputs"] == [everything["outputs"][1]]
        r = await c.post("/v2/models/digits/infer", json={**body, "outputs": [{"name": "x"}]})
        assert r.status_code == 400 and r.json()["reason"] == "unknown_output"
        assert count(reg, "inference_error_reasons_total", reason="unknown_output") == 1
        assert count(reg, "inference_requests_total") == 3

    run_with_client(test)


def test_binary_and_compressed_requests_get_the_same_answer() -> None:
    images = heldout_digits().images[:3].reshape(3, 64).astype(np.float32)

    async def test(c: Client, reg: CollectorRegistry) -> None:
        plain, _ = triton_body(images, False, outputs=[
            triton.InferRequestedOutput("label", binary_data=False)])
        expected = (await c.post("/v2/models/digits/infer", content=plain)).json()["outputs"]
        body, header_length = triton_body(images, True)
        assert header_length is not None
        for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                               (None, body)):
            headers = {"Inference-Header-Content-Length": header_length}
            if encoding:
                headers["Content-Encoding"] = encoding
            r = await c.post("/v2/models/digits/infer", content=data, headers=headers)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/octet-stream"
            result = triton.InferenceServerClient.parse_response_body(
                r.content, header_length=int(r.headers["inference-header-content-length"]))
            assert result.as_numpy("label").tolist() == expected[0]["data"]
            assert result.as_numpy("probabilities").shape == (3, 10)
        bomb = gzip.compress(b" " * (5 * 1024 * 1024))
        r = await c.post("/v2/models/digits/infer", content=bomb,
                         headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and r.json()["reason"] == "body_too_large"
        r = await c.post("/v2/models/digits/infer", content=body,
                         headers={"Content-Encoding": "br"})
        assert r.status_code == 415 and r.json()["reason"] == "unsupported_media_type"

    run_with_client(test)


def test_request_id_is_echoed_and_feedback_takes_the_id_in_x_request_id() -> None:
    image = heldout_digits().images[0].ravel().tolist()

    async def test(c: Client, reg: CollectorRegistry) -> None:
        def body(request_id: str) -> dict[str, object]:
            return {"id": request_id, "inputs": [{"shape": [1, 64], "data": image}]}

        safe = await c.post("/v2/models/digits/infer", json=body("req-1"))
        assert safe.json()["id"] == "req-1" and "x-request-id" not in safe.headers
        spaced = await c.post("/v2/models/digits/infer", json=body("my request #1"))
        assert spaced.json()["id"] == "my request #1"
        drawn = spaced.headers["x-request-id"]
        assert len(drawn) == 16
        scored = await c.post("/feedback", json={"request_id": drawn, "label": 0})
        assert scored.status_code == 200, scored.text
        huge = await c.post("/v2/models/digits/infer", json=body("x" * 100_000))
        assert huge.status_code == 400 and huge.json()["reason"] == "invalid_json"
        assert len(huge.text) < 200

    run_with_client(test)
