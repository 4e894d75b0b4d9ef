"""``inferwatch doctor``: check a running stack and say what to fix."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from inferwatch.operate.promapi import PrometheusAPI, PrometheusError

OK, WARN, FAIL = "ok", "warn", "fail"
MAX_CLOCK_SKEW_SECONDS = 2.0
MIN_FREE_DISK_RATIO = 0.10
# A writer sends each scrape within its batch deadline (seconds); a minute of silence is not that.
MAX_WRITE_AGE_SECONDS = 60.0
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "0.0.0.0")


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str
    fix: str = ""


class Doctor:
    """Checks against a Prometheus (and the Alertmanager it should send to), or against a
    remote_write store: a Prometheus receiver (``store``) or VictoriaMetrics (recognised by
    its /metrics), which scrapes, evaluates and alerts nothing: its writers' data is checked.
    """

    def __init__(self, prometheus: str, alertmanager: str | None = None,
                 grafana_provisioning: Path | None = None, in_containers: bool = False,
                 timeout: float = 5.0, auth: tuple[str, str] | None = None,
                 store: bool = False) -> None:
        self.prom = PrometheusAPI(prometheus, timeout=timeout, auth=auth)
        self.store = store
        self.vm_flags: dict[str, str] | None = None
        self.auth = auth  # the stack's Alertmanager requires the same user
        self.alertmanager = alertmanager.rstrip("/") if alertmanager else None
        self.grafana_provisioning = grafana_provisioning
        self.in_containers = in_containers
        self.timeout = timeout

    def run(self) -> list[Finding]:
        if not self.prom.ready():
            return [Finding("prometheus", FAIL, f"{self.prom.url} does not answer /-/ready",
                            "start Prometheus, or pass its URL with --prometheus")]
        try:
            self.vm_flags = self.prom.victoria_metrics_flags()
        except PrometheusError as exc:
            return [Finding("prometheus", FAIL, str(exc))]
        checks: list[Callable[[], list[Finding]]] = [
            self.config_reload, self.targets, self.rules, self.alertmanager_wiring,
            self.receivers, self.datasources, self.disk, self.clock,
        ]
        if self.vm_flags is not None:
            findings = [Finding("store", OK, f"{self.prom.url} ready (VictoriaMetrics)")]
            checks = [self.writers, self.stored_series, self.disk, self.clock]
        elif self.store:
            findings = [Finding("store", OK, f"{self.prom.url} ready (Prometheus)")]
            checks = [self.config_reload, self.writers, self.stored_series, self.disk,
                      self.clock]
        else:
            findings = [Finding("prometheus", OK, f"{self.prom.url} ready")]
        for check in checks:
            try:
                findings += check()
            except (PrometheusError, httpx.HTTPError, OSError, ValueError) as exc:
                findings.append(Finding(check.__name__, FAIL, f"check failed: {exc}"))
        return findings

    def _get(self, path: str) -> Any:
        return self.prom._get(path)

    def config_reload(self) -> list[Finding]:
        info = self._get("/api/v1/status/runtimeinfo")
        if info.get("reloadConfigSuccess", True):
            return [Finding("config", OK, "last configuration (and rule file) reload succeeded")]
        return [Finding("config", FAIL,
                        f"the last reload failed (at {info.get('lastConfigTime', '?')}); "
                        "Prometheus runs on its previous configuration and rules",
                        "run `promtool check config` and `promtool check rules` on the files, "
                        "fix them, then reload (kill -HUP the Prometheus process)")]

    def targets(self) -> list[Finding]:
        targets = self.prom.targets()
        if not targets:
            return [Finding("targets", FAIL, "Prometheus has no active targets",
                            "check scrape_configs in prometheus.yml")]
        found = []
        for t in targets:
            name = f"{t['labels'].get('job', '?')} {t['labels'].get('instance', t['scrapeUrl'])}"
            if t["health"] == "up":
                continue
            if t["health"] == "unknown":
                found.append(Finding(f"target {name}", WARN, "not scraped yet",
                                     "Prometheus scrapes new targets a few seconds after start"))
                continue
            error = t.get("lastError") or "down"
            hint = ("is the process running and listening there? "
                    "(`inferwatch status`, then restart it)")
            if self.in_containers and any(h in t["scrapeUrl"] for h in _LOCAL_HOSTS):
                hint = "inside containers localhost is the container itself: use the service name"
            found.append(Finding(f"target {name}", FAIL, f"down: {error}", hint))
        if not found:
            found.append(Finding("targets", OK, f"all {len(targets)} targets up"))
        return found

    def rules(self) -> list[Finding]:
        groups = self.prom.rules()
        bad = [(g["name"], r["name"], r.get("lastError", "")) for g in groups
               for r in g["rules"] if r.get("health") == "err"]
        count = sum(len(g["rules"]) for g in groups)
        if not groups:
            return [Finding("rules", WARN, "no rules loaded: nothing can alert",
                            "add rule_files to prometheus.yml (`inferwatch render`)")]
        if not bad:
            return [Finding("rules", OK, f"{count} rules in {len(groups)} groups evaluate")]
        return [Finding(f"rule {rule}", FAIL, f"group {group}: {error}",
                        "fix the expression (try it in the Prometheus UI), then reload")
                for group, rule, error in bad]

    def alertmanager_wiring(self) -> list[Finding]:
        active = self._get("/api/v1/alertmanagers")["activeAlertmanagers"]
        if not active:
            return [Finding("alertmanager", FAIL, "Prometheus sends alerts to no Alertmanager",
                            "add alerting.alertmanagers to prometheus.yml")]
        found = []
        for am in active:
            base = am["url"].rsplit("/api/", 1)[0]
            try:
                ready = httpx.get(f"{base}/-/ready", timeout=self.timeout,
                                  auth=self.auth).status_code == 200
            except httpx.HTTPError as exc:
                ready, why = False, str(exc)
            else:
                why = "not ready"
            found.append(Finding("alertmanager", OK, f"{base} reachable and wired") if ready
                         else Finding("alertmanager", FAIL, f"{base} unreachable: {why}",
                                      "start Alertmanager; until then no alert is delivered"))
        if self.alertmanager and not any(self.alertmanager in a["url"] for a in active):
            found.append(Finding("alertmanager", FAIL,
                                 f"Prometheus does not send to {self.alertmanager}",
                                 "point alerting.alertmanagers at it"))
        return found

    def receivers(self) -> list[Finding]:
        urls = [a["url"].rsplit("/api/", 1)[0] for a in
                self._get("/api/v1/alertmanagers")["activeAlertmanagers"]]
        if self.alertmanager:
            urls = [self.alertmanager]
        found = []
        for base in urls:
            try:
                status = httpx.get(f"{base}/api/v2/status", timeout=self.timeout,
                                   auth=self.auth).json()
            except httpx.HTTPError:
                continue  # reported by alertmanager_wiring
            config = yaml.safe_load(status["config"]["original"]) or {}
            kinds = [k for r in config.get("receivers", []) for k in r if k.endswith("_configs")]
            empty = [r["name"] for r in config.get("receivers", [])
                     if not any(k.endswith("_configs") for k in r)]
            if not kinds:
                found.append(Finding("receivers", FAIL, f"{base}: no receiver sends anywhere",
                                     "configure a webhook, email or Slack receiver"))
            else:
                detail = f"{base}: {', '.join(sorted(set(kinds)))}"
                if empty:
                    detail += f"; receivers without any target: {', '.join(empty)}"
                found.append(Finding("receivers", WARN if empty else OK, detail,
                                     "alerts routed to an empty receiver are dropped"
                                     if empty else ""))
        return found

    def writers(self) -> list[Finding]:
        """Who writes to the store, told apart by the external labels on their ``up``
        series, and which of their targets were down at their last scrape."""
        ages = self.prom.query("time() - max by (cluster, replica_set) (timestamp(up))",
                               nocache=True)
        if not ages:
            return [Finding("writers", FAIL, "no Prometheus wrote here in the last 5 minutes",
                            f"point a Prometheus' remote_write at {self.prom.url}/api/v1/write")]
        found = []
        for s in ages:
            name = " ".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "unlabelled"
            if s.value > MAX_WRITE_AGE_SECONDS:
                found.append(Finding(f"writer {name}", FAIL,
                                     f"its last sample is {s.value:.0f} s old",
                                     "is that Prometheus running? see the remote_write errors "
                                     "in its log (prometheus_remote_storage_* metrics)"))
            else:
                found.append(Finding(f"writer {name}", OK,
                                     f"last sample {s.value:.1f} s old"))
        for s in self.prom.query("up == 0", nocache=True):
            labels = s.labels
            found.append(Finding(
                f"target {labels.get('job', '?')} {labels.get('instance', '?')}", FAIL,
                f"down at the last scrape of writer cluster={labels.get('cluster', '?')}",
                "run `inferwatch doctor` against that Prometheus"))
        return found

    def stored_series(self) -> list[Finding]:
        tsdb = self._get("/api/v1/status/tsdb")
        # VictoriaMetrics counts today's series; Prometheus those of its head block.
        count = tsdb.get("totalSeries", tsdb.get("headStats", {}).get("numSeries"))
        return [Finding("series", OK if count else WARN, f"{count} series stored",
                        "" if count else "nothing stored yet: see the writers above")]

    def datasources(self) -> list[Finding]:
        if self.grafana_provisioning is None:
            return []
        found = []
        for path in sorted(self.grafana_provisioning.rglob("*.y*ml")):
            data = yaml.safe_load(path.read_text()) or {}
            for ds in data.get("datasources", []) or []:
                url = str(ds.get("url", ""))
                if self.in_containers and any(h in url for h in _LOCAL_HOSTS):
                    found.append(Finding(
                        f"datasource {ds.get('name')}", FAIL,
                        f"{path.name}: {url} points at Grafana's own container",
                        "use the Prometheus service name, e.g. http://prometheus:9090"))
                else:
                    found.append(Finding(f"datasource {ds.get('name')}", OK, url))
        return found

    def disk(self) -> list[Finding]:
        if self.vm_flags is not None:
            path = Path(self.vm_flags.get("storageDataPath", ""))
        else:
            path = Path(self._get("/api/v1/status/flags").get("storage.tsdb.path", ""))
        if not path.is_dir():
            return [Finding("tsdb disk", WARN, f"{path} is not on this machine: not checked")]
        usage = shutil.disk_usage(path)
        free = usage.free / usage.total
        detail = f"{path}: {usage.free / 2**30:.1f} GiB free ({free:.0%})"
        if free < MIN_FREE_DISK_RATIO:
            return [Finding("tsdb disk", FAIL, detail,
                            "free space or lower the retention: Prometheus' "
                            "--storage.tsdb.retention.time/size, VictoriaMetrics' "
                            "-retentionPeriod")]
        return [Finding("tsdb disk", OK, detail)]

    def clock(self) -> list[Finding]:
        before = time.time()
        server = self.prom.scalar("time()", nocache=True)
        after = time.time()
        assert server is not None
        skew = server - (before + after) / 2
        found = [Finding("clock", OK if abs(skew) <= MAX_CLOCK_SKEW_SECONDS else FAIL,
                         f"Prometheus clock is {skew:+.2f} s from this machine's",
                         "" if abs(skew) <= MAX_CLOCK_SKEW_SECONDS else
                         "synchronise clocks (NTP): skew breaks rate windows and alerts")]
        offsets = self.prom.query("node_timex_offset_seconds")
        for s in offsets:
            if abs(s.value) > MAX_CLOCK_SKEW_SECONDS:
                found.append(Finding(f"clock {s.labels.get('instance')}", FAIL,
                                     f"NTP offset {s.value:+.2f} s", "synchronise with NTP"))
        return found


def failed(findings: list[Finding]) -> bool:
    return any(f.status == FAIL for f in findings)


def as_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]


def render(findings: list[Finding], console: Console) -> None:
    """Print the findings as a table, each status in its colour."""
    table = Table(title="inferwatch doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    colours = {OK: "green", WARN: "yellow", FAIL: "red"}
    for f in findings:
        table.add_row(f.check, f"[{colours[f.status]}]{f.status}[/]", f.detail, f.fix)
    console.print(table)
