import json
import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from servers import serving

from inferwatch.stack.inbox import (
    DEFAULT_PAGE,
    InboxFollower,
    InboxPrinter,
    create_inbox_app,
    describe,
    read_inbox,
    rotated,
)


def notification(name: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {"status": status, "alerts": [{"status": status, "labels": {"alertname": name,
                                                                         **labels},
                                          "annotations": {"summary": f"{name} summary"}}]}


def record(body: Any, at: float = 1_700_000_000.0) -> str:
    return json.dumps({"received_at": at, "notification": body})


def test_label_values_are_printed_literally(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    inbox = tmp_path / "inbox.jsonl"
    inbox.write_text("\n".join([
        record(notification("A", model="[/x]")),
        record(notification("B", model="[bold]b[/bold]", instance="\x1b[2J\x9b1m")),
    ]) + "\n")
    InboxPrinter(inbox, Console()).print_new()
    out = capsys.readouterr().out
    assert "model=[/x]" in out and "model=[bold]b[/bold]" in out
    assert "\x1b" not in out and "\x9b" not in out
    assert "instance=\\x1b[2J\\x9b1m" in out


def test_the_printer_skips_malformed_records(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    inbox = tmp_path / "inbox.jsonl"
    inbox.write_text("\n".join([
        "not json", "[1]", record({"alerts": [1]}), record({"alerts": [{"labels": [1]}]}),
        record(notification("Kept")), record(notification("Late"), at=1e300),
    ]) + "\n" + record(notification("Partial"))[:20])  # still being written
    printer = InboxPrinter(inbox, Console())
    with caplog.at_level(logging.WARNING, "inferwatch.stack.inbox"):
        printer.print_new()
    out = capsys.readouterr().out
    assert "FIRING Kept" in out and "Late" not in out
    assert len([r for r in caplog.records if "malformed" in r.message]) == 5
    with inbox.open("a") as f:
        f.write(record(notification("Partial"))[20:] + "\n")
    printer.print_new()
    assert "FIRING Partial" in capsys.readouterr().out


def test_describe_has_no_control_characters() -> None:
    line = describe(notification("A\nB", model="\x1b]0;title\x07", instance="\x85x"))
    assert line == ("FIRING A\\x0aB model=\\x1b]0;title\\x07 instance=\\x85x: "
                    "A\\x0aB summary")


@pytest.mark.parametrize("body", [
    {"alerts": [1]}, {"alerts": {}}, {"alerts": [{"labels": [1]}]},
    {"alerts": [{"labels": {"alertname": 1}}]}, {"alerts": [{"annotations": "x"}]},
    {"alerts": [{"status": 1}]}, {"status": ["firing"], "alerts": []}, [1], "x",
])
def test_inbox_refuses_what_alertmanager_does_not_send(tmp_path: Path, body: Any) -> None:
    inbox = tmp_path / "inbox.jsonl"
    with serving(create_inbox_app(inbox, echo=False)) as base:
        response = httpx.post(f"{base}/alerts", json=body)
        assert response.status_code == 400, response.text
        assert "Alertmanager" in response.json()["error"]
        assert httpx.post(f"{base}/alerts", json=notification("Ok")).status_code == 200
    assert [r["notification"] for r in read_inbox(inbox)] == [notification("Ok")]


def test_inbox_answers_json_nested_too_deep_with_400(tmp_path: Path) -> None:
    with serving(create_inbox_app(tmp_path / "inbox.jsonl", echo=False)) as base:
        response = httpx.post(f"{base}/alerts", content=b"[" * 100_000)
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_json"}
        # Nested just short of the parser's limit: the stored record, one level deeper,
        # must still be read back, or no listing works again.
        for depth in range(900, 1100, 3):
            body = b'{"alerts":[],"x":' + b"[" * depth + b"]" * depth + b"}"
            assert httpx.post(f"{base}/alerts", content=body).status_code in (200, 400)
            assert httpx.get(f"{base}/alerts").status_code == 200, depth


def test_inbox_file_is_private_and_rotates(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox.jsonl"
    size = len(record(notification("A00"))) + 1
    follower = InboxFollower(inbox)
    printed = []
    with serving(create_inbox_app(inbox, echo=False, max_file_bytes=10 * size)) as base:
        assert stat.S_IMODE(inbox.stat().st_mode) == 0o600  # there before any notification
        for i in range(45):
            httpx.post(f"{base}/alerts", json=notification(f"A{i:02}")).raise_for_status()
            if i % 7 == 0:  # the printer polls between rotations
                printed += follower.new_records()
        printed += follower.new_records()
        assert [r["notification"]["alerts"][0]["labels"]["alertname"] for r in printed] == [
            f"A{i:02}" for i in range(45)]
        # One old file kept: the newest 15 to 20 notifications survive.
        kept = [r["notification"]["alerts"][0]["labels"]["alertname"] for r in read_inbox(inbox)]
        assert kept == [f"A{i:02}" for i in range(45 - len(kept), 45)] and len(kept) >= 11
        assert inbox.stat().st_size <= 10 * size and rotated(inbox).stat().st_size <= 10 * size
        assert stat.S_IMODE(rotated(inbox).stat().st_mode) == 0o600
        listed = httpx.get(f"{base}/alerts", params={"limit": 15}).json()
        assert [r["notification"]["alerts"][0]["labels"]["alertname"] for r in listed] == [
            f"A{i:02}" for i in range(44, 29, -1)]  # newest first, across the rotation


def test_listing_pages_newest_first(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox.jsonl"
    inbox.write_text("".join(record(notification(f"N{i:03}"), 1e9 + i) + "\n"
                             for i in range(DEFAULT_PAGE + 20)) + "garbage\n")
    with serving(create_inbox_app(inbox, echo=False)) as base:

        def names(**params: int) -> list[str]:
            response = httpx.get(f"{base}/alerts", params=params)
            response.raise_for_status()
            return [r["notification"]["alerts"][0]["labels"]["alertname"]
                    for r in response.json()]

        assert names() == [f"N{i:03}" for i in range(DEFAULT_PAGE + 19, 19, -1)]
        assert names(limit=3, offset=2) == ["N117", "N116", "N115"]
        assert names(limit=5, offset=DEFAULT_PAGE + 18) == ["N001", "N000"]
        for bad in ({"limit": "-1"}, {"limit": "x"}, {"limit": "100000"}, {"offset": "1.5"}):
            response = httpx.get(f"{base}/alerts", params=bad)
            assert response.status_code == 400 and "must be an integer" in response.json()[
                "error"], bad
