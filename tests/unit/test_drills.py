import json
from pathlib import Path

from inferwatch.operate.drills import find_notification


def record(received_at: float, *alerts: tuple[str, str]) -> str:
    return json.dumps({"received_at": received_at, "notification": {"alerts": [
        {"status": status, "labels": {"alertname": "TargetDown", "job": job}}
        for job, status in alerts]}})


def test_labels_pick_the_alert_of_one_job(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox.jsonl"
    inbox.write_text("\n".join([
        record(10, ("inference", "firing")),
        record(20, ("alertmanager", "resolved"), ("node", "firing")),
    ]) + "\n")
    first = find_notification(inbox, "TargetDown", "firing", 0)
    assert first is not None and first["received_at"] == 10
    node = find_notification(inbox, "TargetDown", "firing", 0, {"job": "node"})
    assert node is not None and node["received_at"] == 20
    assert find_notification(inbox, "TargetDown", "resolved", 0, {"job": "node"}) is None
    assert find_notification(inbox, "TargetDown", "firing", 15, {"job": "inference"}) is None
