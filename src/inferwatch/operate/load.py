"""``inferwatch load``: an open-loop, constant-rate load generator for inference services.

Request ``i`` is scheduled at ``t0 + i / rate`` and fired at that time whether or not earlier
requests have answered, and its latency is measured from its *scheduled* time. A server that
stalls therefore shows the stall as latency in every request queued behind it, instead of
silently slowing the generator down (the "coordinated omission" of closed-loop tools).

>>> plan = LoadPlan("http://127.0.0.1:8080", rate=50, count=500, route="v2")  # doctest: +SKIP
>>> result = run_load_sync(plan)  # doctest: +SKIP
>>> result.quantile(0.99)  # doctest: +SKIP
0.0123
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from inferwatch.operate.promapi import PrometheusAPI, PrometheusError
from inferwatch.stack import queries

__all__ = [
    "QUANTILES",
    "ROUTES",
    "LoadPlan",
    "LoadResult",
    "Payload",
    "ProgressCallback",
    "RouteName",
    "build_payloads",
    "first_prometheus_count",
    "prometheus_count",
    "prometheus_window",
    "report",
    "run_load",
    "run_load_sync",
    "run_with_progress",
]

RouteName = Literal["predictions", "v2", "infer"]
ROUTES: tuple[RouteName, ...] = ("predictions", "v2", "infer")
QUANTILES = (0.5, 0.95, 0.99)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(sent, total)`` after each request is fired."""


@dataclass(frozen=True)
class Payload:
    """One pre-encoded request body and the digit it shows."""

    path: str
    body: bytes
    content_type: str
    label: int


@dataclass(frozen=True)
class LoadPlan:
    """What to send, how fast and for how long.

    The run ends after ``count`` requests or ``duration`` seconds of schedule, whichever comes
    first. ``max_in_flight`` is a safety cap on outstanding requests: when it is reached, the
    next request waits for a free slot and is sent late (counted in ``LoadResult.late``), and
    its latency is still measured from its scheduled time, so the wait shows up as latency.
    ``timeout`` bounds each request from connect to the last byte of the response.
    """

    url: str
    rate: float
    count: int | None = None
    duration: float | None = None
    model: str = "digits"
    route: RouteName = "predictions"
    timeout: float = 10.0
    max_in_flight: int = 1000
    feedback: bool = False  # after each answer, POST /feedback with the digit's true label

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {self.route!r}")
        if not self.rate > 0:
            raise ValueError("rate must be > 0")
        if self.count is None and self.duration is None:
            raise ValueError("give a request count, a duration, or both")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("duration must be > 0")
        if not self.timeout > 0:
            raise ValueError("timeout must be > 0")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")

    @property
    def total(self) -> int:
        """Requests in the schedule: those due before ``duration``, at most ``count``."""
        limits = []
        if self.count is not None:
            limits.append(self.count)
        if self.duration is not None:
            # Request i is due at i / rate; the float slack keeps 1 s at 50/s at 50, not 51.
            limits.append(max(1, math.ceil(self.duration * self.rate - 1e-9)))
        return min(limits)


@dataclass
class LoadResult:
    """What a run saw; latencies are seconds from each request's scheduled time."""

    sent: int = 0
    ok: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: dict[str, int] = field(default_factory=dict)
    latencies_ok: np.ndarray = field(default_factory=lambda: np.empty(0))
    started_at: float = 0.0
    ended_at: float = 0.0
    achieved_rate: float = 0.0
    late: int = 0
    """Requests that waited for a free slot under ``max_in_flight``."""
    retry_after: int = 0
    """Non-2xx responses that carried a ``Retry-After`` header: shed, to be retried later."""
    feedback: dict[str, int] = field(default_factory=dict)
    """With ``LoadPlan.feedback``: the service's verdicts ("correct", "incorrect") and
    refusals ("HTTP 404", ...)."""

    @property
    def feedback_accuracy(self) -> float | None:
        scored = self.feedback.get("correct", 0) + self.feedback.get("incorrect", 0)
        return None if scored == 0 else self.feedback.get("correct", 0) / scored

    @property
    def errors(self) -> int:
        """Non-2xx responses plus transport errors."""
        bad = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return bad + sum(self.transport_errors.values())

    def quantile(self, q: float) -> float | None:
        """Client-side latency quantile of successful requests, in seconds."""
        if len(self.latencies_ok) == 0:
            return None
        return float(np.quantile(self.latencies_ok, q, method="linear"))


