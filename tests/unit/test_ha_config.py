"""The HA replicas' configuration: the replica label exists only where it must differ."""

from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.config import render_prometheus_config
from inferwatch.stack.ha import REPLICA_LABEL, cluster_flags, render_ha_prometheus_config
from inferwatch.stack.profiles import FAST
from inferwatch.stack.scaleout import store_remote_write


def test_replica_label_is_dropped_from_alerts_and_remote_write_only() -> None:
    single = render_prometheus_config(FAST, StackPorts())
    single["remote_write"] = [store_remote_write(FAST, StackPorts())]
    members, managers = ["h:1", "h:2"], ["h:3", "h:4", "h:5"]
    config = render_ha_prometheus_config(single, "b", members, managers)
    assert config["global"]["external_labels"][REPLICA_LABEL] == "b"
    drop = [{"action": "labeldrop", "regex": REPLICA_LABEL}]
    assert config["alerting"]["alert_relabel_configs"] == drop
    assert config["remote_write"][0]["write_relabel_configs"] == drop
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": managers}]
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs["prometheus"] == members and jobs["alertmanager"] == managers
    assert REPLICA_LABEL not in single["global"]["external_labels"]  # the input is untouched


def test_each_alertmanager_knows_the_other_two_on_loopback() -> None:
    flags = cluster_flags(1, [9094, 9194, 9294], "2s")
    assert flags == ["--cluster.listen-address=127.0.0.1:9194",
                     "--cluster.advertise-address=127.0.0.1:9194",
                     "--cluster.peer=127.0.0.1:9094", "--cluster.peer=127.0.0.1:9294",
                     "--cluster.peer-timeout=2s"]
