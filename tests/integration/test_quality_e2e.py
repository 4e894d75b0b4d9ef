"""Input drift injected into the running service: PSI rises, accuracy from feedback falls,
ModelDrift and AccuracyDrop reach the inbox; drift cleared: both resolve."""

import time
from pathlib import Path

from inferwatch.operate.chaos import ChaosClient
from inferwatch.operate.drills import wait_for_notification
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.profiles import FAST
from inferwatch.stack.rules import feedback_record
from inferwatch.stack.runner import Stack, StackOptions

PSI = 'max(inference_drift_psi{model="digits"})'
ACCURACY = f'{feedback_record(FAST)}{{model="digits"}}'


def figures(prom: PrometheusAPI) -> tuple[float, float]:
    psi, accuracy = prom.scalar(PSI), prom.scalar(ACCURACY)
    assert psi is not None and accuracy is not None
    return psi, accuracy


def test_drift_raises_psi_lowers_accuracy_and_both_alerts_fire_then_resolve(
        tmp_path: Path) -> None:
    # Demo traffic sends held-out digits and their true labels as feedback.
    stack = Stack(StackOptions(run_dir=tmp_path, profile=FAST, ports=StackPorts.free(),
                               traffic_rate=40))
    stack.start()
    inbox = tmp_path / "inbox.jsonl"
    prom = PrometheusAPI(url(stack.opts.ports.prometheus))
    chaos = ChaosClient.from_run_dir(tmp_path)
    try:
        time.sleep(20)  # a full PSI window (500 samples) and rate window of clean traffic
        psi_before, accuracy_before = figures(prom)
        assert psi_before < 0.1 and accuracy_before > 0.9

        injected = time.time()
        chaos.drift("invert", 0.6)
        drift = wait_for_notification(inbox, "ModelDrift", "firing", injected, 90)
        accuracy = wait_for_notification(inbox, "AccuracyDrop", "firing", injected, 90)
        psi_during, accuracy_during = figures(prom)
        print(f"PSI {psi_before:.3f} -> {psi_during:.3f}, accuracy {accuracy_before:.3f} -> "
              f"{accuracy_during:.3f}; ModelDrift after "
              f"{drift['received_at'] - injected:.1f} s, AccuracyDrop after "
              f"{accuracy['received_at'] - injected:.1f} s")
        assert psi_during > 0.25 and accuracy_during < 0.9

        cleared = time.time()
        chaos.clear()
        wait_for_notification(inbox, "ModelDrift", "resolved", cleared, 120)
        wait_for_notification(inbox, "AccuracyDrop", "resolved", cleared, 120)
        psi_after, accuracy_after = figures(prom)
        assert psi_after < 0.25 and accuracy_after > 0.9
    finally:
        chaos.close()
        prom.close()
        stack.stop()
