"""`inferwatch doctor` on a healthy stack, then on broken ones: each failure is named."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inferwatch.operate.doctor import FAIL, Doctor, failed
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Stack, StackOptions


def wait_healthy(doctor: Doctor, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(f.status == "ok" for f in doctor.run()):
            return
        time.sleep(0.5)
    raise AssertionError([f for f in doctor.run() if f.status != "ok"])


def failures(doctor: Doctor, expected: str, timeout: float = 30) -> list[str]:
    """The failed checks once one of them mentions ``expected``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [f"{f.check}: {f.detail}" for f in doctor.run() if f.status == FAIL]
        if any(expected in line for line in found):
            return found
        time.sleep(0.5)
    raise AssertionError(f"no failure naming {expected!r}: {doctor.run()}")


def doctor_cli(run_dir: Path) -> int:
    return subprocess.run([sys.executable, "-m", "inferwatch", "doctor", "--run-dir",
                           str(run_dir)], capture_output=True, timeout=60).returncode


def test_doctor_names_each_broken_part(tmp_path: Path) -> None:
    stack = Stack(StackOptions(run_dir=tmp_path, profile=FAST, ports=StackPorts.free(),
                               traffic_rate=5))
    stack.start()
    ports = stack.opts.ports
    doctor = Doctor(url(ports.prometheus), url(ports.alertmanager))
    try:
        wait_healthy(doctor)
        assert doctor_cli(tmp_path) == 0

        # A stopped target: named with its scrape error.
        os.kill(stack.process("node_exporter").pid, signal.SIGTERM)
        found = failures(doctor, f"target node 127.0.0.1:{ports.node_exporter}")
        assert any("connection refused" in line for line in found), found
        assert doctor_cli(tmp_path) == 1

        # A rule that fails at every evaluation: named with Prometheus' error.
        (tmp_path / "rules" / "broken.yml").write_text(
            "groups:\n- name: broken\n  rules:\n  - record: broken:up\n"
            "    expr: up / on() up\n")
        prometheus = stack.process("prometheus").pid
        os.kill(prometheus, signal.SIGHUP)  # a reload: the stack leaves /-/reload off
        found = failures(doctor, "rule broken:up")
        assert any("duplicate series" in line for line in found), found

        # A rule file that does not load: the reload fails and doctor says so.
        (tmp_path / "rules" / "broken.yml").write_text("groups: [{name: x, rules: [{")
        os.kill(prometheus, signal.SIGHUP)
        failures(doctor, "the last reload failed")

        # A stopped Alertmanager.
        (tmp_path / "rules" / "broken.yml").unlink()
        os.kill(prometheus, signal.SIGHUP)
        os.kill(stack.process("alertmanager").pid, signal.SIGTERM)
        found = failures(doctor, f"{url(ports.alertmanager)} unreachable")
        assert failed(doctor.run())
    finally:
        stack.stop()
