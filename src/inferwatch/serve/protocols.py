"""The protocols the service speaks, as codecs that know no model and no route.

- TorchServe's ``/predictions``: a body to the image it holds, an image's class
  probabilities to the top classes.
- The Open Inference Protocol v2 (KServe v2) over HTTP: an inference request's body to a
  tensor, an answer's outputs to a body, with Triton's binary tensor data extension and
  compressed request bodies, as ``tritonclient[http]`` sends and reads them by default.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.responses import JSONResponse, Response

from inferwatch.serve.errors import InferenceError

__all__ = [
    "CLASSIFIER_OUTPUTS", "DATATYPES", "EXTENSIONS", "MAX_ID_CHARS", "TOP_K", "InferRequest",
    "decode_content", "decode_infer_request", "decode_predictions_body",
    "encode_classification", "encode_error", "encode_infer_response", "encode_top_classes",
    "parse_infer_request", "parse_json",
]

TOP_K = 5  # as TorchServe's image classifier handler answers

EXTENSIONS = ("binary_tensor_data",)
# The datatypes an input may have, as the binary extension lays them out: little-endian, no
# padding. JSON numbers are read as float32 whatever the datatype says.
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code) for name, code in (("FP32", "<f4"), ("FP64", "<f8"), ("INT32", "<i4"),
                                            ("INT64", "<i8"), ("UINT8", "u1"))}
# OIP sets no bound on an id, and an answer echoes it: a longer one is refused, not cut, so
# that an id answered is always the id sent.
MAX_ID_CHARS = 256
# A classifier's OIP outputs: every class's probability, and the most probable class.
CLASSIFIER_OUTPUTS = ("probabilities", "label")
_MAX_DIMS = 32  # numpy allows 64; no model takes more than a handful
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate: zlib-wrapped


@dataclass(slots=True)  # not frozen: a frozen one takes 2.5 times as long to make
class InferRequest:
    values: np.ndarray
    """The one input, float32, in the shape it came in."""
    id: str | None
    outputs: dict[str, bool] | None
    """Output name -> whether it is sent as binary data, in the order asked; None: every
    output, in JSON."""


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise InferenceError("invalid_json", "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # a decode error, not UTF-8, an int of over 4300 digits
        raise InferenceError("invalid_json", f"invalid JSON: {exc}") from None


def decode_predictions_body(body: bytes, content_type: str) -> bytes:
    """The image a ``/predictions`` body holds: the body itself, or under a JSON content
    type, its ``{"image_base64": ...}`` decoded.

    >>> decode_predictions_body(b'{"image_base64": "R0lGODlh"}', "application/json")
    b'GIF89a'
    """
    if not content_type.startswith("application/json"):
        return body
    payload = parse_json(body)
    encoded = payload.get("image_base64") if isinstance(payload, dict) else None
    if not isinstance(encoded, str):
        raise InferenceError("invalid_json", 'expected a JSON object {"image_base64": "..."}')
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII str
        raise InferenceError("invalid_image", "image_base64 is not valid base64") from None


def encode_top_classes(labels: Sequence[str], probabilities: np.ndarray,
                       headers: Mapping[str, str] | None = None) -> JSONResponse:
    """TorchServe's answer for one image: its ``TOP_K`` most probable labels, most probable
    first, each to its probability."""
    top = np.argsort(probabilities)[::-1][:TOP_K]
    return JSONResponse({labels[i]: round(float(probabilities[i]), 6) for i in top},
                        headers=headers)


def decode_infer_request(body: bytes, headers: Iterable[tuple[bytes, bytes]], limit: int,
                         outputs: Collection[str]) -> InferRequest:
    """An inference request as sent, its raw ASGI ``headers`` with it: ``body`` decompressed
    to at most ``limit`` bytes as its Content-Encoding says, then parsed with its
    Inference-Header-Content-Length (:func:`parse_infer_request`)."""
    # One pass over the raw headers: Headers.get raises and catches a KeyError for each
    # absent one, 1 us a request for these two, which plain JSON requests never send.
    encoding = header_length = None
    for key, value in headers:
        if key == b"content-encoding":
            encoding = value.decode("latin-1")
        elif key == b"inference-header-content-length":
            header_length = value.decode("latin-1")
    if encoding is not None:
        body = decode_content(body, encoding, limit)
    return parse_infer_request(body, header_length, outputs)


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` as sent with ``Content-Encoding: encoding``, decompressed to at most ``limit``
    bytes: a few kilobytes of gzip may hold gigabytes of zeros.

    >>> decode_content(zlib.compress(b"{}"), "deflate", 2)
    b'{}'
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InferenceError("unsupported_media_type", f"Content-Encoding {encoding[:32]!r} "
                                                       "is not supported: use gzip or deflate")
    # One member only (clients send one): each further member would copy the rest of the
    # body again, and empty ones add nothing to the output's cap, so thousands of them cost
    # time quadratic in the body's size on the event loop.
    stream = zlib.decompressobj(wbits)
    try:
        out = stream.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InferenceError("bad_request", f"the {encoding} body is corrupt: {exc}") from None
    if len(out) > limit:
        raise InferenceError("body_too_large", f"the {encoding} body decompresses to over "
                                               f"{limit} bytes")
    if not stream.eof:
        raise InferenceError("bad_request", f"the {encoding} body is truncated")
    if stream.unused_data:
        raise InferenceError("bad_request", f"data after the end of the {encoding} body: one "
                                            f"{encoding} member only")
    return out


def parse_infer_request(body: bytes, header_length: str | None,
                        outputs: Collection[str]) -> InferRequest:
    """An inference request for a model of one input and ``outputs``. With
    ``header_length`` (its Inference-Header-Content-Length), ``body`` is that many bytes of
    JSON, then the input's binary data."""
    tail = b""
    if header_length is not None:
        # int() of over 4300 digits raises; a body is never over 18 digits long
        size = int(header_length) if header_length.isascii() and header_length.isdigit() \
            and len(header_length) < 19 else -1
        if not 0 < size <= len(body):
            raise InferenceError("bad_request", f"Inference-Header-Content-Length "
                                                f"{header_length[:32]!r} is not a size within "
                                                f"the body's {len(body)} bytes")
        body, tail = body[:size], body[size:]
    payload = parse_json(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) \
            or len(payload["inputs"]) != 1 or not isinstance(payload["inputs"][0], dict):
        raise InferenceError("invalid_json", 'expected {"inputs": [{"shape": ..., "data": ...}]}')
    request_id = payload.get("id")
    if request_id is not None and not _echoable(request_id):
        raise InferenceError("invalid_json", f"id must be a string of at most {MAX_ID_CHARS} "
                                             "characters, in UTF-8")
    return InferRequest(_input_values(payload["inputs"][0], tail), request_id,
                        _outputs(payload, outputs))


