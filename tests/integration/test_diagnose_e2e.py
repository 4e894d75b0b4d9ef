"""Faults injected through the admin API (what `inferwatch chaos` calls): for each one,
`inferwatch diagnose` ranks the injected cause first."""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferwatch.operate.chaos import ChaosClient
from inferwatch.operate.diagnose import Diagnoser, Diagnosis
from inferwatch.operate.load import LoadPlan, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Stack, StackOptions

SETTLE = 6.0  # after clearing a fault: longer than the rate windows diagnose uses (4 s)
BASELINE = 15.0  # clean traffic before the fault
FAULT = 20.0  # the fault in effect before diagnosing


class Drill:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.prom = PrometheusAPI(url(stack.opts.ports.prometheus))
        self.chaos = ChaosClient.from_run_dir(stack.opts.run_dir)
        for job in ("inference", "node"):
            self.prom.wait_for_scrape(job, after=0)

    def run(self, inject: Callable[[], object], clear: bool = True
            ) -> tuple[Diagnosis, float]:
        """Clean traffic, then the fault; the diagnosis over both, and the look-back used."""
        if clear:
            self.chaos.clear()
            time.sleep(SETTLE)
        start = time.time()
        time.sleep(BASELINE)
        inject()
        time.sleep(FAULT)
        since = time.time() - start
        diagnosis = Diagnoser(self.prom, "digits", since).run()
        show(diagnosis)
        return diagnosis, since

    def close(self) -> None:
        self.chaos.clear()
        self.chaos.close()
        self.prom.close()


def show(diagnosis: Diagnosis) -> None:
    s = diagnosis.symptom
    print(f"\nsymptom: {s.signal} {s.before:.4g} -> {s.after:.4g}" if s else "\nno symptom")
    for cause in diagnosis.causes[:4]:
        ev = cause.evidence[0]
        print(f"  {cause.name:24} score {cause.score:.2f} lead {ev.lead_s} s  "
              f"{ev.signal}: {ev.before:.4g} -> {ev.after:.4g} (shift {ev.z:.1f} sd)")


def start(tmp_path: Path, traffic: float, serve_args: tuple[str, ...] = ()) -> Stack:
    stack = Stack(StackOptions(run_dir=tmp_path, profile=FAST, ports=StackPorts.free(),
                               traffic_rate=traffic, serve_args=serve_args))
    stack.start()
    return stack


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    # Demo traffic at 40/s with labelled feedback, so accuracy is measured.
    stack = start(tmp_path_factory.mktemp("diagnose"), 40)
    running = Drill(stack)
    try:
        yield running
    finally:
        running.close()
        stack.stop()


def test_compute_latency_ranks_the_compute_stage_first(drill: Drill) -> None:
    diagnosis, _ = drill.run(lambda: drill.chaos.latency("compute", 0.02))
    assert diagnosis.symptom is not None and diagnosis.symptom.signal == "latency"
    top = diagnosis.causes[0]
    assert top.name == "compute stage"
    assert top.evidence[0].after > top.evidence[0].before + 0.01
    assert "inference_stage_seconds" in top.evidence[0].query


def test_cpu_hog_ranks_cpu_first(drill: Drill) -> None:
    diagnosis, _ = drill.run(lambda: drill.chaos.cpu(workers=2, seconds=60))
    assert diagnosis.causes[0].name == "CPU"
    assert "node_" in diagnosis.causes[0].evidence[0].query


def test_injected_errors_rank_their_reason_first_in_the_cli(drill: Drill) -> None:
    _, since = drill.run(lambda: drill.chaos.errors(0.5))
    out = subprocess.run(
        [sys.executable, "-m", "inferwatch", "diagnose", "--run-dir",
         str(drill.stack.opts.run_dir), "--model", "digits", "--since", f"{int(since)}s",
         "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
    result = json.loads(out)
    assert result["symptom"]["signal"] == "errors"
    top = result["causes"][0]
    assert top["name"] == "error reason injected"
    assert top["evidence"][0]["after"] > 0.3
    assert top["lead_s"] is not None
    table = subprocess.run(
        [sys.executable, "-m", "inferwatch", "diagnose", "--run-dir",
         str(drill.stack.opts.run_dir), "--since", f"{int(since)}s"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "COLUMNS": "300"}).stdout
    assert "error reason injected" in table and "symptom: errors" in table


def test_input_drift_ranks_drift_first(drill: Drill) -> None:
    diagnosis, _ = drill.run(lambda: drill.chaos.drift("invert", 0.6))
    assert diagnosis.symptom is not None and diagnosis.symptom.signal == "accuracy"
    top = diagnosis.causes[0]
    assert top.name == "input drift"
    assert top.evidence[0].after > 0.25


def test_overload_ranks_queue_saturation_first(tmp_path: Path) -> None:
    # One sample per model call that takes 10 ms: about 100 requests/s of capacity.
    stack = start(tmp_path, 30, ("--max-batch-size", "1", "--queue-capacity", "16"))
    drill = Drill(stack)
    try:
        plan = LoadPlan(url(stack.opts.ports.service), rate=150, duration=FAULT + 5)
        load = threading.Thread(target=run_load_sync, args=(plan,), daemon=True)
        drill.chaos.latency("compute", 0.01)  # the slow model, before the clean baseline
        time.sleep(SETTLE)
        diagnosis, _ = drill.run(load.start, clear=False)
        load.join(timeout=60)
        assert diagnosis.causes[0].name == "queue saturation"
        shed = next(e for e in diagnosis.causes[0].evidence if "shed" in e.signal)
        assert shed.after > 0
    finally:
        drill.close()
        stack.stop()
