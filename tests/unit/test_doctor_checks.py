from pathlib import Path

from inferwatch.operate.doctor import FAIL, OK, Doctor


def test_localhost_datasource_is_wrong_inside_containers(tmp_path: Path) -> None:
    (tmp_path / "datasources").mkdir()
    (tmp_path / "datasources" / "ds.yml").write_text(
        "apiVersion: 1\ndatasources:\n- name: Prometheus\n  type: prometheus\n"
        "  url: http://localhost:9090\n")
    inside = Doctor("http://127.0.0.1:9", grafana_provisioning=tmp_path, in_containers=True)
    [finding] = inside.datasources()
    assert finding.status == FAIL and "service name" in finding.fix
    outside = Doctor("http://127.0.0.1:9", grafana_provisioning=tmp_path)
    assert [f.status for f in outside.datasources()] == [OK]


def test_unreachable_prometheus_is_the_only_finding() -> None:
    [finding] = Doctor("http://127.0.0.1:9", timeout=0.5).run()
    assert finding.check == "prometheus" and finding.status == FAIL
