"""`inferwatch proxy` in front of a real OpenAI-compatible server (issue 24): Hugging Face's
`transformers serve` on a tiny random Llama built here (tinyllm.py, nothing downloaded),
driven by the real `openai` SDK. The proxy's token counts equal the server's own ``usage``,
and its time-to-first-token and inter-token histograms count the chunks the client saw."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import process, scrape
from servers import free_port

from inferwatch.metrics import names

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-transformers"
# An id with a "/", as Hugging Face's are: the server names the model by the folder it was
# given, relative to its working directory.
MODEL = "local/tiny-llama"
MAX_TOKENS = 8
# Every answer is MAX_TOKENS tokens of visible text (tinyllm.py never lets the model pick EOS,
# nor a token without text). A stream carries them in at most MAX_TOKENS content chunks: one
# a token, but the server joins the tokens made while it was still sending the last chunk
# ("a stream that fell behind sends them as one event"), as vLLM's does.
PROMPTS = ["Hello", "Say something short and friendly.", "The quick brown fox", "One two three",
           "What is the capital of France?"]

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not (VENV / "bin" / "transformers").is_file(),
    reason="transformers is not installed: `make test` puts it in .venv-transformers")]


@dataclass(frozen=True)
class Proxied:
    proxy: str

    def sample(self, name: str, **labels: str) -> float:
        labels = {"model": MODEL, "version": "", **labels}
        return scrape(f"{self.proxy}/metrics").get((name, tuple(sorted(labels.items()))), 0.0)

    def counted(self, n: int) -> None:
        """Wait until ``n`` requests are counted: a stream is counted when its upstream ends,
        a moment after the client read its last chunk."""
        deadline = time.monotonic() + 10
        while (seen := self.sample(names.REQUESTS_TOTAL)) < n:
            assert time.monotonic() < deadline, (seen, n)
            time.sleep(0.05)
        assert seen == n


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    directory = tmp_path_factory.mktemp("transformers")
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HOME": str(directory / "hf-home")}
    built = subprocess.run([str(VENV / "bin" / "python"), str(Path(__file__).with_name(
        "tinyllm.py")), str(directory / MODEL)], env=offline, timeout=120, capture_output=True,
        text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    server_port, proxy_port = free_port(), free_port()
    upstream, proxy = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{proxy_port}"
    log = directory / "processes.log"
    # About 12 s to ready on two cores: importing torch and transformers, then the model.
    with process([str(VENV / "bin" / "transformers"), "serve", MODEL, "--host", "127.0.0.1",
                  "--port", str(server_port), "--device", "cpu"], f"{upstream}/health", log,
                 timeout=120, cwd=directory, env=offline), \
            process([sys.executable, "-m", "inferwatch", "proxy", "--upstream", upstream,
                     "--port", str(proxy_port), "--model", MODEL], f"{proxy}/metrics", log):
        yield Proxied(proxy)


@dataclass
class Answer:
    """What the client saw of one request."""

    usage: "openai.types.CompletionUsage | None"
    finish_reason: str | None
    content_chunks: int = 0
    """Streamed chunks with text in them; 0 for a whole answer."""


def whole(answer: "openai.types.chat.ChatCompletion | openai.types.Completion") -> Answer:
    return Answer(answer.usage, answer.choices[0].finish_reason)


def streamed(stream: "openai.Stream[openai.types.chat.ChatCompletionChunk]"
             " | openai.Stream[openai.types.Completion]") -> Answer:
    answer = Answer(None, None)
    for chunk in stream:
        answer.usage = chunk.usage or answer.usage
        for choice in chunk.choices:
            # Chat chunks carry delta.content, completion chunks text.
            text = choice.delta.content if hasattr(choice, "delta") else choice.text
            if text:
                answer.content_chunks += 1
            answer.finish_reason = choice.finish_reason or answer.finish_reason
    return answer


def test_tokens_and_token_latencies_match_what_the_sdk_saw(proxied: Proxied) -> None:
    include_usage = {"include_usage": True}
    with openai.OpenAI(base_url=f"{proxied.proxy}/v1", api_key="unused", max_retries=0,
                       timeout=60) as client:
        assert [m.id for m in client.models.list()] == [MODEL]
        chat, complete = client.chat.completions.create, client.completions.create

        def messages(prompt: str) -> list[dict[str, str]]:
            return [{"role": "user", "content": prompt}]

        counted = [
            whole(chat(model=MODEL, messages=messages(PROMPTS[0]), max_tokens=MAX_TOKENS)),
            streamed(chat(model=MODEL, messages=messages(PROMPTS[1]), max_tokens=MAX_TOKENS,
                          stream=True, stream_options=include_usage)),
            whole(complete(model=MODEL, prompt=PROMPTS[2], max_tokens=MAX_TOKENS)),
            streamed(complete(model=MODEL, prompt=PROMPTS[3], max_tokens=MAX_TOKENS,
                              stream=True, stream_options=include_usage))]
        estimated = streamed(chat(model=MODEL, messages=messages(PROMPTS[4]),
                                  max_tokens=MAX_TOKENS, stream=True))
    streams = [counted[1], counted[3], estimated]
    answers = [*counted, estimated]

    # What the server did, as the client saw it.
    assert estimated.usage is None
    assert all(a.usage is not None and a.usage.completion_tokens == MAX_TOKENS
               for a in counted), [a.usage for a in counted]
    assert [a.finish_reason for a in answers] == ["length"] * len(answers)
    assert all(1 <= s.content_chunks <= MAX_TOKENS for s in streams), streams

    proxied.counted(len(answers))
    assert proxied.sample(names.RESPONSES_TOTAL, code="200") == len(answers)
    tokens = names.TOKENS_TOTAL
    assert proxied.sample(tokens, type="input", source="usage") == sum(
        a.usage.prompt_tokens for a in counted if a.usage is not None)
    assert proxied.sample(tokens, type="output", source="usage") == sum(
        a.usage.completion_tokens for a in counted if a.usage is not None)
    # Without usage, one token per content chunk (fewer than the server made, when it joined
    # some); the prompt is not counted.
    assert proxied.sample(tokens, type="output", source="estimated") == estimated.content_chunks
    assert proxied.sample(tokens, type="input", source="estimated") == 0
    assert proxied.sample(names.FINISH_REASONS_TOTAL, finish_reason="length") == len(answers)
    assert proxied.sample(names.FINISH_REASONS_TOTAL, finish_reason="stop") == 0
    # One first token per stream; the gaps between a stream's content chunks.
    assert proxied.sample(f"{names.TIME_TO_FIRST_TOKEN_SECONDS}_count") == len(streams)
    assert proxied.sample(f"{names.INTER_TOKEN_LATENCY_SECONDS}_count") == sum(
        s.content_chunks - 1 for s in streams)
