"""Components of the stack stopped and started again mid-run (issue 10): Prometheus keeps its
data across a restart, rate() survives a service crash, and an alert raised while Alertmanager
is down still reaches the inbox once it is back. Delays are printed (run with -s), not
asserted."""

import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferwatch.operate.drills import wait_for_notification
from inferwatch.operate.load import LoadPlan, prometheus_count, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import url
from inferwatch.stack.runner import Stack, alive

N_BEFORE = 150
N_AFTER = 70


@pytest.fixture(autouse=True)
def all_running(stack: Stack) -> Iterator[None]:
    """Whatever a test stopped is started again, so the next test finds the whole stack."""
    yield
    for process in list(stack.processes):
        if not alive(process):
            stack.start_component(process.name)


def send(stack: Stack, count: int) -> None:
    result = run_load_sync(LoadPlan(url=url(stack.opts.ports.service), rate=100, count=count))
    assert result.sent == count and result.ok == count, result.statuses


def firing(prom: PrometheusAPI, alertname: str, job: str) -> bool:
    return bool(prom.query(f'ALERTS{{alertname="{alertname}", job="{job}", '
                           'alertstate="firing"}'))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; the time.time() it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout:g}s")


def inbox(stack: Stack) -> Path:
    return stack.opts.run_dir / "inbox.jsonl"


def test_prometheus_restart_keeps_earlier_samples(stack: Stack, prom: PrometheusAPI) -> None:
    prom.wait_for_scrape("inference", after=time.time())
    before = prometheus_count(prom) or 0.0
    loaded_from = time.time()
    send(stack, N_BEFORE)
    prom.wait_for_scrape("inference", after=time.time())
    at = time.time()
    assert prometheus_count(prom, at=at) == before + N_BEFORE

    stopped = time.time()
    stack.restart("prometheus")  # SIGTERM: a clean shutdown, then the same --storage.tsdb.path
    print(f"\nPrometheus stop + start until ready: {time.time() - stopped:.1f} s")

    # The samples scraped before the restart come back from the TSDB (head block and WAL).
    assert prometheus_count(prom, at=at) == before + N_BEFORE
    # Steps end exactly at `at`, the first is at or before the load began.
    steps = math.ceil(at - loaded_from)
    window = prom.query_range("sum(inference_requests_total)", at - steps, at, 1)
    values = [float(v) for _, v in window["result"][0]["values"]]
    assert len(values) == steps + 1  # a point at every step: no gap
    assert values[0] == before and values[-1] == before + N_BEFORE
    # And it scrapes on from there: the service kept counting while Prometheus was away.
    prom.wait_for_scrape("inference", after=time.time())
    assert prometheus_count(prom) == before + N_BEFORE


def test_service_crash_keeps_rate_exact_and_target_down_fires_and_resolves(
        stack: Stack, prom: PrometheusAPI) -> None:
    job = {"job": "inference"}
    mark = time.time()
    prom.wait_for_scrape("inference", after=mark)  # a sample of the quiet counter after mark
    send(stack, N_BEFORE)
    prom.wait_for_scrape("inference", after=time.time())  # the last sample holds all of them

    killed = time.time()
    stack.stop_component("service", kill=True)  # SIGKILL: no chance to say goodbye
    fired_in_prometheus = wait_until(lambda: firing(prom, "TargetDown", "inference"), 60,
                                     "TargetDown firing in ALERTS")
    notified = wait_for_notification(inbox(stack), "TargetDown", "firing", killed, 60, job)
    print(f"\nservice SIGKILL -> TargetDown firing in Prometheus: "
          f"{fired_in_prometheus - killed:.1f} s, in the inbox: "
          f"{notified['received_at'] - killed:.1f} s")

    restarted = time.time()
    stack.start_component("service")
    started = time.time()
    # The counter starts again at zero: a scrape of it before any request, so Prometheus sees
    # the drop (a reset) rather than a counter that only slowed down.
    prom.wait_for_scrape("inference", after=started)
    send(stack, N_AFTER)
    prom.wait_for_scrape("inference", after=time.time())
    resolved_in_prometheus = wait_until(lambda: not firing(prom, "TargetDown", "inference"), 60,
                                        "TargetDown resolved in ALERTS")
    resolved = wait_for_notification(inbox(stack), "TargetDown", "resolved", restarted, 60, job)
    print(f"service start until ready: {started - restarted:.1f} s; start -> TargetDown "
          f"resolved in Prometheus: {resolved_in_prometheus - restarted:.1f} s, in the inbox: "
          f"{resolved['received_at'] - restarted:.1f} s")

    # increase() is last - first, plus the value before each drop (the reset), times an
    # extrapolation factor that stretches the sampled span towards the window's edges. Over
    # any window it is therefore only near the truth. Choosing the window so that both edges
    # are sample timestamps (Prometheus 2.x ranges include their start) makes that factor 1,
    # and increase() must then equal exactly what was sent on both sides of the crash.
    ((_, points),) = prom.raw_samples("inference_requests_total", mark, time.time())
    points = [p for p in points if p[0] > mark]
    first, last = points[0][0], points[-1][0]
    span_ms = round((last - first) * 1000)
    selector = f"inference_requests_total[{span_ms}ms]"
    assert prom.scalar(f"resets({selector})", last) == 1
    assert prom.scalar(f"increase({selector})", last) == N_BEFORE + N_AFTER
    rate = prom.scalar(f"rate({selector})", last)
    assert rate == pytest.approx((N_BEFORE + N_AFTER) / (span_ms / 1000), rel=1e-9)
    assert points[-1][1] == N_AFTER  # the raw counter only knows what came after the crash


def test_alert_raised_while_alertmanager_down_is_delivered_after_it_returns(
        stack: Stack, prom: PrometheusAPI) -> None:
    job = {"job": "node"}

    def send_errors() -> float:
        text = httpx.get(f"{prom.url}/metrics", timeout=5).text
        return sum(s.value for f in text_string_to_metric_families(text)
                   if f.name == "prometheus_notifications_errors" for s in f.samples
                   if s.name.endswith("_total"))

    am_down = time.time()
    stack.stop_component("alertmanager")
    stack.stop_component("node_exporter", kill=True)
    wait_until(lambda: firing(prom, "TargetDown", "node"), 60, "TargetDown{job=node} firing")
    # Prometheus does not queue what it failed to send: at each evaluation it resends a firing
    # alert whose last send is more than --rules.alert.resend-delay old (1 s in the fast
    # profile, as is the evaluation interval: so every 2 s). Let a few of those fail; one of
    # the next ones is what reaches Alertmanager once it is back.
    errors = send_errors()
    wait_until(lambda: send_errors() >= errors + 3, 60, "three failed sends to Alertmanager")
    restarting = time.time()
    stack.start_component("alertmanager")  # the same --storage.path
    am_back = time.time()

    notified = wait_for_notification(inbox(stack), "TargetDown", "firing", am_down, 60, job)
    alert = next(a for a in notified["notification"]["alerts"]
                 if a["labels"]["alertname"] == "TargetDown" and a["labels"]["job"] == "node")
    # It fired while Alertmanager was gone, so what arrived is one of Prometheus' resends.
    assert datetime.fromisoformat(alert["startsAt"]).timestamp() < restarting
    assert notified["received_at"] > restarting
    print(f"\nAlertmanager down for {am_back - am_down:.1f} s; back -> TargetDown{{job=node}} "
          f"in the inbox: {notified['received_at'] - am_back:.1f} s")