def build_payloads(route: RouteName, model: str = "digits") -> list[Payload]:
    """Every held-out digit, encoded for ``route``, in a fixed order."""
    from inferwatch.models.digits import digit_png, heldout_digits

    data = heldout_digits()
    payloads = []
    for image, label in zip(data.images, data.labels, strict=True):
        if route == "predictions":
            payloads.append(Payload(f"/predictions/{quote(model, safe='')}",
                                    digit_png(image), "image/png", int(label)))
        elif route == "infer":
            body = {"image_base64": base64.b64encode(digit_png(image)).decode("ascii")}
            payloads.append(Payload("/infer", _json(body), "application/json", int(label)))
        else:
            tensor = {"name": "input-0", "shape": [1, 8, 8], "datatype": "FP32",
                      "data": [float(v) for v in image.reshape(-1)]}
            payloads.append(Payload(f"/v2/models/{quote(model, safe='')}/infer",
                                    _json({"inputs": [tensor]}), "application/json",
                                    int(label)))
    return payloads


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def run_load(plan: LoadPlan, progress: ProgressCallback | None = None,
                   payloads: Sequence[Payload] | None = None) -> LoadResult:
    """Run ``plan``; ``progress(sent, total)`` is called after each request is fired.

    ``payloads`` defaults to ``build_payloads(plan.route, plan.model)``, cycled in order.
    """
    if payloads is None:
        payloads = build_payloads(plan.route, plan.model)
    if not payloads:
        raise ValueError("no payloads to send")
    base = plan.url.rstrip("/")
    requests = [(base + p.path, p.body, {"Content-Type": p.content_type}, p.label)
                for p in payloads]
    feedback: dict[str, int] = {}
    total = plan.total
    interval = 1.0 / plan.rate
    statuses: dict[int, int] = {}
    transport_errors: dict[str, int] = {}
    latencies: list[float] = []
    slots = asyncio.Semaphore(plan.max_in_flight)
    last_done = 0.0
    retry_after = 0

    async def one(session: aiohttp.ClientSession, i: int, scheduled: float) -> None:
        nonlocal last_done, retry_after
        url, body, headers, label = requests[i % len(requests)]
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
            status = response.status
            statuses[status] = statuses.get(status, 0) + 1
            if 200 <= status < 300:
                latencies.append(time.perf_counter() - scheduled)
                if plan.feedback:
                    verdict = await _send_feedback(session, base, response, answer, label)
                    feedback[verdict] = feedback.get(verdict, 0) + 1
            elif "Retry-After" in response.headers:
                retry_after += 1
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            name = type(exc).__name__
            transport_errors[name] = transport_errors.get(name, 0) + 1
        finally:
            last_done = time.perf_counter()
            slots.release()

    sent = late = 0
    tasks: set[asyncio.Task[None]] = set()
    # aiohttp, not httpx: on loopback httpx fell behind and collapsed from ~1,500 req/s,
    # aiohttp held 8,000 req/s on time (2 cores, client and server on the same machine).
    connector = aiohttp.TCPConnector(limit=plan.max_in_flight)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started_at = time.time()
        t0 = time.perf_counter()
        first_fire = last_fire = t0
        for i in range(total):
            scheduled = t0 + i * interval
            # A loop so that a timer that fires early (uvloop's are 1 ms) never sends early.
            while (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            if slots.locked():
                late += 1
            await slots.acquire()
            task = asyncio.create_task(one(session, i, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            last_fire = time.perf_counter()
            if i == 0:
                first_fire = last_fire
            sent += 1
            if progress is not None:
                progress(sent, total)
        if tasks:
            await asyncio.gather(*tasks)
    ended_at = started_at + (max(last_done, last_fire) - t0)
    # Sends per second over the sending window; equals ``rate`` when every send was on time.
    achieved = sent / (last_fire - first_fire + interval)
    return LoadResult(
        sent=sent,
        ok=len(latencies),
        statuses=dict(sorted(statuses.items())),
        transport_errors=dict(sorted(transport_errors.items())),
        latencies_ok=np.asarray(latencies, dtype=np.float64),
        started_at=started_at,
        ended_at=ended_at,
        achieved_rate=achieved,
        late=late,
        retry_after=retry_after,
        feedback=dict(sorted(feedback.items())),
    )


async def _send_feedback(session: aiohttp.ClientSession, base: str,
                         response: aiohttp.ClientResponse, answer: bytes, label: int) -> str:
    """Tell the service the true label of the answer; returns its verdict."""
    request_id = response.headers.get("X-Request-ID")
    if request_id is None:  # Open Inference Protocol answers carry it in the body
        request_id = json.loads(answer).get("id")
    async with session.post(f"{base}/feedback",
                            json={"request_id": request_id, "label": label}) as scored:
        if scored.status != 200:
            return f"HTTP {scored.status}"
        return "correct" if (await scored.json())["correct"] else "incorrect"


def run_load_sync(plan: LoadPlan, progress: ProgressCallback | None = None,
                  payloads: Sequence[Payload] | None = None) -> LoadResult:
    """:func:`run_load` in a new event loop: uvloop's when installed (the ``fast`` extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_load(plan, progress, payloads))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_load(plan, progress, payloads))


def run_with_progress(plan: LoadPlan, console: Console) -> LoadResult:
    """Run ``plan`` with a rich progress bar of requests sent."""
    payloads = build_payloads(plan.route, plan.model)
    label = f"{plan.rate:g}/s"
    if plan.duration is not None:
        label += f" for {plan.duration:g}s"
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False,
    ) as bar:
        task = bar.add_task(label, total=plan.total)

        def advance(sent: int, total: int) -> None:
            bar.update(task, completed=sent)

        return run_load_sync(plan, advance, payloads)


def prometheus_window(result: LoadResult, scrape_interval: float = 1.0,
                      margin: float = 0.5) -> tuple[float, int]:
    """``(at, window_s)``: when to evaluate and the range that covers the whole load.

    ``at`` is one scrape (plus ``margin``) after the load ended, so a sample taken after the
    last response exists; the window reaches one scrape before the start, so a sample taken
    before the first request exists too.
    """
    at = result.ended_at + scrape_interval + margin
    window = math.ceil(at - result.started_at + scrape_interval)
    return at, window


def prometheus_count(prometheus: PrometheusAPI, model: str | None = None,
                     at: float | None = None) -> float | None:
    """The requests Prometheus counted so far: take it before a run for an exact delta."""
    return prometheus.scalar(queries.requests_now(_matcher(model)), at)


def first_prometheus_count(prometheus: PrometheusAPI, model: str | None,
                           scrape_interval: float) -> float | None:
    """:func:`prometheus_count` once Prometheus has scraped the service at least once; None
    when it has no sample of it within three scrapes (and five seconds)."""
    deadline = time.monotonic() + 3 * scrape_interval + 5
    while time.monotonic() < deadline:
        count = prometheus_count(prometheus, model)
        if count is not None:
            return count
        time.sleep(min(scrape_interval, 1.0))
    return None


def _matcher(model: str | None) -> str:
    return "" if model is None else "model=" + json.dumps(model)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isnan(seconds) else seconds * 1000.0


def _query_prometheus(
    result: LoadResult, prometheus: PrometheusAPI, model: str | None, scrape_interval: float,
    count_before: float | None,
) -> dict[str, Any]:
    at, window = prometheus_window(result, scrape_interval)
    time.sleep(max(0.0, at - time.time()))
    sel = _matcher(model)
    out: dict[str, Any] = {"at": at, "window_s": window}
    try:
        for q in QUANTILES:
            expr = queries.run_latency_quantile(q, f"{window}s", sel)
            out[f"p{round(q * 100)}_ms"] = _ms(prometheus.scalar(expr, at))
        out["requests_increase"] = prometheus.scalar(queries.run_requests(f"{window}s", sel), at)
        out["requests_delta"] = None
        if count_before is not None:
            after = prometheus_count(prometheus, model, at)
            out["requests_delta"] = None if after is None else after - count_before
    except PrometheusError as exc:
        out["error"] = str(exc)
    return out


def report(
    result: LoadResult,
    console: Console,
    prometheus: PrometheusAPI | None = None,
    model: str | None = None,
    *,
    scrape_interval: float = 1.0,
    prom_count_before: float | None = None,
) -> dict[str, Any]:
    """Print a summary table and return its numbers.

    With ``prometheus``, waits until one scrape after the load ended and puts the server's own
    histogram estimate for the same window next to the client-side quantiles. ``increase()``
    extrapolates to the window's edges, so its request count is approximate; pass
    ``prom_count_before`` (from :func:`prometheus_count` before the run) for the exact delta.
    """
    numbers: dict[str, Any] = {
        "sent": result.sent,
        "ok": result.ok,
        "errors": result.errors,
        "late": result.late,
        "retry_after": result.retry_after,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "transport_errors": dict(result.transport_errors),
        "achieved_rate": result.achieved_rate,
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "duration_s": result.ended_at - result.started_at,
    }
    for q in QUANTILES:
        numbers[f"p{round(q * 100)}_ms"] = _ms(result.quantile(q))
    prom = None
    if prometheus is not None:
        prom = _query_prometheus(result, prometheus, model, scrape_interval, prom_count_before)
        numbers["prometheus"] = prom

    table = Table(title="inferwatch load", show_header=True)
    table.add_column("")
    table.add_column("client", justify="right")
    if prom is not None:
        table.add_column(f"prometheus [{prom['window_s']}s]", justify="right")
    rows: list[tuple[str, str, str]] = [
        ("sent", str(result.sent), _count(prom)),
        ("ok (2xx)", str(result.ok), ""),
    ]
    rows += [(f"HTTP {status}", str(n), "") for status, n in result.statuses.items()
             if not 200 <= status < 300]
    if result.retry_after:
        rows.append(("with Retry-After", str(result.retry_after), ""))
    rows += [(name, str(n), "") for name, n in result.transport_errors.items()]
    if result.late:
        rows.append(("sent late (max in flight)", str(result.late), ""))
    rows.append(("achieved rate", f"{result.achieved_rate:.1f}/s", ""))
    rows.append(("duration", f"{numbers['duration_s']:.2f} s", ""))
    for q in QUANTILES:
        key = f"p{round(q * 100)}_ms"
        rows.append((f"p{round(q * 100)} latency", _fmt_ms(numbers[key]),
                     _fmt_ms(prom.get(key)) if prom is not None else ""))
    for label, client, server in rows:
        table.add_row(label, client, *([server] if prom is not None else []))
    console.print(table)
    if prom is not None and "error" in prom:
        console.print(f"[yellow]Prometheus query failed:[/] {prom['error']}")
    return numbers


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def _count(prom: dict[str, Any] | None) -> str:
    if prom is None:
        return ""
    increase = prom.get("requests_increase")
    text = "-" if increase is None else f"~{increase:.0f}"
    if prom.get("requests_delta") is not None:
        text = f"{prom['requests_delta']:.0f} ({text})"
    return text
