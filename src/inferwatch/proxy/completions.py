"""OpenAI-style completions read as they pass through: tokens, time to first token, the gaps
between tokens and finish reasons.

Nothing is parsed beyond what these need: the bytes are searched for a few keys, and JSON is
decoded only for a ``usage`` object. A key is found unquoted only where it is one: inside a
JSON string every quote is escaped. A stream's reads are kept with their times and searched a
batch at a time, each up to its last line end (the rest waits for the next read); a read that
holds one ``data:`` line, as a server's read usually does, is searched whole, not split into
lines. A garbled answer counts for what can be found in it; nothing here raises on an
upstream's bytes. What it costs: bench/llm_stream.py.
"""

from __future__ import annotations

import json
import re
import time

from inferwatch.metrics.instruments import Completion

__all__ = ["StreamedCompletion", "WholeCompletion"]

# Output: non-empty text (chat's content, a reasoning model's reasoning, the legacy
# completions' text) or tool calls. A role-only first chunk has none.
_OUTPUT = re.compile(rb'"(?:content|text|reasoning_content|reasoning)"\s*:\s*"[^"]'
                     rb'|"tool_calls"\s*:\s*\[\s*[^\]\s]')
_FINISH_KEY = b'"finish_reason"'
_FINISH_VALUE = re.compile(rb'\s*:\s*"([^"\\]{1,64})"')
_USAGE_KEY = b'"usage"'
_USAGE_VALUE = re.compile(rb'\s*:\s*\{')
_DECODER = json.JSONDecoder()
_MAX_LINE = 1 << 20  # beyond, the line is no completion's event: skipped, not held
_MAX_BODY = 16 << 20  # a whole answer kept to be searched at its end; beyond, not counted
# A stream's reads are searched a batch at a time, at most this many (or bytes) held: a read
# searched as it comes finds the caches cold from the event loop's work in between, and cost
# the proxy about 1 us more (of 5) a read in bench/llm_stream.py.
_BATCH_READS = 32
_BATCH_BYTES = 64 << 10


def _outputs(data: bytes) -> int:
    """How many ``data:`` lines with output the whole lines ``data`` hold."""
    if data.startswith(b"data:") and data.find(b"data:", 5) < 0:  # a token a read, as usual
        return _has_output(data)
    return sum(_has_output(line) for line in data.split(b"\n") if line.startswith(b"data:"))


def _has_output(line: bytes) -> bool:
    at = line.find(b'"content":"')  # chat's content in compact JSON, as servers write it
    if at >= 0 and line[at + 11:at + 12] != b'"':
        return True
    return _OUTPUT.search(line) is not None


def _finish_reasons(data: bytes, into: list[bytes]) -> None:
    if data.count(b'"finish_reason":null') == data.count(_FINISH_KEY):  # as most chunks
        return
    at = data.find(_FINISH_KEY)
    while at >= 0:
        at += len(_FINISH_KEY)
        if not data.startswith(b":null", at):
            found = _FINISH_VALUE.match(data, at)
            if found is not None:
                into.append(found[1])
        at = data.find(_FINISH_KEY, at)


