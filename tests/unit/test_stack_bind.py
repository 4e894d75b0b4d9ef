from pathlib import Path

import pytest

from inferwatch.stack.addresses import StackPorts, address, connect_host, is_loopback
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import StackOptions, components, exposure_warnings


def options(tmp_path: Path, **kw: object) -> StackOptions:
    return StackOptions(run_dir=tmp_path, profile=FAST, ports=StackPorts(), traffic_rate=1,
                        **kw)  # type: ignore[arg-type]


def listen_addresses(opts: StackOptions) -> dict[str, str]:
    """Each component's listen address as its command line gives it."""
    found = {}
    for part in components(opts):
        for i, arg in enumerate(part.argv):
            if arg.startswith(("--web.listen-address=", "-httpListenAddr=")):
                found[part.name] = arg.split("=", 1)[1].rsplit(":", 1)[0]
            elif arg == "--host":
                found[part.name] = part.argv[i + 1]
    return found


def test_default_binds_every_component_to_loopback(tmp_path: Path) -> None:
    found = listen_addresses(options(tmp_path))
    assert set(found) == {"service", "inbox", "node_exporter", "pushgateway", "alertmanager",
                          "prometheus", "dashboard"}
    assert set(found.values()) == {"127.0.0.1"}
    assert exposure_warnings(options(tmp_path)) == []


def test_bind_reaches_every_listener_but_the_admin_api(tmp_path: Path) -> None:
    opts = options(tmp_path, bind="0.0.0.0", replicas=2, replica_ports=[18081])
    found = listen_addresses(opts)
    assert {"service-0", "service-1", "store"} <= set(found)
    assert set(found.values()) == {"0.0.0.0"}
    service = next(p for p in components(opts) if p.name == "service-0").argv
    # The admin API has no bind option: `serve` always puts it on 127.0.0.1.
    assert "--admin-port" in service and "--admin-host" not in service
    # Clients on this machine (readiness, dashboard, demo traffic) go through loopback.
    urls = [u for part in components(opts)
            for u in (part.ready_url, part.url, *part.argv) if u and u.startswith("http")]
    assert urls and all(u.startswith("http://127.0.0.1:") for u in urls)


def test_prometheus_auth_reaches_prometheus_alertmanager_and_clients(tmp_path: Path) -> None:
    opts = options(tmp_path, prometheus_user="ops", replicas=2, replica_ports=[18081],
                   store="prometheus")
    parts = {p.name: p for p in components(opts)}
    for name in ("prometheus", "store", "alertmanager"):
        assert f"--web.config.file={tmp_path / 'web-config.yml'}" in parts[name].argv
        assert parts[name].auth is not None and parts[name].auth.username == "ops"
    dashboard = parts["dashboard"].argv
    assert dashboard[dashboard.index("--prometheus-user") + 1] == "ops"
    assert dashboard[dashboard.index("--prometheus-password-file") + 1] == str(
        tmp_path / "prometheus-password")
    assert not any("web.config" in a for p in components(options(tmp_path)) for a in p.argv)


def test_prometheus_lifecycle_api_only_when_asked(tmp_path: Path) -> None:
    def flags(**kw: object) -> list[str]:
        return [a for p in components(options(tmp_path, replicas=2, replica_ports=[18081],
                                              store="prometheus", **kw))
                for a in p.argv if a == "--web.enable-lifecycle"]

    assert flags() == []
    assert flags(prometheus_lifecycle=True) == ["--web.enable-lifecycle"] * 2
    open_warnings = exposure_warnings(options(tmp_path, bind="0.0.0.0"))
    assert "reload" not in open_warnings[0]
    assert "reload or shut it down" in exposure_warnings(
        options(tmp_path, bind="0.0.0.0", prometheus_lifecycle=True))[0]


def test_non_loopback_bind_warns_louder_without_prometheus_auth(tmp_path: Path) -> None:
    open_warnings = exposure_warnings(options(tmp_path, bind="0.0.0.0"))
    assert "without --prometheus-auth" in open_warnings[0] and len(open_warnings) == 2
    guarded = exposure_warnings(options(tmp_path, bind="10.0.0.5", prometheus_user="ops"))
    assert len(guarded) == 1 and "without authentication" in guarded[0]
    assert exposure_warnings(options(tmp_path, bind="::1")) == []


@pytest.mark.parametrize("bind, loopback, client", [
    ("127.0.0.1", True, "127.0.0.1"), ("127.0.0.2", True, "127.0.0.2"),
    ("localhost", True, "localhost"), ("::1", True, "::1"), ("0.0.0.0", False, "127.0.0.1"),
    ("::", False, "::1"), ("192.168.1.4", False, "192.168.1.4"), ("example.org", False,
                                                                   "example.org"),
])
def test_bind_addresses(bind: str, loopback: bool, client: str) -> None:
    assert is_loopback(bind) is loopback
    assert connect_host(bind) == client
    assert address(9090, "::1") == "[::1]:9090"
