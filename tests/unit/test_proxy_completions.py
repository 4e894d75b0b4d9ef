"""proxy/completions.py: OpenAI-style answers read for their tokens, times and finish reasons,
alone and through the proxy."""

import asyncio
import doctest
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from servers import serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from test_proxy import proxying, value

from inferwatch.metrics import InferenceMetrics
from inferwatch.metrics.instruments import Completion
from inferwatch.proxy import completions
from inferwatch.proxy.completions import StreamedCompletion, WholeCompletion

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_the_doctests_pass() -> None:
    assert doctest.testmod(completions).failed == 0


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, int] | None = None, compact: bool = True, **choice: Any) -> bytes:
    """One ``data:`` event as OpenAI (compact JSON) or a ``json.dumps`` server writes it."""
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "llm",
            "choices": [] if delta is None and not choice else [
                {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish,
                 **choice}],
            "usage": usage}
    separators = (",", ":") if compact else (", ", ": ")
    return b"data: %s\n\n" % json.dumps(data, separators=separators).encode()


def stream_of(tokens: list[str], usage: dict[str, int] | None = None, compact: bool = True,
              done: bool = True) -> bytes:
    events = [chunk({"role": "assistant", "content": ""}, compact=compact)]
    events += [chunk({"content": t}, compact=compact) for t in tokens]
    events.append(chunk({}, "stop", compact=compact))
    if usage is not None:
        events.append(chunk(usage=usage, compact=compact))
    if done:
        events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def read(body: bytes, pieces: int = 1) -> Completion:
    stream = StreamedCompletion(time.perf_counter())
    size = -(-len(body) // pieces)
    for i in range(0, len(body), size):
        stream.feed(body[i:i + size])
    return stream.completion()


# Content that looks like the keys searched for: inside a JSON string they are escaped.
TRICKY = ['"content":"x"', "", " ", '\\"', '"finish_reason":"length"', '"usage":{"a":1}',
          "data: x\n\ndata: y", "é", "\u2028", '{"text":"t"}']


def test_content_chunks_are_tokens_and_a_role_only_chunk_is_not() -> None:
    tokens = ["Hello", ",", " world", "!"]
    for compact in (True, False):
        done = read(stream_of(tokens, compact=compact))
        assert (done.input_tokens, done.output_tokens, done.estimated) == (None, 4, True)
        assert done.finish_reasons == ["stop"]
        assert len(done.gaps) == 3 and done.first_token is not None
    assert read(stream_of([])).output_tokens == 0
    assert read(stream_of([])).first_token is None


def test_a_usage_chunk_replaces_the_estimate_and_the_last_one_counts() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}
    done = read(stream_of(["a", "b"], usage))
    assert (done.input_tokens, done.output_tokens, done.estimated) == (9, 7, False)
    # vLLM's continuous_usage_stats: a usage object on every chunk, the last one the total
    running = b"".join(chunk({"content": "a"}, usage={"prompt_tokens": 9, "completion_tokens": n})
                       for n in (1, 2, 3))
    assert (read(running).input_tokens, read(running).output_tokens) == (9, 3)
    bad = chunk(usage={"prompt_tokens": -1, "completion_tokens": 2})
    assert read(stream_of(["a"]) + bad).estimated  # a usage that is no count is ignored


def test_lines_split_across_reads_and_no_done_line() -> None:
    body = stream_of(TRICKY, {"prompt_tokens": 3, "completion_tokens": 10}, done=False)
    whole = read(body)
    for pieces in (2, 7, len(body)):  # down to one byte a read
        split = read(body, pieces)
        assert (split.output_tokens, split.input_tokens, split.finish_reasons) == (
            whole.output_tokens, whole.input_tokens, whole.finish_reasons) == (10, 3, ["stop"])
    assert read(stream_of(["a"], done=False).replace(b"\n", b"\r\n")).output_tokens == 1
    # a last line without its end is not counted (the upstream was cut)
    assert read(stream_of(["a", "b"], done=False).rstrip(b"\n")).finish_reasons == []


def test_other_kinds_of_output_count_as_content() -> None:
    legacy = b'data: {"choices":[{"text":" hi","index":0,"finish_reason":null}]}\n\n'
    tools = chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})
    reasoning = chunk({"reasoning_content": "hmm"}) + chunk({"reasoning": "so"})
    empty = chunk({"tool_calls": []}) + chunk({"content": None}) + chunk({"role": "assistant"})
    assert read(legacy + tools + reasoning + empty).output_tokens == 4
    both = chunk({"reasoning_content": "so", "content": "Hi"})  # a chunk is one token
    assert read(both).output_tokens == read(both + both).output_tokens / 2 == 1


