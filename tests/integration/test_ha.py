"""`up --ha` with the real binaries: two Prometheus servers writing to VictoriaMetrics and
three gossiping Alertmanagers. During a 50% error fault one Prometheus and one Alertmanager
are SIGKILLed: the page still arrives, once, and the store's counts stay exact and gapless."""

import collections
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from inferwatch.operate.chaos import ChaosClient
from inferwatch.operate.drills import wait_for_notification
from inferwatch.operate.load import LoadPlan, LoadResult, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.inbox import read_inbox
from inferwatch.stack.profiles import FAST, parse_duration
from inferwatch.stack.runner import Stack, StackOptions

ALERT = "HighInferenceErrorRate"
RATE = 40.0  # requests per second from the test's own client: the counts it compares


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(StackOptions(run_dir=tmp_path_factory.mktemp("ha"), profile=FAST,
                            ports=StackPorts.free(), ha=True)) as stack:
        for port in (stack.opts.ports.prometheus, stack.opts.ports.prometheus_b):
            with closing(PrometheusAPI(url(port))) as api:
                api.wait_for_scrape("inference", after=0)
        yield stack


def _duplicates(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Notifications sent more than once: the same group, status and alerts (by fingerprint
    and start), which only a second Alertmanager would send."""
    seen = collections.Counter(
        (r["notification"]["groupKey"], r["notification"]["status"],
         tuple(sorted((a["fingerprint"], a["status"], a["startsAt"])
                      for a in r["notification"]["alerts"])))
        for r in records)
    return [key for key, count in seen.items() if count > 1]


def _firing_pages(records: list[dict[str, Any]], after: float) -> list[dict[str, Any]]:
    return [r for r in records if r["received_at"] >= after
            and r["notification"]["status"] == "firing"
            and r["notification"]["commonLabels"].get("alertname") == ALERT]


def _fault_and_page(stack: Stack, chaos: ChaosClient, kill: bool) -> tuple[float, LoadResult,
                                                                           float]:
    """A 50% error fault under steady load, with or without the kills; the seconds from the
    fault to the page, the client's result, and when the fault began."""
    result: list[LoadResult] = []
    load = threading.Thread(target=lambda: result.append(run_load_sync(LoadPlan(
        url=url(stack.opts.ports.service), rate=RATE, duration=30))))
    load.start()
    time.sleep(3)  # a few clean scrapes first
    injected = time.time()
    chaos.errors(0.5)
    if kill:
        stack.stop_component("prometheus", kill=True)
        stack.stop_component("alertmanager", kill=True)
    fired = wait_for_notification(stack.opts.run_dir / "inbox.jsonl", ALERT, "firing",
                                  injected, 60)
    load.join()
    chaos.clear()
    return fired["received_at"] - injected, result[0], injected


def test_the_page_arrives_once_and_the_store_stays_exact_across_the_kills(ha: Stack) -> None:
    inbox = ha.opts.run_dir / "inbox.jsonl"
    peer_timeout = parse_duration(FAST.peer_timeout)
    with ChaosClient.from_run_dir(ha.opts.run_dir) as chaos, \
            closing(PrometheusAPI(url(ha.opts.ports.store))) as store, \
            closing(PrometheusAPI(url(ha.opts.ports.prometheus_b))) as survivor:
        before = survivor.scalar('sum(inference_requests_total{job="inference"})') or 0.0
        calm, first, _ = _fault_and_page(ha, chaos, kill=False)
        wait_for_notification(inbox, ALERT, "resolved", time.time() - 1, 90)
        killed, second, injected = _fault_and_page(ha, chaos, kill=True)
        print(f"fault-to-page: {calm:.1f} s with all up, {killed:.1f} s with one Prometheus "
              "and one Alertmanager SIGKILLed")
        # Every Alertmanager that could still send has had its turn.
        time.sleep(3 * peer_timeout + parse_duration(FAST.group_interval))
        records = read_inbox(inbox)
        assert len(_firing_pages(records, injected)) == 1, _firing_pages(records, injected)
        assert _duplicates(records) == []

        sent = first.sent + second.sent
        assert sum(first.statuses.values()) + sum(second.statuses.values()) == sent
        assert second.statuses.get(500, 0) > 0  # the fault was on
        total = 'sum(inference_requests_total{job="inference"})'
        deadline = time.monotonic() + 30
        while store.scalar(total, nocache=True) != before + sent and time.monotonic() < deadline:
            time.sleep(0.5)
        assert store.scalar(total, nocache=True) == before + sent
        assert survivor.scalar(total) == before + sent
        stored = (store.scalar(total, nocache=True) or 0.0) - before
        print(f"requests: client {sent} (500s: {first.statuses.get(500, 0)} + "
              f"{second.statuses.get(500, 0)}), store {stored:.0f}; firing pages of "
              f"{ALERT} after the kills: {len(_firing_pages(records, injected))}")
        # One copy of each series in the store (the replica label is dropped before it is
        # written), with samples at the scrape interval straight through the kill.
        now = time.time()
        raw = store.raw_samples('inference_requests_total{job="inference", model="digits"}',
                                injected - 10, now)
        assert len(raw) == 1 and "prometheus_replica" not in raw[0][0], raw
        times = [t for t, _ in raw[0][1]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert times[0] <= injected - 8 and times[-1] >= now - 3, times
        assert max(gaps) <= 2.5 * FAST.scrape_seconds, max(gaps)
        assert len(store.query('up{job="prometheus"}')) == 2  # a and b, one value each
        written = {s.labels["instance"]: s.value for s in store.query(
            'sum by (instance) (prometheus_remote_storage_bytes_total)')}
        series = store.scalar('count({__name__!=""})')
        print(f"series in the store: {series:.0f}; "
              f"remote_write bytes sent per Prometheus: {written}")
