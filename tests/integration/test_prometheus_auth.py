"""Prometheus and Alertmanager behind basic auth, started by the stack's runner: they refuse
anonymous requests, and every inferwatch client of them (readiness, scrapes, alert delivery,
PrometheusAPI, the dashboard page, doctor) gets through with the credentials."""

import json
import stat
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from inferwatch.operate.drills import wait_for_notification
from inferwatch.operate.promapi import PrometheusAPI, PrometheusError
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Stack, StackOptions, components, prometheus_auth


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    opts = StackOptions(run_dir=tmp_path_factory.mktemp("auth"), profile=FAST,
                        ports=StackPorts.free(), prometheus_user="ops")
    stack = Stack(opts)
    stack.write_config()
    # An alert that fires at once: it must reach the inbox through Alertmanager's auth.
    (opts.run_dir / "rules" / "always.yml").write_text(
        "groups:\n- name: always\n  rules:\n  - alert: AuthCheck\n    expr: vector(1)\n")
    # Their readiness checks only pass with the credentials.
    stack.start_components([c for c in components(opts) if c.name in (
        "inbox", "alertmanager", "prometheus", "dashboard")])
    yield stack
    stack.stop()


def credentials(stack: Stack) -> tuple[str, str]:
    auth = prometheus_auth(stack.opts)
    assert auth is not None
    return auth.credentials()


def test_every_secret_in_the_run_dir_is_0600(guarded: Stack) -> None:
    d = guarded.opts.run_dir
    for name in ("admin-token", "prometheus-password", "web-config.yml"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    password = credentials(guarded)[1]
    for path in d.rglob("*"):  # configs, state, logs: only the password file holds it
        if path.is_file() and path.name != "prometheus-password":
            assert password.encode() not in path.read_bytes(), path


def test_anonymous_and_wrong_passwords_get_401(guarded: Stack) -> None:
    base = url(guarded.opts.ports.prometheus)
    user, password = credentials(guarded)
    assert httpx.get(f"{base}/api/v1/query", params={"query": "up"}).status_code == 401
    assert httpx.get(f"{base}/-/ready").status_code == 401
    assert httpx.get(f"{base}/api/v1/query", params={"query": "up"},
                     auth=(user, password + "x")).status_code == 401
    assert httpx.get(f"{base}/api/v1/query", params={"query": "up"},
                     auth=(user, password)).status_code == 200


def test_client_with_credentials_queries_and_prometheus_scrapes_itself(guarded: Stack) -> None:
    anonymous = PrometheusAPI(url(guarded.opts.ports.prometheus))
    with pytest.raises(PrometheusError, match="401"):
        anonymous.query("up")
    anonymous.close()
    prom = PrometheusAPI(url(guarded.opts.ports.prometheus), auth=credentials(guarded))
    try:
        assert prom.ready()
        prom.wait_for_scrape("prometheus", after=0)  # the self-scrape's password_file works
        assert prom.scalar('up{job="prometheus"}') == 1.0
    finally:
        prom.close()


def test_alertmanager_requires_the_credentials_and_alerts_still_arrive(guarded: Stack) -> None:
    base = url(guarded.opts.ports.alertmanager)
    user, password = credentials(guarded)
    assert httpx.get(f"{base}/api/v2/alerts").status_code == 401
    assert httpx.get(f"{base}/api/v2/alerts", auth=(user, password + "x")).status_code == 401
    assert httpx.get(f"{base}/api/v2/alerts", auth=(user, password)).status_code == 200
    wait_for_notification(guarded.opts.run_dir / "inbox.jsonl", "AuthCheck", "firing", 0, 60)
    prom = PrometheusAPI(url(guarded.opts.ports.prometheus), auth=(user, password))
    try:
        prom.wait_for_scrape("alertmanager", after=0)
    finally:
        prom.close()
    # The dashboard page's list of active alerts comes from Alertmanager.
    alerts = httpx.get(f"{url(guarded.opts.ports.dashboard)}/api/alerts", timeout=10)
    assert alerts.status_code == 200, alerts.text
    assert "AuthCheck" in {a["labels"]["alertname"] for a in alerts.json()["alerts"]}


def test_dashboard_page_queries_with_the_credentials(guarded: Stack) -> None:
    response = httpx.get(f"{url(guarded.opts.ports.dashboard)}/api/variables", timeout=10)
    assert response.status_code == 200, response.text
    assert credentials(guarded)[1] not in httpx.get(
        f"{url(guarded.opts.ports.dashboard)}/api/dashboard").text


def test_doctor_reads_the_credentials_from_the_run_dir(guarded: Stack) -> None:
    def findings(*args: str) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-m", "inferwatch", "doctor", "--json", *args],
                             capture_output=True, text=True, timeout=120, check=False).stdout
        return {f["check"]: f["status"] for f in json.loads(out)
                if f["check"] in ("prometheus", "alertmanager", "receivers")}

    assert findings("--run-dir", str(guarded.opts.run_dir)) == {
        "prometheus": "ok", "alertmanager": "ok", "receivers": "ok"}
    anonymous = findings("--prometheus", url(guarded.opts.ports.prometheus))
    assert anonymous["prometheus"] == "fail"
