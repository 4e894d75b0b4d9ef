"""`inferwatch batch` pushes to the stack's real Pushgateway; Prometheus scrapes it with
honor_labels; BatchJobStale fires once the pushes stop."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferwatch.models.digits import digit_png, heldout_digits
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import url
from inferwatch.stack.profiles import FAST, parse_duration
from inferwatch.stack.runner import Stack

INSTANCE = "batch-host-1"


def batch(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferwatch", "batch", "--instance", INSTANCE,
         "--pushgateway", url(stack.opts.ports.pushgateway), *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def by_job(prom: PrometheusAPI, expr: str) -> dict[str, float]:
    return {s.labels["job"]: s.value for s in prom.query(expr)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    for i, image in enumerate(heldout_digits().images[:3]):
        (directory / f"digit-{i}.png").write_bytes(digit_png(image))
    (directory / "broken.png").write_bytes(b"not an image")
    return directory


def test_job_metrics_reach_prometheus_with_the_jobs_labels(
        stack: Stack, prom: PrometheusAPI, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.jsonl"
    ran = batch(stack, "--input", str(folder), "--job", "folder-batch",
                "--max-failure-ratio", "0.5", "--output", str(out))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == [
        "digit-0.png", "digit-1.png", "digit-2.png"]
    digits = batch(stack, "--input", "digits", "--job", "digits-batch")
    assert digits.returncode == 0, digits.stdout + digits.stderr
    pushed_at = time.time()

    prom.wait_for_scrape("pushgateway", after=pushed_at)
    # honor_labels: the job and instance are the batch job's, not the Pushgateway's.
    assert by_job(prom, "inference_batch_job_items_total") == {
        "folder-batch": 4, "digits-batch": len(heldout_digits().labels)}
    failures = prom.query('inference_batch_job_failures_total{job="folder-batch"}')
    assert [(s.labels["reason"], s.value) for s in failures] == [("invalid_image", 1)]
    for metric in ("inference_batch_job_items_total", "push_time_seconds",
                   "inference_batch_job_last_success_timestamp_seconds"):
        samples = prom.query(f'{metric}{{job=~".+-batch"}}')
        assert {s.labels["instance"] for s in samples} == {INSTANCE}, metric
        assert not any("exported_job" in s.labels for s in samples), metric
    success = by_job(prom, "inference_batch_job_last_success_timestamp_seconds")
    assert all(pushed_at - 60 < t <= pushed_at for t in success.values()), success
    durations = by_job(prom, "inference_batch_job_duration_seconds")
    assert all(0 < d < 120 for d in durations.values()), durations


def test_failed_run_keeps_the_last_success(stack: Stack, prom: PrometheusAPI,
                                           folder: Path) -> None:
    before = by_job(prom, "inference_batch_job_last_success_timestamp_seconds")["folder-batch"]
    ran = batch(stack, "--input", str(folder), "--job", "folder-batch",
                "--max-failure-ratio", "0")
    assert ran.returncode == 1 and "FAILED" in ran.stdout, ran.stdout + ran.stderr
    prom.wait_for_scrape("pushgateway", after=time.time())
    assert by_job(prom, "inference_batch_job_last_success_timestamp_seconds")[
        "folder-batch"] == before
    pushed = by_job(prom, 'push_time_seconds{job="folder-batch"}')["folder-batch"]
    assert pushed > before


def test_stale_pushes_fire_batch_job_stale(stack: Stack, prom: PrometheusAPI) -> None:
    deadline = time.monotonic() + parse_duration(FAST.batch_stale_after) + 40

    def firing() -> dict[str, dict[str, str]]:
        return {a["labels"]["job"]: a["labels"] for a in prom.alerts()
                if a["labels"]["alertname"] == "BatchJobStale" and a["state"] == "firing"}

    while set(firing()) != {"folder-batch", "digits-batch"} and time.monotonic() < deadline:
        time.sleep(0.5)
    alerts = firing()
    assert set(alerts) == {"folder-batch", "digits-batch"}, prom.alerts()
    assert all(a["instance"] == INSTANCE and a["severity"] == "warning"
               for a in alerts.values())
