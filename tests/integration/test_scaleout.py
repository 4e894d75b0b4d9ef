"""Three replicas found through file_sd; VictoriaMetrics, the default store, fed by
remote_write; a Prometheus store on demand."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from inferwatch.operate.doctor import FAIL, OK, Doctor
from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import HOST, StackPorts, url
from inferwatch.stack.kubernetes import QUEUE_METRIC, KubernetesOptions, adapter_values
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Stack, StackOptions
from inferwatch.stack.scaleout import TARGETS_FILE, write_targets

REPLICAS = 3
SENT = (120, 80, 50)  # a different count per replica: a lost replica would show
SERIES_BUDGET = 500  # per replica serving digits: docs/deploy.md, "Cardinality budget"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(StackOptions(run_dir=tmp_path_factory.mktemp("replicas"), profile=FAST,
                            ports=StackPorts.free(), replicas=REPLICAS)) as stack:
        yield stack


@pytest.fixture(scope="module")
def local(replicas: Stack) -> Iterator[PrometheusAPI]:
    api = PrometheusAPI(url(replicas.opts.ports.prometheus))
    api.wait_for_scrape("inference", after=0)
    yield api
    api.close()


@pytest.fixture(scope="module")
def store(replicas: Stack) -> Iterator[PrometheusAPI]:
    api = PrometheusAPI(url(replicas.opts.ports.store))
    yield api
    api.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferwatch", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def send(ports: list[int], counts: tuple[int, ...]) -> None:
    for port, count in zip(ports, counts, strict=True):
        result = run_load_sync(LoadPlan(url=url(port), rate=200, count=count))
        assert result.ok == count, result.statuses


STORED_TOTAL = 'inference_requests_total{cluster="local", replica_set="inferwatch"}'
QUERY_TOTAL = f"sum({STORED_TOTAL})"


def wait_for(fn, timeout: float = 40.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_a_prometheus_store_receives_the_same_exact_counts(tmp_path: Path) -> None:
    """The Prometheus receiver, `up --store prometheus`; first in this module, so that it runs
    before the module's stack starts."""
    opts = StackOptions(run_dir=tmp_path, profile=FAST, ports=StackPorts.free(), replicas=2,
                        store="prometheus", store_retention="2w")
    with Stack(opts), closing(PrometheusAPI(url(opts.ports.prometheus))) as local, \
            closing(PrometheusAPI(url(opts.ports.store))) as store:
        local.wait_for_scrape("inference", after=0)
        send(opts.service_ports, SENT[:2])
        assert wait_for(lambda: store.scalar(QUERY_TOTAL) == sum(SENT[:2])), \
            store.query(QUERY_TOTAL)
        flags = store._get("/api/v1/status/flags")
        assert flags["storage.tsdb.retention.time"] == "2w"
        assert flags["web.enable-remote-write-receiver"] == "true"
        findings = Doctor(url(opts.ports.store), store=True).run()
        assert findings[0].detail.endswith("(Prometheus)")
        assert [f for f in findings if f.status == FAIL] == [], findings
        assert "writer cluster=local replica_set=inferwatch" in {f.check for f in findings}