def _usage(data: bytes) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of the last ``usage`` object in ``data``."""
    found = None
    if data.count(b'"usage":null') == data.count(_USAGE_KEY):  # as most chunks
        return None
    at = data.find(_USAGE_KEY)
    while at >= 0:
        at += len(_USAGE_KEY)
        if not data.startswith(b":null", at):
            value = _USAGE_VALUE.match(data, at)
            if value is not None:
                found = _counts(data, value.end() - 1) or found
        at = data.find(_USAGE_KEY, at)
    return found


def _counts(data: bytes, at: int) -> tuple[int, int] | None:
    """The token counts of the ``usage`` object at ``data[at]``."""
    try:
        usage, _ = _DECODER.raw_decode(data[at:].decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0:
        return prompt, completion
    return None


def _reasons(found: list[bytes]) -> list[str]:
    return [reason.decode("ascii", "replace") for reason in found]


class StreamedCompletion:
    """A ``text/event-stream`` answer, fed as it arrives.

    >>> stream = StreamedCompletion(time.perf_counter())
    >>> stream.feed(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\\n\\n'
    ...             b'data: {"choices":[{"delta":{"content":"Hi"}}]}\\n\\ndata: {"choi')
    >>> stream.feed(b'ces":[{"delta":{},"finish_reason":"stop"}]}\\n\\n')
    >>> done = stream.completion()
    >>> done.output_tokens, done.estimated, done.finish_reasons
    (1, True, ['stop'])

    Each ``data:`` line with output (see ``_OUTPUT``) is a token, at the time of the read that
    ended it. A ``usage`` chunk (``stream_options.include_usage``) replaces the estimate; the
    last one counts (vLLM's ``continuous_usage_stats`` sends one a chunk). The stream may end
    without ``data: [DONE]``.
    """

    __slots__ = ("_finish", "_first", "_gaps", "_held", "_last", "_reads", "_start", "_tail",
                 "_usage", "chunks")

    def __init__(self, start: float) -> None:
        self._start = start
        self._reads: list[tuple[float, bytes]] = []  # not searched yet, with their times
        self._held = 0  # their bytes
        self._tail = b""  # a line not ended yet
        self.chunks = 0  # lines with output so far
        self._first = 0.0
        self._last = 0.0
        self._gaps: list[float] = []
        self._usage: tuple[int, int] | None = None
        self._finish: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """Take the next read of the stream, as it arrives."""
        reads = self._reads
        reads.append((time.perf_counter(), data))
        self._held += len(data)
        if len(reads) >= _BATCH_READS or self._held >= _BATCH_BYTES:
            self._search()

    def _search(self) -> None:
        reads, self._reads, self._held = self._reads, [], 0
        tail = self._tail
        lines = []  # the reads' whole lines
        for now, read in reads:
            data = tail + read if tail else read
            end = data.rfind(b"\n") + 1
            tail = data[end:] if end < len(data) else b""
            if len(tail) > _MAX_LINE:
                tail = b""
            if not end:
                continue
            if end < len(data):
                data = data[:end]
            lines.append(data)
            found = _outputs(data)
            if found:
                if self.chunks:
                    self._gaps.append(now - self._last)
                else:
                    self._first = now
                if found > 1:  # they came in one read
                    self._gaps.extend((0.0,) * (found - 1))
                self._last = now
                self.chunks += found
        self._tail = tail
        if lines:
            block = b"".join(lines)
            _finish_reasons(block, self._finish)
            self._usage = _usage(block) or self._usage

    def completion(self) -> Completion:
        """What the stream produced so far (a line without its end is not counted)."""
        self._search()
        chunks = self.chunks
        if self._usage is not None:
            input_tokens, output_tokens = self._usage
            done = Completion(input_tokens, output_tokens, finish_reasons=_reasons(self._finish))
        else:
            done = Completion(None, chunks, True, _reasons(self._finish))
        if chunks:
            done.first_token = self._first - self._start
            done.gaps = self._gaps
        if chunks >= 2 and self._last > self._first:
            done.tokens_per_second = (done.output_tokens or 0) / (self._last - self._first)
        return done


class WholeCompletion:
    """A JSON answer (not streamed): its ``usage`` and each choice's finish reason, searched
    once it ended.

    >>> whole = WholeCompletion()
    >>> whole.feed(b'{"choices":[{"finish_reason":"length","message":{"content":"a b"}}],')
    >>> whole.feed(b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}')
    >>> done = whole.completion()
    >>> done.input_tokens, done.output_tokens, done.finish_reasons
    (5, 2, ['length'])
    """

    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size <= _MAX_BODY:
            self._parts.append(data)
        else:
            self._parts.clear()

    def completion(self) -> Completion | None:
        """None when nothing could be found, or the answer was beyond ``_MAX_BODY``."""
        body = b"".join(self._parts)
        found: list[bytes] = []
        _finish_reasons(body, found)
        reasons = _reasons(found)
        tokens = _usage(body)
        if tokens is None:
            return Completion(finish_reasons=reasons) if reasons else None
        return Completion(*tokens, finish_reasons=reasons)
