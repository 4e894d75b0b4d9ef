"""The service's HTTP API fuzzed from its own OpenAPI document: valid and invalid requests
alike get no 5xx, every 4xx carries a JSON reason, and every inference request is counted."""

import asyncio
import base64
import io
from collections.abc import Callable, Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from prometheus_client import CollectorRegistry
from schemathesis.python.asgi import shutdown_lifespans

from inferwatch.metrics.middleware import model_from_path
from inferwatch.serve.app import ServeConfig, ServiceApp, create_app
from inferwatch.serve.openapi import openapi_document

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
        tensor = body["inputs"][0]
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
def service() -> Iterator[ServiceApp]:
    app = create_app(ServeConfig(max_body_bytes=64 * 1024), CollectorRegistry())
    yield app
    shutdown_lifespans()  # schemathesis started the app's lifespan on its own event loop


@pytest.fixture
def api(service: ServiceApp) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", service)


def total(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples
               if s.name == name)


def check(case: schemathesis.Case, service: ServiceApp) -> int:
    registry = service.service.registry
    requests = total(registry, "inference_requests_total")
    errors = total(registry, "inference_errors_total")
    response = case.call()
    status = response.status_code
    assert status < 500, f"{case.method} {case.formatted_path}: {status} {response.text[:500]}"
    if status >= 400:
        body = response.json()
        assert body["code"] == status, body
        assert isinstance(body["error"], str) and body["error"], body
        assert isinstance(body["message"], str) and body["message"], body
    inference = model_from_path(case.formatted_path) is not None
    assert total(registry, "inference_requests_total") - requests == inference
    assert total(registry, "inference_errors_total") == errors
    return status


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzzed_requests_get_no_5xx_and_every_error_is_explained_and_counted(
    method: str, path: str, mode: str,
    api: schemathesis.schemas.BaseSchema, service: ServiceApp,
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


def test_undocumented_methods_get_405_with_a_reason_and_allow(service: ServiceApp) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path, item in DOCUMENT["paths"].items():
                url = path.replace("{model}", "digits").replace("{version}", "1")
                for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - {
                        m.upper() for m in item}:
                    r = await client.request(method, url)
                    assert r.status_code == 405, (method, url, r.text)
                    assert r.json()["error"] == "method_not_allowed" and r.json()["message"]
                    assert set(r.headers["allow"].split(", ")) >= {m.upper() for m in item}

    asyncio.run(main())  # no request reaches a model: the app's lifespan is not needed