def test_replicas_are_discovered_through_file_sd(replicas: Stack, local: PrometheusAPI) -> None:
    targets = [t for t in local.targets() if t["labels"]["job"] == "inference"]
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(
        f"{HOST}:{port}" for port in replicas.opts.service_ports)
    assert all(t["discoveredLabels"]["__meta_filepath"].endswith("targets/inference.json")
               for t in targets)
    assert {p.name for p in replicas.processes} >= {
        "service-0", "service-1", "service-2", "prometheus", "store"}
    state = json.loads((replicas.opts.run_dir / "state.json").read_text())
    assert state["store"] == {"kind": "victoria-metrics", "retention": "90d",
                              "url": url(replicas.opts.ports.store)}
    status = cli("status", "--run-dir", str(replicas.opts.run_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"store (victoria-metrics, remote_write receiver, retention 90d): " \
           f"{url(replicas.opts.ports.store)}/vmui/" in " ".join(status.stdout.split())


def test_counts_summed_in_the_store_equal_requests_sent(
        replicas: Stack, local: PrometheusAPI, store: PrometheusAPI) -> None:
    send(replicas.opts.service_ports, SENT)
    total = sum(SENT)
    assert wait_for(lambda: store.scalar(QUERY_TOTAL) == total), store.query(QUERY_TOTAL)
    per_instance = {s.labels["instance"]: s.value for s in store.query(
        "sum by (instance) (inference_requests_total)")}
    assert per_instance == {f"{HOST}:{port}": float(count) for port, count in zip(
        replicas.opts.service_ports, SENT, strict=True)}
    # The raw samples too: a range vector, which VictoriaMetrics sends as
    # application/stream+json.
    now = time.time()
    raw = store.raw_samples("inference_requests_total", now - 5, now)
    assert sum(points[-1][1] for _, points in raw) == total
    # The store's copy carries the source's external labels; the local one has none stored.
    labels = store.query("inference_requests_total")[0].labels
    assert labels["cluster"] == "local" and labels["replica_set"] == "inferwatch"
    assert "cluster" not in local.query("inference_requests_total")[0].labels
    series = local.query('count by (instance) ({job="inference"})')
    assert len(series) == REPLICAS and all(s.value <= SERIES_BUDGET for s in series), series
    # The store holds the same series per replica as the Prometheus that wrote them, once
    # the series that the last scrape created have arrived.
    def per_replica(api: PrometheusAPI) -> dict[str, float]:
        return {s.labels["instance"]: s.value
                for s in api.query('count by (instance) ({job="inference"})')}

    assert wait_for(lambda: per_replica(store) == per_replica(local)), per_replica(store)


def test_load_reads_its_exact_count_from_the_store(replicas: Stack,
                                                   store: PrometheusAPI) -> None:
    """`load --prometheus STORE`: a sample reaches the store up to one scrape plus one
    remote_write batch deadline (1 s each with --fast) after the load, later on a busy
    machine: 3 s of margin."""
    # increase() over the load's window (it starts --scrape-interval before the load) sees
    # an earlier test's requests that reached the store late: wait until none are that recent.
    assert wait_for(lambda: store.scalar(f"sum(changes({STORED_TOTAL}[7s]))") == 0)
    before = store.scalar(QUERY_TOTAL)
    run = cli("load", "--url", url(replicas.opts.service_ports[0]), "--rate", "100",
              "--count", "90", "--prometheus", url(replicas.opts.ports.store),
              "--scrape-interval", "5", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["ok"] == 90 and figures["prometheus"]["requests_delta"] == 90, figures
    # MetricsQL's increase() does not extrapolate: over a window that starts before the
    # first request it is the exact count, where Prometheus' is approximate.
    assert figures["prometheus"]["requests_increase"] == 90, figures
    assert wait_for(lambda: store.scalar(QUERY_TOTAL) == (before or 0) + 90)


def test_doctor_and_diagnose_read_the_store(replicas: Stack, store: PrometheusAPI) -> None:
    findings = Doctor(url(replicas.opts.ports.store)).run()
    by_check = {f.check: f for f in findings}
    assert by_check["store"].detail.endswith("(VictoriaMetrics)")
    assert by_check["writer cluster=local replica_set=inferwatch"].status == OK
    assert [f for f in findings if f.status == FAIL] == [], findings
    assert {"series", "tsdb disk", "clock"} <= set(by_check), findings
    assert str(replicas.opts.run_dir / "data" / "store") in by_check["tsdb disk"].detail
    run_dir = str(replicas.opts.run_dir)
    doctor = cli("doctor", "--store", "--run-dir", run_dir, "--json")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert json.loads(doctor.stdout)[0]["check"] == "store"
    diagnose = cli("diagnose", "--store", "--run-dir", run_dir, "--since", "2m", "--json")
    assert diagnose.returncode == 0, diagnose.stdout + diagnose.stderr
    diagnosis = json.loads(diagnose.stdout)
    # The store has no targets: the scrape interval (1 s) comes from its stored samples.
    assert diagnosis["window"]["step"] < 2, diagnosis["window"]
    assert "latency" in {e["signal"] for e in diagnosis["symptoms_measured"]}, diagnosis
    # Its /metrics and /health answer anyone; what it stores only the stack's user.
    assert httpx.get(f"{url(replicas.opts.ports.store)}/health").status_code == 200


def test_killed_replica_fires_target_down_for_that_instance_only(
        replicas: Stack, local: PrometheusAPI, store: PrometheusAPI) -> None:
    victim = replicas.process("service-1")
    instance = f"{HOST}:{replicas.opts.service_ports[1]}"
    os.killpg(victim.pid, signal.SIGKILL)

    def firing() -> list[dict[str, str]]:
        return [a["labels"] for a in local.alerts()
                if a["labels"]["alertname"] == "TargetDown" and a["state"] == "firing"]

    alerts = wait_for(firing)
    assert [(a["instance"], a["job"]) for a in alerts] == [(instance, "inference")]
    time.sleep(2)  # a second replica going down would have fired by now as well
    assert [a["instance"] for a in firing()] == [instance]
    # ALERTS is a series like any other: the store sees which replica is down.
    in_store = wait_for(lambda: store.query(
        'ALERTS{alertname="TargetDown", alertstate="firing"}'))
    assert [s.labels["instance"] for s in in_store] == [instance]
    assert in_store[0].labels["cluster"] == "local"
    # So does doctor on the store, from the writer's stored `up`.
    down = [f for f in Doctor(url(replicas.opts.ports.store)).run() if f.status == FAIL]
    assert [f.check for f in down] == [f"target inference {instance}"], down


def test_autoscaler_query_gives_one_value_per_replica(replicas: Stack,
                                                      local: PrometheusAPI) -> None:
    """prometheus-adapter's query, its template filled as the adapter would for pods (here
    a replica's instance stands for its pod), runs in a real Prometheus."""
    rule = adapter_values(KubernetesOptions())["rules"]["custom"][0]
    query = (rule["metricsQuery"].replace("<<.Series>>", QUEUE_METRIC)
             .replace("<<.LabelMatchers>>", 'job="inference"').replace("<<.GroupBy>>", "instance"))
    running = sorted(s.labels["instance"] for s in local.query('up{job="inference"} == 1'))
    assert len(running) == REPLICAS - 1  # one was killed above
    assert sorted(s.labels["instance"] for s in local.query(query)) == running


def test_rewritten_target_file_is_picked_up(replicas: Stack, local: PrometheusAPI) -> None:
    kept = replicas.opts.service_ports[:1]
    write_targets(replicas.opts.run_dir / TARGETS_FILE, kept)

    def instances() -> set[str]:
        return {t["labels"]["instance"] for t in local.targets()
                if t["labels"]["job"] == "inference"}

    assert wait_for(lambda: instances() == {f"{HOST}:{kept[0]}"}), instances()
