"""10,000 requests for models that do not exist: each gets a 404 with a reason, each is
counted as a client error, and not one series appears beyond the guard's ``_unknown``."""

import asyncio
import random
import string
from urllib.parse import quote

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from inferwatch.metrics import UNKNOWN_MODEL
from inferwatch.serve.app import ServeConfig, create_app

N = 10_000
FIRST = 100  # after these, the guard's series all exist: the other 9,900 must add none
CONCURRENCY = 32
ALPHABET = string.ascii_letters + string.digits + "-_.~ %:@!$&'()*+,;=\u00e9\u4e2d"
ROUTES = ("/predictions/{}", "/v2/models/{}/infer", "/v2/models/{}/versions/1/infer")

Series = set[tuple[str, tuple[tuple[str, str], ...]]]


def bogus_names(n: int) -> list[str]:
    rng = random.Random(10)
    names: set[str] = set()
    while len(names) < n:
        name = "".join(rng.choices(ALPHABET, k=rng.randint(1, 80)))
        if name.strip(".") and name != "digits":  # "." and ".." are not names in a path
            names.add(name)
    return sorted(names)


def series(text: str) -> Series:
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_ten_thousand_bogus_model_names_add_no_series_beyond_the_guard() -> None:
    registry = CollectorRegistry()
    app = create_app(ServeConfig(), registry)
    names = bogus_names(N)
    answers: dict[str, tuple[int, str, str]] = {}

    async def send(client: httpx.AsyncClient, slots: asyncio.Semaphore, i: int) -> None:
        name = names[i]
        async with slots:
            r = await client.post(ROUTES[i % len(ROUTES)].format(quote(name, safe="")),
                                  content=b"\x89PNG", headers={"content-type": "image/png"})
        body = r.json()
        if ROUTES[i % len(ROUTES)].startswith("/v2/"):  # OIP's form: the message in "error"
            answers[name] = (r.status_code, body["reason"], body["error"])
        else:
            answers[name] = (r.status_code, body["error"], body["message"])

    async def main() -> tuple[Series, Series, Series]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                before = series((await client.get("/metrics")).text)
                slots = asyncio.Semaphore(CONCURRENCY)
                await asyncio.gather(*(send(client, slots, i) for i in range(FIRST)))
                warm = series((await client.get("/metrics")).text)
                await asyncio.gather(*(send(client, slots, i) for i in range(FIRST, N)))
                after = series((await client.get("/metrics")).text)
        return before, warm, after

    before, warm, after = asyncio.run(main())

    assert len(answers) == N
    assert {(status, reason) for status, reason, _ in answers.values()} == {
        (404, "unknown_model")}
    assert all("is not served" in message for _, _, message in answers.values())
    new = warm - before
    assert new and all(dict(labels)["model"] == UNKNOWN_MODEL for _, labels in new), new
    assert after == warm  # 9,900 more names, not one more series

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model": UNKNOWN_MODEL, "version": "",
                                                **labels})

    assert value("inference_requests_total") == N
    assert value("inference_responses_total", code="404") == N
    assert value("inference_error_reasons_total", reason="unknown_model") == N
    assert value("inference_errors_total") == 0  # client errors, not server ones