def test_the_scan_agrees_with_json_on_random_streams() -> None:
    """Against a reader that decodes every line: the same tokens and finish reasons."""
    rng = random.Random(7)
    alphabet = [*TRICKY, "a", "\\", '"', ":", "{", "}", "[", "]", "\n", "content"]
    for _ in range(200):
        events, expected, reasons = [], 0, []
        for _ in range(rng.randrange(1, 12)):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 4)))
            finish = rng.choice([None, None, "stop", "length", "tool_calls", "x" * 70])
            key = rng.choice(["content", "content", "reasoning_content", "refusal"])
            events.append(chunk({key: text}, finish, compact=rng.random() < 0.5))
            expected += bool(text) and key != "refusal"
            if finish is not None and len(finish) <= 64:
                reasons.append(finish)
        done = read(b"".join(events), rng.randrange(1, 20))
        assert (done.output_tokens, done.finish_reasons) == (expected, reasons), events


def test_garbled_bytes_never_raise() -> None:
    rng = random.Random(3)
    good = stream_of(["a", "b"], {"prompt_tokens": 1, "completion_tokens": 2})
    for _ in range(300):
        noise = bytearray(good)
        for _ in range(rng.randrange(1, 40)):
            noise[rng.randrange(len(noise))] = rng.randrange(256)
        read(bytes(noise), rng.randrange(1, 9))
        whole = WholeCompletion()
        whole.feed(bytes(noise))
        whole.completion()
    half = b'data: {"choices":[{"delta":{"content":"a'  # cut in a string: still content
    assert read(half + b"\n" + b'data: {"usage":{"prompt_tokens":\n').output_tokens == 1


def test_a_whole_answer_gives_its_usage_and_each_choice_s_finish_reason() -> None:
    answer = {"id": "c", "object": "chat.completion", "choices": [
        {"index": i, "finish_reason": reason, "message": {"content": "\"usage\": {}"}}
        for i, reason in enumerate(["stop", "length", "weird"])],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}
    for separators in ((",", ":"), (", ", ": ")):
        body = json.dumps(answer, separators=separators).encode()
        whole = WholeCompletion()
        for i in range(0, len(body), 5):
            whole.feed(body[i:i + 5])
        done = whole.completion()
        assert done is not None
        assert (done.input_tokens, done.output_tokens) == (11, 4)
        assert done.finish_reasons == ["stop", "length", "weird"]
    whole = WholeCompletion()
    whole.feed(b'{"error": "no"}')
    assert whole.completion() is None


def test_finish_reasons_are_a_bounded_label() -> None:
    registry = CollectorRegistry()
    metrics = InferenceMetrics({"m": "1"}, registry=registry)
    metrics.observe_completion("m", Completion(finish_reasons=["stop", "eos", "x" * 64]))
    reasons = {s.labels["finish_reason"]: s.value for family in registry.collect()
               for s in family.samples if s.name == "inference_finish_reasons_total"}
    assert reasons == {"stop": 1, "length": 0, "tool_calls": 0, "content_filter": 0,
                       "function_call": 0, "other": 2}
    with pytest.raises(ValueError, match="never estimated"):
        Completion(input_tokens=1, estimated=True)


# -- through the proxy


def scripted_upstream() -> Starlette:
    """Answers ``/v1/chat/completions`` with what the request asks for: ``"pieces"`` written
    one by one ``"gap"`` seconds apart as a stream, or ``"answer"`` as JSON."""

    async def completions(request: Request) -> Response:
        body = await request.json()
        if "answer" in body:
            return JSONResponse(body["answer"], body.get("status", 200))

        async def pieces() -> AsyncIterator[bytes]:
            for piece in body["pieces"]:
                await asyncio.sleep(body.get("gap", 0))
                yield piece.encode("latin-1")

        return StreamingResponse(pieces(), media_type="text/event-stream",
                                 headers={"X-Traceparent": request.headers.get("traceparent",
                                                                               "")})

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serving(scripted_upstream(), lifespan="off") as url:
        yield url


def pieces_of(body: bytes, size: int) -> list[str]:
    return [body[i:i + size].decode("latin-1") for i in range(0, len(body), size)]


