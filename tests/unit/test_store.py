"""The remote_write store of `up --replicas`: VictoriaMetrics by default, or a Prometheus."""

from pathlib import Path

import pytest

from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.profiles import DEFAULT, FAST
from inferwatch.stack.runner import (
    VM_ENV_PREFIX,
    Stack,
    StackError,
    StackOptions,
    components,
    store_component,
)
from inferwatch.stack.scaleout import (
    STORE_CONFIG,
    check_retention,
    render_replica_prometheus_config,
    write_scaleout_config,
)
from inferwatch.stack.webconfig import BasicAuth

PORTS = StackPorts(store=19190)


def options(tmp_path: Path, **kw: object) -> StackOptions:
    return StackOptions(run_dir=tmp_path, profile=FAST, ports=PORTS, replicas=2,
                        replica_ports=[18081], **kw)  # type: ignore[arg-type]


def test_victoria_metrics_is_the_default_store_with_retention_dedup_and_no_latency_offset(
        tmp_path: Path) -> None:
    store = store_component(options(tmp_path))
    assert store.name == "store" and store.argv[0].endswith("victoria-metrics")
    assert store.argv[1:] == [
        "-httpListenAddr=127.0.0.1:19190", f"-storageDataPath={tmp_path / 'data' / 'store'}",
        "-retentionPeriod=90d", "-dedup.minScrapeInterval=1s", "-search.latencyOffset=0s"]
    assert store.ready_url == "http://127.0.0.1:19190/health"
    assert store.url == "http://127.0.0.1:19190" and store.env_files == {}
    slow = store_component(StackOptions(run_dir=tmp_path, profile=DEFAULT, ports=PORTS,
                                        replicas=3, store_retention="2w"))
    assert {"-retentionPeriod=2w", "-dedup.minScrapeInterval=10s"} <= set(slow.argv)
    # Started before the Prometheus that writes to it.
    names = [p.name for p in components(options(tmp_path))]
    assert names.index("store") < names.index("prometheus")
    assert "store" not in [p.name for p in components(StackOptions(
        run_dir=tmp_path, profile=FAST, ports=PORTS))]


def test_victoria_metrics_password_travels_in_its_environment_not_its_argv(
        tmp_path: Path) -> None:
    store = store_component(options(tmp_path, prometheus_user="ops", bind="::1"))
    assert {"-httpAuth.username=ops", "-envflag.enable", f"-envflag.prefix={VM_ENV_PREFIX}",
            "-enableTCP6", "-httpListenAddr=[::1]:19190"} <= set(store.argv)
    assert not any(a.startswith("-httpAuth.password") for a in store.argv)
    assert store.env_files == {f"{VM_ENV_PREFIX}httpAuth_password":
                               tmp_path / "prometheus-password"}


def test_prometheus_store_receives_remote_write_and_keeps_the_retention(tmp_path: Path) -> None:
    store = store_component(options(tmp_path, store="prometheus", store_retention="1y",
                                    prometheus_user="ops"))
    assert store.argv[0].endswith("prometheus")
    assert {f"--config.file={tmp_path / STORE_CONFIG}", "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=1y", f"--storage.tsdb.path={tmp_path / 'data/store'}",
            "--web.listen-address=127.0.0.1:19190"} <= set(store.argv)
    assert store.ready_url == "http://127.0.0.1:19190/-/ready" and store.auth is not None
    written = write_scaleout_config(tmp_path, FAST, PORTS, [8080, 18081], store="prometheus")
    assert written["store"] == tmp_path / STORE_CONFIG
    assert "store" not in write_scaleout_config(tmp_path / "vm", FAST, PORTS, [8080, 18081])


def test_the_replica_set_writes_to_the_store_with_the_same_user() -> None:
    auth = BasicAuth("ops", Path("/run/prometheus-password"))
    config = render_replica_prometheus_config(FAST, PORTS, "eu-1", "digits", auth=auth)
    assert config["remote_write"] == [{
        "name": "store", "url": "http://127.0.0.1:19190/api/v1/write",
        "queue_config": {"batch_send_deadline": "1s"},
        "basic_auth": {"username": "ops", "password_file": "/run/prometheus-password"}}]


@pytest.mark.parametrize("retention", ["90", "5m", "0d", "90 d", "1.5y", ""])
def test_a_retention_read_differently_by_the_two_stores_is_refused(
        tmp_path: Path, retention: str) -> None:
    with pytest.raises(ValueError, match="whole number"):
        check_retention(retention)
    with pytest.raises(StackError, match="whole number"):
        Stack(options(tmp_path, store_retention=retention)).start()
    assert not (tmp_path / "state.json").exists()
