"""Three replicas found through file_sd; a global Prometheus fed by remote_write."""

import os
import signal
import time
from collections.abc import Iterator

import pytest

from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.config import HOST, StackPorts, url
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
def global_prom(replicas: Stack) -> Iterator[PrometheusAPI]:
    api = PrometheusAPI(url(replicas.opts.ports.global_prometheus))
    yield api
    api.close()


def wait_for(fn, timeout: float = 40.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_replicas_are_discovered_through_file_sd(replicas: Stack, local: PrometheusAPI) -> None:
    targets = [t for t in local.targets() if t["labels"]["job"] == "inference"]
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(
        f"{HOST}:{port}" for port in replicas.opts.service_ports)
    assert all(t["discoveredLabels"]["__meta_filepath"].endswith("targets/inference.json")
               for t in targets)
    assert {p.name for p in replicas.processes} >= {
        "service-0", "service-1", "service-2", "prometheus", "prometheus-global"}


def test_counts_summed_in_the_global_prometheus_equal_requests_sent(
        replicas: Stack, local: PrometheusAPI, global_prom: PrometheusAPI) -> None:
    for port, count in zip(replicas.opts.service_ports, SENT, strict=True):
        result = run_load_sync(LoadPlan(url=url(port), rate=200, count=count))
        assert result.ok == count, result.statuses
    total = sum(SENT)
    query = 'sum(inference_requests_total{cluster="local", replica_set="inferwatch"})'
    assert wait_for(lambda: global_prom.scalar(query) == total), global_prom.query(query)
    per_instance = {s.labels["instance"]: s.value for s in global_prom.query(
        "sum by (instance) (inference_requests_total)")}
    assert per_instance == {f"{HOST}:{port}": float(count) for port, count in zip(
        replicas.opts.service_ports, SENT, strict=True)}
    # The global copy carries the source's external labels; the local one has none stored.
    labels = global_prom.query("inference_requests_total")[0].labels
    assert labels["cluster"] == "local" and labels["replica_set"] == "inferwatch"
    assert "cluster" not in local.query("inference_requests_total")[0].labels
    series = local.query('count by (instance) ({job="inference"})')
    assert len(series) == REPLICAS and all(s.value <= SERIES_BUDGET for s in series), series


def test_killed_replica_fires_target_down_for_that_instance_only(
        replicas: Stack, local: PrometheusAPI, global_prom: PrometheusAPI) -> None:
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
    # ALERTS is a series like any other: the global view sees which replica is down.
    in_global = wait_for(lambda: global_prom.query(
        'ALERTS{alertname="TargetDown", alertstate="firing"}'))
    assert [s.labels["instance"] for s in in_global] == [instance]
    assert in_global[0].labels["cluster"] == "local"


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