def _echoable(request_id: Any) -> bool:
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS:
        return False
    if request_id.isascii():
        return True
    try:
        request_id.encode()
    except UnicodeEncodeError:  # JSON's "\ud800" is a str that no answer can carry
        return False
    return True


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InferenceError("invalid_json", f"{where}.parameters must be an object")
    return value


def _input_values(tensor: dict[str, Any], tail: bytes) -> np.ndarray:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not 0 < len(shape) <= _MAX_DIMS or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise InferenceError("invalid_shape", f"inputs[0].shape must be a list of 1 to "
                                              f"{_MAX_DIMS} positive ints")
    datatype = tensor.get("datatype", "FP32")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        # Not echoed whole: it may be megabytes, or a list nested too deep for repr.
        raise InferenceError("invalid_shape", "unsupported datatype " + (
            repr(datatype[:32]) if isinstance(datatype, str) else type(datatype).__name__))
    parameters = tensor.get("parameters")
    size = None if parameters is None else _parameters(parameters, "inputs[0]").get(
        "binary_data_size")
    if size is None:
        if tail:
            raise InferenceError("bad_request", f"{len(tail)} bytes follow the JSON header, "
                                                "but no input has a binary_data_size")
        try:
            with np.errstate(over="ignore"):  # a float beyond float32 becomes inf, refused later
                values = np.asarray(tensor.get("data"), dtype=np.float32)
        except (TypeError, ValueError, OverflowError):  # an int beyond float64 overflows
            raise InferenceError("invalid_shape", "inputs[0].data must hold numbers") from None
    else:
        if not isinstance(size, int) or isinstance(size, bool) or "data" in tensor:
            raise InferenceError("invalid_json", "inputs[0] needs either data or an int "
                                                 "parameters.binary_data_size")
        if size != len(tail):
            raise InferenceError("bad_request", f"inputs[0].parameters.binary_data_size is "
                                                f"{size}, but {len(tail)} bytes follow the "
                                                "JSON header")
        if size % dtype.itemsize:
            raise InferenceError("invalid_shape", f"{size} bytes are no whole number of "
                                                  f"{datatype} values")
        with np.errstate(over="ignore"):
            values = np.frombuffer(tail, dtype).astype(np.float32)
    # math.prod, not np.prod: int64 wraps, and [2**32, 2**32] would "need" 0 values.
    needed = math.prod(shape)
    if values.size != needed:
        raise InferenceError("invalid_shape", f"inputs[0] has {values.size} values, "
                                              f"shape {shape} needs {needed}")
    return values.reshape(shape)


