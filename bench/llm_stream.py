"""What reading OpenAI-style streams costs the proxy: LLM accounting on vs off, side by side.

    .venv/bin/python bench/llm_stream.py [--rounds 5] [--seconds 8] [--streams 8]
                                         [--chunks 64] [--gap 0.002]

One stand-in upstream (a raw ASGI app under uvicorn) answers every POST /v1/chat/completions
with a stream as OpenAI writes it with ``stream_options.include_usage``: a role-only chunk,
--chunks content chunks --gap seconds apart (each its own read, as a real server's tokens
are), a finish chunk, a usage chunk and ``data: [DONE]``, compact JSON with ``"usage":null``
on every chunk. Three proxies, each its own process: ``on`` (the default), ``off``
(``--no-llm-metrics``) and ``off-again``, a second ``off`` for how far two identical
processes differ: the noise floor. Every round starts them afresh with the round's
PYTHONHASHSEED (harness.seed_round) and drives all three at once for --seconds, --streams
streams in flight each, so that a drift of the shared machine hits them alike; the CPU time
each spent (user + system, /proc) is divided by the streams it answered. Prints each round,
then the medians: CPU per streamed request, the ratio to ``off``, and what ``on`` adds.
``on``'s own counters are checked against what was sent.

Before that, in process: what reading one such stream costs (StreamedCompletion fed each
event as its own read, its Completion observed into InferenceMetrics), against decoding
every ``data:`` line with json, the alternative that the byte search replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from harness import cpu_seconds, free_port, running, seed_round  # bench/, next to this script
from prometheus_client import CollectorRegistry

from inferwatch.metrics import InferenceMetrics
from inferwatch.metrics.instruments import Completion
from inferwatch.proxy.completions import StreamedCompletion

MODEL = "tiny-llm"
REQUEST = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}],
                      "stream": True, "stream_options": {"include_usage": True}}).encode()
PROXIES = {"on": [], "off": ["--no-llm-metrics"], "off-again": ["--no-llm-metrics"]}


def events(chunks: int) -> list[bytes]:
    """One stream's events, as OpenAI writes them with include_usage."""
    head = {"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk",
            "created": 1741570283, "model": MODEL, "system_fingerprint": "fp_44709d6fcb"}

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        data = json.dumps({**head, "choices": choices, "usage": usage}, separators=(",", ":"))
        return b"data: %s\n\n" % data.encode()

    def choice(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    return [event([choice({"role": "assistant", "content": "", "refusal": None})]),
            *(event([choice({"content": f" word{i}"})]) for i in range(chunks)),
            event([choice({}, "stop")]),
            event([], {"prompt_tokens": 9, "completion_tokens": chunks,
                       "total_tokens": 9 + chunks}),
            b"data: [DONE]\n\n"]


def json_reader(stream: list[bytes]) -> Completion:
    """The alternative: every ``data:`` line decoded, its choices walked."""
    chunks, reasons = 0, []
    usage: dict[str, int] | None = None
    first = last = 0.0
    gaps = []
    for read in stream:
        for line in read.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                data = json.loads(line[5:])
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            for choice in data.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or choice.get("text") or delta.get("tool_calls"):
                    now = time.perf_counter()
                    if chunks:
                        gaps.append(now - last)
                    else:
                        first = now
                    last = now
                    chunks += 1
                if choice.get("finish_reason"):
                    reasons.append(choice["finish_reason"])
            usage = data.get("usage") or usage
    done = Completion(None, chunks, True, reasons, gaps=gaps)
    if usage:
        done = Completion(usage["prompt_tokens"], usage["completion_tokens"],
                          finish_reasons=reasons, gaps=gaps)
    done.first_token = first
    return done


def in_process(chunks: int, repeat: int = 2000) -> dict[str, float]:
    """Microseconds of CPU to read one stream and observe it, per reader; best of 5."""
    stream = events(chunks)
    metrics = InferenceMetrics([MODEL], registry=CollectorRegistry())

    def scan() -> None:
        reader = StreamedCompletion(time.perf_counter())
        for read in stream:
            reader.feed(read)
        metrics.observe_completion(MODEL, reader.completion())

    def decode() -> None:
        metrics.observe_completion(MODEL, json_reader(stream))

    results = {}
    for name, read in (("byte search (shipped)", scan), ("json per line", decode)):
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _ in range(repeat):
                read()
            best = min(best, (time.process_time() - start) / repeat * 1e6)
        results[name] = best
    return results


async def drive(urls: dict[str, str], streams: int, seconds: float) -> dict[str, int]:
    """``streams`` streams in flight per target for ``seconds``: each target's answered
    streams, each read to its end."""
    answered = dict.fromkeys(urls, 0)
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"}

    async def loop(name: str, session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with session.post(urls[name] + "/v1/chat/completions", data=REQUEST,
                                    headers=headers) as r:
                body = await r.read()
                if r.status != 200 or not body.endswith(b"data: [DONE]\n\n"):
                    raise RuntimeError(f"{name}: HTTP {r.status}, {body[-80:]!r}")
            answered[name] += 1

    async with contextlib.AsyncExitStack() as stack:
        sessions = {name: await stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=streams))) for name in urls}
        await asyncio.gather(*(loop(name, sessions[name]) for name in urls
                               for _ in range(streams)))
    return answered


