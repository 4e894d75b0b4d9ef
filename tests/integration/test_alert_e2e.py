"""Inject errors into the running service: the seed's alert reaches the webhook inbox and a
real SMTP server, and resolves after the fault is cleared."""

import email
import socket
import threading
import time
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from inferwatch.operate.chaos import ChaosClient
from inferwatch.operate.drills import wait_for_notification
from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.alerting import EmailSettings, Receivers
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Stack, StackOptions


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[float, Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((time.time(), email.message_from_bytes(envelope.content)))
        return "250 OK"

    def wait(self, words: tuple[str, ...], after: float, timeout: float) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for received, message in self.messages:
                    if received >= after and all(w in message["Subject"] for w in words):
                        return message
            time.sleep(0.1)
        raise TimeoutError(f"no email with {words} within {timeout:g}s")


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def test_error_burst_notifies_inbox_and_email_then_resolves(
        tmp_path: Any, smtp: tuple[Mailbox, int]) -> None:
    mailbox, smtp_port = smtp
    receivers = Receivers(email=EmailSettings(
        to="oncall@example.org", sender="inferwatch@example.org",
        smarthost=f"127.0.0.1:{smtp_port}", require_tls=False))
    stack = Stack(StackOptions(run_dir=tmp_path, profile=FAST, ports=StackPorts.free(),
                               traffic_rate=40, receivers=receivers))
    stack.start()
    inbox = tmp_path / "inbox.jsonl"
    chaos = ChaosClient.from_run_dir(tmp_path)
    try:
        time.sleep(3)  # a few clean scrapes first
        injected = time.time()
        chaos.errors(0.5)
        fired = wait_for_notification(inbox, "HighInferenceErrorRate", "firing", injected, 60)
        message = mailbox.wait(("FIRING", "HighInferenceErrorRate"), injected, 60)
        detect = fired["received_at"] - injected
        print(f"fault-to-notification (fast profile): {detect:.1f} s")
        alert = next(a for a in fired["notification"]["alerts"]
                     if a["labels"]["alertname"] == "HighInferenceErrorRate")
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("#highinferenceerrorrate")
        assert "digits" in message["Subject"]

        cleared = time.time()
        chaos.clear()
        wait_for_notification(inbox, "HighInferenceErrorRate", "resolved", cleared, 90)
        mailbox.wait(("RESOLVED", "HighInferenceErrorRate"), cleared, 90)
    finally:
        chaos.close()
        stack.stop()