def _outputs(payload: dict[str, Any], names: Collection[str]) -> dict[str, bool] | None:
    parameters, asked = payload.get("parameters"), payload.get("outputs")
    if parameters is None and asked is None:  # the plain JSON request: every output, in JSON
        return None
    binary = _parameters(parameters, "the request").get("binary_data_output")
    if not asked:
        return {name: True for name in names} if binary is True else None
    if not isinstance(asked, list):
        raise InferenceError("invalid_json", 'outputs must be a list of {"name": ...}')
    outputs = {}
    for output in asked:
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str):
            raise InferenceError("invalid_json", 'outputs must be a list of {"name": ...}')
        if name not in names:
            raise InferenceError("unknown_output", f"no output {name[:64]!r}; outputs: "
                                                   f"{', '.join(names)}")
        parameters = _parameters(output.get("parameters"), "outputs[]")
        if parameters.get("classification"):
            raise InferenceError("bad_request", "the classification extension is not "
                                                "supported: ask for the probabilities")
        outputs[name] = parameters.get("binary_data", binary) is True
    return outputs


def encode_infer_response(head: Mapping[str, Any],
                          outputs: Sequence[tuple[dict[str, Any], bytes | None]]) -> Response:
    """The answer: ``head`` (model_name, model_version, id) and ``outputs``, each an output's
    JSON object, with its data, or without and its binary data."""
    listed, tails = [], []
    for output, data in outputs:
        if data is not None:
            output["parameters"] = {"binary_data_size": len(data)}
            tails.append(data)
        listed.append(output)
    body = {**head, "outputs": listed}
    if not tails:
        return JSONResponse(body)
    header = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(b"".join([header, *tails]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def encode_classification(head: dict[str, Any], probabilities: np.ndarray,
                          outputs: dict[str, bool] | None) -> Response:
    """A classifier's answer (``CLASSIFIER_OUTPUTS``) to the ``outputs`` asked
    (:attr:`InferRequest.outputs`): ``head`` and, for a batch's ``probabilities``, each output
    in JSON or as binary data."""
    if outputs is None:  # every output in JSON: 1 us less than the general path
        head["outputs"] = [_classifier_output(name, probabilities, False)[0]
                           for name in CLASSIFIER_OUTPUTS]
        return JSONResponse(head)
    return encode_infer_response(head, [_classifier_output(name, probabilities, binary)
                                        for name, binary in outputs.items()])


def _classifier_output(name: str, probs: np.ndarray, binary: bool
                       ) -> tuple[dict[str, Any], bytes | None]:
    """Output ``name`` of the answer ``probs``: its JSON object, with its data unless it is
    sent as binary data, and that."""
    if name == "probabilities":
        output: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(probs.shape)}
        if binary:
            return output, probs.astype(DATATYPES["FP32"]).tobytes()
        output["data"] = [round(float(v), 6) for v in probs.ravel()]
    else:
        labels = probs.argmax(axis=1)
        output = {"name": name, "datatype": "INT64", "shape": [len(probs)]}
        if binary:
            return output, labels.astype(DATATYPES["INT64"]).tobytes()
        output["data"] = [int(i) for i in labels]
    return output, None


def encode_error(reason: str, message: str, status: int,
                 headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An OIP error: the message in ``error``, as OIP clients show it; the reason beside."""
    return JSONResponse({"code": status, "error": message, "reason": reason}, status,
                        headers=headers)
