"""`inferwatch proxy` as a process between the real `openai` SDK and an OpenAI-style server:
every stream counted with its status and latency, its head passed before the first token."""

import asyncio
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from processes import process, scrape
from servers import free_port, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

openai = pytest.importorskip("openai")

MODEL = "tiny-llm"
TOKENS = ["Hello", ",", " world", "!"]
FIRST_TOKEN = 0.01  # s before the first token, and between tokens
# The end of the body comes a little after `data: [DONE]`, as from any server whose last
# write is its own (uvicorn's terminating chunk): the sync SDK closes at [DONE], before it.
# Without the pause, 2 to 8 streams in 100 were counted client_closed by a proxy that did not
# read responses to their end; with it, all 100: the test fails on such a proxy every time.
AFTER_DONE = 0.02


@dataclass
class Upstream:
    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)
    """A request with ``"hold": true`` waits for it before its first token."""


def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: %s\n\n" % json.dumps(data).encode()


def openai_app(record: Upstream) -> Starlette:
    """The part of an OpenAI-style server the SDK's chat completions use."""

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request: Request) -> Response:
        body = await request.json()
        if not body.get("stream"):
            await asyncio.sleep(FIRST_TOKEN)
            return JSONResponse({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "".join(TOKENS)}}]})

        async def events() -> AsyncIterator[bytes]:
            if body.get("hold"):
                await asyncio.to_thread(record.release.wait, 10)
            yield chunk({"role": "assistant", "content": ""})
            for token in TOKENS:
                await asyncio.sleep(FIRST_TOKEN)
                yield chunk({"content": token})
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"
            await asyncio.sleep(AFTER_DONE)

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models),
                             Route("/v1/chat/completions", completions, methods=["POST"])])


@dataclass
class Proxied:
    upstream: Upstream
    url: str

    def sample(self, name: str, **labels: str) -> float:
        labels = {"model": MODEL, "version": "", **labels}
        return scrape(f"{self.url}/metrics").get((name, tuple(sorted(labels.items()))), 0.0)

    def counted(self, before: float, n: int) -> None:
        """Wait until ``n`` more requests are counted: a stream the SDK closed at [DONE] is
        counted when its upstream ends, a moment after the client returned."""
        deadline = time.monotonic() + 10
        while (seen := self.sample("inference_requests_total")) < before + n:
            assert time.monotonic() < deadline, (seen, before, n)
            time.sleep(0.05)
        assert seen == before + n


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    record = Upstream()
    port = free_port()
    log = tmp_path_factory.mktemp("openai") / "proxy.log"
    with serving(openai_app(record), lifespan="off") as upstream:
        record.url = upstream
        url = f"http://127.0.0.1:{port}"
        # No --model: the proxy lists the upstream's models from GET /v1/models.
        with process([sys.executable, "-m", "inferwatch", "proxy", "--upstream", upstream,
                      "--port", str(port)], f"{url}/metrics", log):
            yield Proxied(record, url)


def sdk(proxied: Proxied) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{proxied.url}/v1", api_key="unused", max_retries=0,
                         timeout=10)


def text_of(stream: "openai.Stream[object]") -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_sync_streams_are_counted_with_their_status_and_latency(proxied: Proxied) -> None:
    n = 100
    before = {name: proxied.sample(name) for name in (
        "inference_requests_total", "inference_latency_seconds_count",
        "inference_time_to_first_byte_seconds_count")}
    ok = proxied.sample("inference_responses_total", code="200")
    with sdk(proxied) as client:
        for _ in range(n):
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                    stream=True)
            assert text_of(stream) == "".join(TOKENS)
    proxied.counted(before["inference_requests_total"], n)
    assert proxied.sample("inference_responses_total", code="200") == ok + n
    for name in ("inference_latency_seconds_count", "inference_time_to_first_byte_seconds_count"):
        assert proxied.sample(name) == before[name] + n, name
    assert proxied.sample("inference_error_reasons_total", reason="client_closed") == 0
    assert proxied.sample("inference_in_flight_requests") == 0
    assert proxied.sample("inference_latency_seconds_sum") >= (
        n * len(TOKENS) * FIRST_TOKEN)  # each stream's whole length


def test_headers_arrive_before_the_first_token(proxied: Proxied) -> None:
    release = proxied.upstream.release
    release.clear()
    failsafe = threading.Timer(5, release.set)  # a proxy that holds the head still ends
    failsafe.start()
    try:
        with sdk(proxied) as client:
            # create() returns once the response's head came: here, while the upstream
            # still holds its first token.
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                    stream=True, extra_body={"hold": True})
            held = not release.is_set()
            release.set()
            assert text_of(stream) == "".join(TOKENS)
        assert held
    finally:
        failsafe.cancel()
        release.set()


def test_async_client_streaming_and_not(proxied: Proxied) -> None:
    n = 20
    before = proxied.sample("inference_requests_total")
    ok = proxied.sample("inference_responses_total", code="200")
    closed = proxied.sample("inference_error_reasons_total", reason="client_closed")
    first_bytes = proxied.sample("inference_time_to_first_byte_seconds_count")

    async def streamed(client: "openai.AsyncOpenAI") -> str:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                      stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def whole(client: "openai.AsyncOpenAI") -> str:
        answer = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        return str(answer.choices[0].message.content)

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{proxied.url}/v1", api_key="unused",
                                      max_retries=0, timeout=10) as client:
            return list(await asyncio.gather(*(
                streamed(client) if i % 2 else whole(client) for i in range(2 * n))))

    assert asyncio.run(main()) == ["".join(TOKENS)] * (2 * n)
    proxied.counted(before, 2 * n)
    assert proxied.sample("inference_responses_total", code="200") == ok + 2 * n
    assert proxied.sample("inference_time_to_first_byte_seconds_count") == first_bytes + n
    assert proxied.sample("inference_error_reasons_total", reason="client_closed") == closed

    with sdk(proxied) as client:  # and sync, not streamed
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert answer.choices[0].message.content == "".join(TOKENS)
    assert proxied.sample("inference_responses_total", code="200") == ok + 2 * n + 1


def test_model_info_lists_the_discovered_model(proxied: Proxied) -> None:
    assert proxied.sample("inference_model_info", runtime="") == 1
