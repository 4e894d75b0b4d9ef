import math
import socket
import stat
import time

import httpx
import pytest

from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.panels import SEED_PANELS
from inferwatch.stack.profiles import FAST
from inferwatch.stack.rules import render_rule_file
from inferwatch.stack.runner import Stack, StackError, StackOptions, alive, read_state

N = 400


def test_exact_count_and_seed_dashboard_queries(stack: Stack, prom: PrometheusAPI) -> None:
    service = url(stack.opts.ports.service)
    result = run_load_sync(LoadPlan(url=service, rate=100, count=N))
    assert result.sent == N and result.ok == N, result.statuses

    prom.wait_for_scrape("inference", after=time.time())
    prom.wait_for_scrape("node", after=time.time())
    # Evaluate at one instant whose rate windows (15 s) still hold the load, however slowly
    # this machine gets here.
    at = min(time.time(), result.ended_at + 3)
    assert prom.scalar("sum(inference_requests_total)", at) == N
    assert prom.scalar("sum(inference_latency_seconds_count)", at) == N
    assert prom.scalar("sum(inference_errors_total)", at) == 0

    for panel in SEED_PANELS:
        samples = prom.query(panel.query(FAST), at)
        assert samples, f"{panel.key}: {panel.query(FAST)} returned nothing"
        assert all(math.isfinite(s.value) for s in samples), (panel.key, samples)
    qps = prom.scalar(SEED_PANELS[0].query(FAST), at)
    assert qps is not None and qps > 0


def test_every_target_up_and_seed_rule_loaded(stack: Stack, prom: PrometheusAPI) -> None:
    prom.wait_for_scrape("prometheus", after=time.time())
    prom.wait_for_scrape("pushgateway", after=time.time())
    jobs = {t["labels"]["job"]: t["health"] for t in prom.targets()}
    assert jobs == {"inference": "up", "node": "up", "alertmanager": "up", "prometheus": "up",
                    "pushgateway": "up"}
    loaded = {r["name"]: r["health"] for g in prom.rules() for r in g["rules"]}
    generated = render_rule_file(FAST)
    expected = {r.get("alert") or r["record"] for g in generated["groups"] for r in g["rules"]}
    assert set(loaded) == expected and "HighInferenceErrorRate" in loaded
    assert set(loaded.values()) <= {"ok", "unknown"}, loaded
    ams = httpx.get(f"{prom.url}/api/v1/alertmanagers").json()["data"]["activeAlertmanagers"]
    assert ams and str(stack.opts.ports.alertmanager) in ams[0]["url"]


def test_prometheus_lifecycle_api_is_off_by_default(stack: Stack, prom: PrometheusAPI) -> None:
    # /-/quit only once /-/reload proved it refused: it would stop this module's stack.
    assert httpx.post(f"{prom.url}/-/reload").status_code == 403
    assert httpx.post(f"{prom.url}/-/quit").status_code == 403
    assert prom.ready()


def test_run_dir_is_for_its_owner_only(stack: Stack) -> None:
    d = stack.opts.run_dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    expected = [d / "data", d / "logs" / "inbox.log", d / "inbox.jsonl", d / "prometheus.yml",
                d / "alertmanager.yml", d / "rules" / "inferwatch.yml", d / "state.json",
                d / "data" / "prometheus" / "wal", d / "data" / "alertmanager"]
    assert all(p.exists() for p in expected), [p for p in expected if not p.exists()]
    # What the components wrote themselves (TSDB, silences) included.
    shared = {str(p.relative_to(d)): oct(stat.S_IMODE(p.lstat().st_mode))
              for p in d.rglob("*") if p.lstat().st_mode & 0o077 and not p.is_symlink()}
    assert shared == {}


def test_busy_port_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ports = StackPorts.free()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports.prometheus))
        blocker.listen()
        stack = Stack(StackOptions(run_dir=tmp_path, profile=FAST, ports=ports))
        with pytest.raises(StackError, match=rf"{ports.prometheus} \(prometheus\)"):
            stack.start()
    assert read_state(tmp_path) == []


def test_stop_leaves_no_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stack = Stack(StackOptions(run_dir=tmp_path, profile=FAST, ports=StackPorts.free(),
                               traffic_rate=5))
    stack.start()
    processes = list(stack.processes)
    assert {p.name for p in processes} >= {"service", "prometheus", "alertmanager",
                                            "node_exporter", "pushgateway", "inbox", "traffic"}
    stack.stop()
    assert not any(alive(p) for p in processes)
    assert not (tmp_path / "state.json").exists()