def test_streams_through_the_proxy(upstream: str) -> None:
    tokens = ["Hello", ",", " world", "!"]
    usage = {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    gap = 0.02
    with proxying(upstream, models=["llm"]) as (url, registry), httpx.Client() as client:
        def tokens_of(kind: str, source: str) -> float:
            return value(registry, "inference_tokens_total", "llm", "", type=kind,
                         source=source)

        events = [e + b"\n\n" for e in stream_of(tokens, usage).split(b"\n\n") if e]
        r = client.post(f"{url}/v1/chat/completions", json={
            "model": "llm", "pieces": [e.decode() for e in events], "gap": gap})
        assert r.content == b"".join(events)
        assert (tokens_of("input", "usage"), tokens_of("output", "usage")) == (6, 4)
        assert value(registry, "inference_finish_reasons_total", "llm", "",
                     finish_reason="stop") == 1
        ttft = value(registry, "inference_time_to_first_token_seconds_sum", "llm", "")
        ttfb = value(registry, "inference_time_to_first_byte_seconds_sum", "llm", "")
        assert ttft >= 2 * gap and ttft > ttfb  # the role-only chunk came first
        assert value(registry, "inference_inter_token_latency_seconds_count", "llm", "") == 3
        gaps = value(registry, "inference_inter_token_latency_seconds_sum", "llm", "")
        assert gaps >= 3 * gap * 0.9
        speed = value(registry, "inference_output_tokens_per_second_sum", "llm", "")
        assert 0 < speed <= 4 / gaps * 1.01

        # No usage, no [DONE], lines cut across writes: estimated from the content chunks.
        body = stream_of(tokens, done=False)
        r = client.post(f"{url}/v1/chat/completions", json={
            "model": "llm", "pieces": pieces_of(body, 7), "gap": 0.001})
        assert r.content == body
        assert tokens_of("output", "estimated") == 4
        assert tokens_of("output", "usage") == 4 and tokens_of("input", "usage") == 6
        assert value(registry, "inference_time_to_first_token_seconds_count", "llm", "") == 2

        # Garbage is passed unchanged and counted for what can be found in it.
        garbage = ["data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}\n\n", "\x00\xff\n",
                   "data: [DONE\n\ndata:\n", "event: x\n\n" * 3, "data: " + "z" * 70000]
        r = client.post(f"{url}/v1/chat/completions", json={"model": "llm",
                                                             "pieces": garbage})
        assert r.status_code == 200 and r.content == "".join(garbage).encode("latin-1")
        assert tokens_of("output", "estimated") == 5
        assert value(registry, "inference_requests_total", "llm", "") == 3


def test_whole_answers_through_the_proxy(upstream: str) -> None:
    answer = {"choices": [{"index": 0, "finish_reason": "length", "message": {"content": "x"}},
                          {"index": 1, "finish_reason": "eos", "message": {"content": "y"}}],
              "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}
    with proxying(upstream, models=["llm"]) as (url, registry):
        for path in ("/v1/chat/completions", "/v1/completions"):
            r = httpx.post(f"{url}{path}", json={"model": "llm", "answer": answer})
            assert r.json() == answer
        r = httpx.post(f"{url}/v1/completions", json={"model": "llm", "answer": answer,
                                                      "status": 400})
        assert r.status_code == 400  # an error's body is not read
        assert value(registry, "inference_tokens_total", "llm", "", type="input",
                     source="usage") == 24
        assert value(registry, "inference_tokens_total", "llm", "", type="output",
                     source="usage") == 4
        for reason, count in (("length", 2), ("other", 2), ("stop", 0)):
            assert value(registry, "inference_finish_reasons_total", "llm", "",
                         finish_reason=reason) == count
        assert value(registry, "inference_time_to_first_token_seconds_count", "llm", "") == 0


def test_traceparent_is_forwarded_and_becomes_the_exemplar(upstream: str) -> None:
    with proxying(upstream, models=["llm"]) as (url, _):
        r = httpx.post(f"{url}/v1/chat/completions", headers={"traceparent": TRACEPARENT},
                       json={"model": "llm", "pieces": [stream_of(["a", "b"]).decode()]})
        assert r.headers["x-traceparent"] == TRACEPARENT  # as the upstream received it
        text = httpx.get(f"{url}/metrics",
                         headers={"Accept": "application/openmetrics-text"}).text
    for family in ("inference_latency_seconds", "inference_time_to_first_token_seconds"):
        lines = [line for line in text.splitlines()
                 if line.startswith(f"{family}_bucket") and "# {" in line]
        assert [f'trace_id="{TRACE_ID}"' in line for line in lines] == [True], family


def test_llm_metrics_can_be_turned_off(upstream: str) -> None:
    with proxying(upstream, models=["llm"], llm_metrics=False) as (url, registry):
        r = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "llm", "pieces": [stream_of(["a"], {"prompt_tokens": 1,
                                                         "completion_tokens": 1}).decode()]})
        assert r.status_code == 200
        assert value(registry, "inference_requests_total", "llm", "") == 1
        assert value(registry, "inference_time_to_first_byte_seconds_count", "llm", "") == 1
        names = {s.name for family in registry.collect() for s in family.samples}
        assert not any("token" in name or "finish" in name for name in names), names
