"""`inferwatch up --monitor` around a real TorchServe (issue 21): the stack without `serve`,
every target up, TorchServe's requests counted once under inferwatch's names, the panels its
own metrics can fill filled, and no alert firing, with and without the proxy in front; and
`render --monitor`'s files as promtool checks them."""

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import scrape
from torchserve import MODEL, SHEDDING, TorchServe, build_model_store, missing

from inferwatch.models.digits import heldout_digits
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.native import TORCHSERVE
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import FAST, parse_duration
from inferwatch.stack.runner import alive, read_state

pytestmark = pytest.mark.integration
needs_torchserve = pytest.mark.skipif(missing() is not None, reason=missing() or "")

STACK = {"inbox", "node_exporter", "pushgateway", "alertmanager", "prometheus", "dashboard"}
# The machine's own alerts: a busy test machine may really be short of CPU or memory.
HOST_ALERTS = {"HostCpuHigh", "HostMemoryHigh"}
BUSINESS = [p for p in DASHBOARD.panels if p.row == "business"]
RECORDED = {m.record for m in TORCHSERVE.series} | {"inference_model_info"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferwatch", *args], capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    directory = tmp_path_factory.mktemp("torchserve")
    server = TorchServe(directory / "torchserve", build_model_store(directory / "model"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def monitor_spec(ts: TorchServe) -> str:
    """The test's TorchServe listens on free ports: every address is named."""
    def hostport(base: str) -> str:
        return base.removeprefix("http://")

    return (f"torchserve={hostport(ts.inference)},metrics={hostport(ts.metrics)},"
            f"management={hostport(ts.management)}")


@dataclass(frozen=True)
class Monitoring:
    run_dir: Path
    ports: dict[str, int]
    prom: PrometheusAPI
    started: float

    def url(self, component: str) -> str:
        return f"http://127.0.0.1:{self.ports[component]}"


@contextmanager
def monitoring(ts: TorchServe, run_dir: Path, *extra: str) -> Iterator[Monitoring]:
    up = cli("up", "--monitor", monitor_spec(ts), *extra, "--detach", "--auto-ports", "--fast",
             "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stdout + up.stderr  # a failed `up` stopped what it started
    started = time.time()
    processes = read_state(run_dir)
    try:
        ports = json.loads((run_dir / "state.json").read_text())["ports"]
        prom = PrometheusAPI(f"http://127.0.0.1:{ports['prometheus']}")
        try:
            yield Monitoring(run_dir, ports, prom, started)
        finally:
            prom.close()
    finally:
        down = cli("down", "--run-dir", str(run_dir))
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(alive(p) for p in processes)


def wait_all_up(m: Monitoring, jobs: set[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        targets = m.prom.targets()
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if set(health) == jobs and set(health.values()) == {"up"}:
            return
        assert time.monotonic() < deadline, health
        time.sleep(0.5)


def send(m: Monitoring, base: str, job: str, n: int) -> None:
    """``n`` requests for `digits`; the first alone, scraped before the others: TorchServe
    creates its counter at the first request, and rate() sees no increase in the first
    sample of a series."""
    images = heldout_digits().images
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            pixels = [float(v) for v in images[i % len(images)].reshape(-1)]
            answer = client.post(f"{base}/predictions/{MODEL}", json={"pixels": pixels})
            assert answer.status_code == 200, answer.text
            if i == 0:
                m.prom.wait_for_scrape(job, after=time.time())


def settled(m: Monitoring, expr: str, expected: float) -> float | None:
    """``expr`` once Prometheus has scraped and the rules have recorded what was sent: it
    reaches ``expected`` within a few intervals, or the assertion shows what it was."""
    deadline = time.monotonic() + 20
    while (value := m.prom.scalar(expr)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def panels_with_data(m: Monitoring) -> set[str]:
    end = time.time()
    found = set()
    for panel in BUSINESS:
        data = m.prom.query_range(panel.query(FAST), end - 60, end, 1)
        if any(math.isfinite(float(v)) for series in data["result"] for _, v in series["values"]):
            found.add(panel.key)
    return found


def quiet_alerts(m: Monitoring) -> list[dict[str, Any]]:
    """The alerts pending or firing once every rule had the time to: the longest `for` of
    the profile after the stack started, evaluated a few times more."""
    hold = parse_duration(FAST.slow_alert_for) + 5 * parse_duration(FAST.evaluation_interval)
    time.sleep(max(0.0, m.started + hold - time.time()))
    # Every rule evaluates without error; the SLO group's (every minute) may not have yet.
    health = {(g["name"], r["health"]) for g in m.prom.rules() for r in g["rules"]}
    assert {h for _, h in health} <= {"ok", "unknown"}, health
    assert {g for g, h in health if h == "unknown"} <= {"inferwatch-slo"}, health
    return [a for a in m.prom.alerts() if a["labels"]["alertname"] not in HOST_ALERTS]


def model_alerts(m: Monitoring) -> set[tuple[str, str]]:
    """(alert, model) of every alert rule about one model."""
    return {(r["name"], r["labels"]["model"]) for g in m.prom.rules() for r in g["rules"]
            if r["type"] == "alerting" and "model" in r["labels"]}


def torchserve_count(ts: TorchServe) -> float:
    return sum(v for (name, labels), v in scrape(f"{ts.metrics}/metrics").items()
               if name == "ts_inference_requests_total" and ("model_name", MODEL) in labels)


@needs_torchserve
def test_up_monitors_torchserve_from_its_own_metrics(ts: TorchServe, tmp_path: Path) -> None:
    n = 40
    before = torchserve_count(ts)
    with monitoring(ts, tmp_path / "run") as m:
        assert {p.name for p in read_state(m.run_dir)} == STACK  # no service, no traffic
        wait_all_up(m, {"node", "alertmanager", "prometheus", "pushgateway", "torchserve"})
        send(m, ts.inference, "torchserve", n)
        assert torchserve_count(ts) - before == n
        assert settled(m, f'sum(inference_requests_total{{source="torchserve", '
                          f'model="{MODEL}"}})', before + n) == before + n

        # The panels whose series TorchServe's mapping records, and only those, have data.
        covered = {p.key for p in BUSINESS if p.metrics <= RECORDED}
        assert covered == {"qps", "latency_avg", "stage_latency"}
        assert panels_with_data(m) == covered

        # SLOs for TorchServe's models, not `serve`'s digits: no objective that its series
        # cannot measure (no per-model errors, no latency histogram), no "expected traffic".
        assert model_alerts(m) == set()
        assert quiet_alerts(m) == []


@needs_torchserve
def test_up_with_the_proxy_counts_each_request_once(ts: TorchServe, tmp_path: Path) -> None:
    n = 30
    before = torchserve_count(ts)
    with monitoring(ts, tmp_path / "run", "--proxy") as m:
        assert {p.name for p in read_state(m.run_dir)} == STACK | {"proxy"}
        wait_all_up(m, {"inference", "node", "alertmanager", "prometheus", "pushgateway",
                        "torchserve"})
        send(m, m.url("proxy"), "inference", n)
        assert torchserve_count(ts) - before == n
        assert settled(m, f'sum(inference_requests_total{{model="{MODEL}"}})', n) == n
        # The proxy's count alone: TorchServe's copy of a proxied model is not recorded.
        assert m.prom.query('inference_requests_total{source="torchserve"}') == []
        # Scraped apart from the proxy: waited for on its own, like the proxy's count.
        assert settled(m, f'sum(ts_inference_requests_total{{model_name="{MODEL}"}})',
                       before + n) == before + n

        with_data = panels_with_data(m)
        assert {"qps", "error_ratio", "latency_avg", "latency_p95", "in_flight"} <= with_data
        # Both objectives now measurable, for both of TorchServe's models.
        slo_alerts = {"InferenceErrorBudgetBurnFast", "InferenceErrorBudgetBurnSlow",
                      "InferenceLatencyBudgetBurnFast", "InferenceLatencyBudgetBurnSlow",
                      "InferenceLatencyHigh"}
        assert model_alerts(m) == {(a, model) for a in slo_alerts for model in (MODEL, SHEDDING)}
        assert quiet_alerts(m) == []


def test_render_monitor_passes_promtool(tmp_path: Path) -> None:
    """Rules and their generated tests for a model other than `serve`'s: every alert has a
    promtool test, and each passes (the unit tests render the other kinds' tests)."""
    rendered = cli("render", "--monitor", "vllm=127.0.0.1:8000,proxy", "--model", "opt",
                   "--out", str(tmp_path))
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    for argv in (["check", "config", str(tmp_path / "prometheus.yml")],
                 ["test", "rules", *map(str, sorted(tmp_path.glob("rule-tests/*.yml")))]):
        result = subprocess.run(["promtool", *argv], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
