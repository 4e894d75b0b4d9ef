"""`inferwatch proxy` as a process between the real `openai` SDK and an OpenAI-style server:
every stream counted with its status and latency, its head passed before the first token, its
tokens as the client counts them, and its traceparent passed on and kept as an exemplar."""

import asyncio
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
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
    traceparents: list[str] = field(default_factory=list)
    """The ``traceparent`` of each request that had one, as the upstream received it."""


def chunk(delta: dict[str, str] | None, finish: str | None = None,
          usage: dict[str, int] | None = None) -> bytes:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
            "choices": [] if delta is None else [
                {"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}
    return b"data: %s\n\n" % json.dumps(data).encode()


def usage_of(body: dict[str, Any], tokens: list[str]) -> dict[str, int]:
    """Made-up counts that differ from request to request: the prompt's characters."""
    prompt = sum(len(m["content"]) for m in body["messages"])
    return {"prompt_tokens": prompt, "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens)}


def openai_app(record: Upstream) -> Starlette:
    """The part of an OpenAI-style server the SDK's chat completions use."""

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request: Request) -> Response:
        body = await request.json()
        if "traceparent" in request.headers:
            record.traceparents.append(request.headers["traceparent"])
        tokens = TOKENS[:body.get("max_tokens") or len(TOKENS)]
        finish = "stop" if tokens == TOKENS else "length"
        if not body.get("stream"):
            await asyncio.sleep(FIRST_TOKEN)
            return JSONResponse({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "finish_reason": finish, "message": {
                    "role": "assistant", "content": "".join(tokens)}}],
                "usage": usage_of(body, tokens)})

        async def events() -> AsyncIterator[bytes]:
            if body.get("hold"):
                await asyncio.to_thread(record.release.wait, 10)
            yield chunk({"role": "assistant", "content": ""})
            for token in tokens:
                await asyncio.sleep(FIRST_TOKEN)
                yield chunk({"content": token})
            yield chunk({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield chunk(None, usage=usage_of(body, tokens))
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


def test_the_proxy_counts_the_tokens_the_client_counts(proxied: Proxied) -> None:
    """Exactly, from the server's usage: streamed with include_usage and not streamed; and
    one token a content chunk, estimated, for a stream without usage."""

    def tokens(kind: str, source: str) -> float:
        return proxied.sample("inference_tokens_total", type=kind, source=source)

    before = {(kind, source): tokens(kind, source)
              for kind, source in (("input", "usage"), ("output", "usage"),
                                   ("output", "estimated"))}
    reasons = {r: proxied.sample("inference_finish_reasons_total", finish_reason=r)
               for r in ("stop", "length")}
    first_tokens = proxied.sample("inference_time_to_first_token_seconds_count")
    requests = proxied.sample("inference_requests_total")
    client = {"input": 0, "output": 0, "chunks": 0, "stop": 0, "length": 0}
    n = 0
    with sdk(proxied) as sync:
        for i in range(12):
            messages = [{"role": "user", "content": "Say hello" + "!" * i}]
            max_tokens = 1 + i % len(TOKENS)
            stream = sync.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True})
            for c in stream:
                if c.usage is not None:
                    client["input"] += c.usage.prompt_tokens
                    client["output"] += c.usage.completion_tokens
                for choice in c.choices:
                    if choice.finish_reason:
                        client[choice.finish_reason] += 1
            answer = sync.chat.completions.create(model=MODEL, messages=messages,
                                                  max_tokens=max_tokens)
            assert answer.usage is not None
            client["input"] += answer.usage.prompt_tokens
            client["output"] += answer.usage.completion_tokens
            client[answer.choices[0].finish_reason] += 1
            stream = sync.chat.completions.create(model=MODEL, messages=messages,
                                                  max_tokens=max_tokens, stream=True)
            for c in stream:
                assert c.usage is None
                client["chunks"] += sum(bool(choice.delta.content) for choice in c.choices)
                for choice in c.choices:
                    if choice.finish_reason:
                        client[choice.finish_reason] += 1
            n += 3
    proxied.counted(requests, n)
    assert tokens("input", "usage") - before[("input", "usage")] == client["input"]
    assert tokens("output", "usage") - before[("output", "usage")] == client["output"]
    assert tokens("output", "estimated") - before[("output", "estimated")] == client["chunks"]
    for reason in ("stop", "length"):
        counted = proxied.sample("inference_finish_reasons_total", finish_reason=reason)
        assert counted - reasons[reason] == client[reason], reason
    assert proxied.sample("inference_time_to_first_token_seconds_count") == first_tokens + 24


def test_traceparent_is_passed_on_and_kept_as_the_exemplar(proxied: Proxied) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{trace_id}-b7ad6b7169203331-01"
    with sdk(proxied) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                extra_headers={"traceparent": traceparent})
        assert text_of(stream) == "".join(TOKENS)
    assert proxied.upstream.traceparents[-1] == traceparent
    deadline = time.monotonic() + 10
    families = ("inference_latency_seconds", "inference_time_to_first_token_seconds")
    while True:  # the stream is counted as its upstream ends, after the client returned
        text = httpx.get(f"{proxied.url}/metrics",
                         headers={"Accept": "application/openmetrics-text"}).text
        found = {f for f in families for line in text.splitlines()
                 if line.startswith(f"{f}_bucket") and f'# {{trace_id="{trace_id}"}}' in line}
        if found == set(families) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found == set(families)