def tokens_counted(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("inference_tokens_total{") and 'type="output"' in line
               and 'source="usage"' in line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--streams", type=int, default=8, help="in flight per proxy")
    parser.add_argument("--chunks", type=int, default=64, help="content chunks per stream")
    parser.add_argument("--gap", type=float, default=0.002, help="seconds between chunks")
    args = parser.parse_args()

    costs = in_process(args.chunks)
    print(f"in process, one stream of {args.chunks} content chunks read and observed:")
    for name, us in costs.items():
        print(f"  {name:22} {us:7.1f} us CPU")

    tmp = Path(tempfile.mkdtemp(prefix="iw-bench-llm-"))
    log = tmp / "processes.log"
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    results: dict[str, list[float]] = {name: [] for name in PROXIES}
    with running([sys.executable, __file__, "--upstream", str(up_port), str(args.chunks),
                  str(args.gap)], f"{upstream}/health", log):
        print(f"\nupstream {upstream}: {args.chunks} content chunks {args.gap * 1e3:g} ms apart "
              f"+ role, finish, usage, [DONE]; per round all proxies at once, {args.streams} "
              f"streams in flight each, {args.seconds:g} s", flush=True)
        for round_ in range(args.rounds):
            seed_round(round_)
            with contextlib.ExitStack() as stack:
                urls, pids = {}, {}
                for name, flags in PROXIES.items():
                    port = free_port()
                    urls[name] = f"http://127.0.0.1:{port}"
                    pids[name] = stack.enter_context(running(
                        [sys.executable, "-m", "inferwatch", "proxy", "--upstream", upstream,
                         "--port", str(port), "--model", MODEL, *flags],
                        urls[name] + "/metrics", log)).pid
                asyncio.run(drive(urls, 2, 1.0))  # warm: connections, code paths
                before_tokens = tokens_counted(urls["on"])
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                answered = asyncio.run(drive(urls, args.streams, args.seconds))
                cpu = {name: (cpu_seconds(pid) - cpu0[name]) / answered[name] * 1e6
                       for name, pid in pids.items()}
                counted = tokens_counted(urls["on"]) - before_tokens
                if counted != answered["on"] * args.chunks:
                    raise RuntimeError(f"on counted {counted} output tokens, sent "
                                       f"{answered['on'] * args.chunks}")
            for name in PROXIES:
                results[name].append(cpu[name])
            print(f"  round {round_ + 1}: " + ", ".join(
                f"{name} {cpu[name]:.0f} us/stream ({answered[name]} streams)"
                for name in PROXIES), flush=True)

    med = {name: statistics.median(values) for name, values in results.items()}
    ratios = [on / off for on, off in zip(results["on"], results["off"], strict=True)]
    noise = [again / off for again, off in zip(results["off-again"], results["off"],
                                                strict=True)]
    print(f"\nmedians of {args.rounds} rounds, proxy CPU per streamed request:")
    for name in PROXIES:
        print(f"  {name:10} {med[name]:7.0f} us  {med[name] / med['off']:.3f}x off")
    print(f"on adds {med['on'] - med['off']:.0f} us CPU a stream "
          f"({(med['on'] - med['off']) / (args.chunks + 4):.2f} us an event); per-round "
          f"ratio on/off median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}); noise off-again/off "
          f"{statistics.median(noise):.3f} ({min(noise):.3f}-{max(noise):.3f})")


def upstream_app(port: int, chunks: int, gap: float) -> None:
    import uvicorn

    stream = events(chunks)
    head = [(b"content-type", b"text/event-stream")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        while message.get("more_body"):
            message = await receive()
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": head})
        for i, event in enumerate(stream):
            if 0 < i <= chunks:  # before each content chunk
                await asyncio.sleep(gap)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="off", loop="uvloop", http="httptools")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--upstream"]:
        upstream_app(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
