"""The service's HTTP API fuzzed from its own OpenAPI document: valid and invalid requests
alike get no 5xx, every 4xx carries a JSON reason, and every inference request is counted."""

import asyncio
import base64
import io
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from prometheus_client import CollectorRegistry
from schemathesis.python.asgi import shutdown_lifespans
from starlette.applications import Starlette

from inferwatch.metrics.middleware import model_from_path
from inferwatch.models import load_model
from inferwatch.serve.app import ServeConfig, _v2_samples, create_app
from inferwatch.serve.errors import InferenceError
from inferwatch.serve.openapi import openapi_document
from inferwatch.serve.protocols import CLASSIFIER_OUTPUTS, parse_infer_request

EXAMPLES = 100  # per operation and mode


def png(noise: bytes) -> bytes:
    """An image made of the fuzzer's bytes, so that decoding succeeds and the model runs."""
    side = 8 + len(noise) % 24
    pixels = (noise or b"\0") * (side * side // max(len(noise), 1) + 1)
    out = io.BytesIO()
    Image.frombytes("L", (side, side), pixels[:side * side]).save(out, "PNG")
    return out.getvalue()


def coherent(case: schemathesis.Case) -> schemathesis.Case:
    """Make a generated body one the model accepts, keeping the fuzzed values: random tensors
    rarely have as many values as their shape says, random bytes are rarely an image."""
    body = case.body
    if case.path.endswith("/infer") and isinstance(body, dict):
        for header in ("Inference-Header-Content-Length", "Content-Encoding"):
            (case.headers or {}).pop(header, None)  # the body is plain JSON
        tensor = body["inputs"][0]
        tensor.pop("parameters", None)
        values = tensor["data"] or [0.0]
        n = 1 + len(values) // 64
        tensor["data"] = (values * (64 * n // len(values) + 1))[:64 * n]
        tensor["shape"] = [n, 64]
    elif case.path.startswith("/predictions") and isinstance(body, dict):
        body["image_base64"] = base64.b64encode(png(body["image_base64"].encode())).decode()
    elif case.path.startswith("/predictions"):
        case.body = png(getattr(body, "data", b""))  # schemathesis' Binary holds the bytes
    return case


def positive(case: schemathesis.Case) -> schemathesis.Case:
    return case


# (name, generation mode, how a case is changed before it is sent)
MODES: dict[str, tuple[schemathesis.GenerationMode,
                       Callable[[schemathesis.Case], schemathesis.Case]]] = {
    "positive": (schemathesis.GenerationMode.POSITIVE, positive),
    "negative": (schemathesis.GenerationMode.NEGATIVE, positive),
    "coherent": (schemathesis.GenerationMode.POSITIVE, coherent),
}
DOCUMENT = openapi_document({"digits": "1"})
DIGITS = load_model("digits")
CASES = [
    (method, path, mode)
    for path, item in DOCUMENT["paths"].items() for method, operation in item.items()
    for mode in MODES
    # Negative cases need something to break; coherent ones, a body to mend.
    if (mode != "negative" or "parameters" in operation or "requestBody" in operation)
    and (mode != "coherent" or path.startswith("/predictions") or path.endswith("/infer"))
]


# One app per test: schemathesis' pytest plugin ends the lifespans it started after each test.
@pytest.fixture
def service() -> Iterator[Starlette]:
    app = create_app(ServeConfig(max_body_bytes=64 * 1024), CollectorRegistry())
    yield app
    shutdown_lifespans()  # schemathesis started the app's lifespan on its own event loop


@pytest.fixture
def api(service: Starlette) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", service)


def total(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples
               if s.name == name)


def check(case: schemathesis.Case, service: Starlette) -> int:
    registry = service.state.service.registry
    requests = total(registry, "inference_requests_total")
    errors = total(registry, "inference_errors_total")
    rejected = total(registry, "inference_feedback_rejected_total")
    response = case.call()
    status = response.status_code
    assert status < 500, f"{case.method} {case.formatted_path}: {status} {response.text[:500]}"
    if status >= 400:
        body = response.json()
        assert body["code"] == status, body
        assert isinstance(body["error"], str) and body["error"], body
        # Under /v2 in OIP's form: the message in "error", the reason beside.
        explained = "reason" if case.formatted_path.startswith("/v2") else "message"
        assert isinstance(body[explained], str) and body[explained], body
    inference = model_from_path(case.formatted_path) is not None
    assert total(registry, "inference_requests_total") - requests == inference
    assert total(registry, "inference_errors_total") == errors
    refused = case.formatted_path == "/feedback" and status >= 400
    assert total(registry, "inference_feedback_rejected_total") - rejected == refused
    return status


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzzed_requests_get_no_5xx_and_every_error_is_explained_and_counted(
    method: str, path: str, mode: str,
    api: schemathesis.schemas.BaseSchema, service: Starlette,
) -> None:
    generation, change = MODES[mode]
    statuses: list[int] = []

    @given(api[path][method].as_strategy(generation_mode=generation).map(change))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        statuses.append(check(case, service))

    fuzz()
    if mode == "coherent":  # the model really ran on fuzzed inputs
        assert statuses.count(200) >= len(statuses) // 2, statuses


def test_undocumented_methods_get_405_with_a_reason_and_allow(service: Starlette) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path, item in DOCUMENT["paths"].items():
                url = path.replace("{model}", "digits").replace("{version}", "1")
                for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - {
                        m.upper() for m in item}:
                    r = await client.request(method, url)
                    assert r.status_code == 405, (method, url, r.text)
                    oip = url.startswith("/v2")  # OIP's form: the message in "error"
                    assert r.json()["reason" if oip else "error"] == "method_not_allowed"
                    assert r.json()["error" if oip else "message"]
                    assert set(r.headers["allow"].split(", ")) >= {m.upper() for m in item}

    asyncio.run(main())  # no request reaches a model: the app's lifespan is not needed


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3)
           | st.integers(min_value=2**1024))  # beyond float64: OverflowError
SHAPES = (st.lists(st.integers(min_value=-1) | st.sampled_from([1, 8, 64, 2**32, 2**63])
                   | st.booleans(), max_size=4)
          | st.builds(lambda ones, tail: [1] * ones + tail, st.integers(0, 80),
                      st.lists(st.sampled_from([2, 8, 64]), max_size=2))
          | SCALARS)


# One kind of value per tensor: a mixed list fails on its first odd value, hiding the rest.
VALUES = [st.integers(), st.floats(), st.integers(min_value=2**1024), st.booleans(), SCALARS,
          st.lists(st.floats(), max_size=3)]


@st.composite
def tensors(draw: st.DrawFn) -> tuple[Any, Any]:
    shape = draw(SHAPES)
    value = draw(st.sampled_from(VALUES))
    size = math.prod(shape) if isinstance(shape, list) and all(
        isinstance(s, int) for s in shape) else -1
    if 0 <= size <= 256 and draw(st.booleans()):  # as many values as the shape says
        return shape, draw(st.lists(value, min_size=size, max_size=size))
    return shape, draw(st.lists(value, max_size=130) | SCALARS)


@settings(max_examples=1000, deadline=None, database=None, derandomize=True)
@given(tensors())
@example(([1, 64], [1e300] * 64))  # finite in JSON, infinite as float32
def test_any_json_tensor_gives_samples_or_a_4xx_reason(tensor: tuple[Any, Any]) -> None:
    """The OIP v2 tensor parser, where the schema-driven fuzzing above rarely reaches: odd
    shapes (bools, huge or many dimensions) and data (huge ints, nesting, non-numbers)."""
    shape, data = tensor
    try:
        body = json.dumps({"inputs": [{"shape": shape, "data": data}]}).encode()
        samples = _v2_samples(DIGITS, parse_infer_request(body, None, CLASSIFIER_OUTPUTS))
    except InferenceError as exc:
        assert 400 <= exc.status < 500 and str(exc)
    else:
        assert samples.shape[1:] == (8, 8) and np.isfinite(samples).all()


def test_drift_features_of_extreme_accepted_values_stay_finite() -> None:
    """64 pixels at float32's limit overflow a float32 sum; the features are summed wider."""
    from inferwatch.models.digits import digit_features
    for value in (3e38, -3e38):
        samples = DIGITS.from_tensor(np.full((2, 64), value))
        with np.errstate(all="raise"):
            features = digit_features(samples)
        assert all(np.isfinite(v).all() for v in features.values())
