import json
import subprocess
import sys
from pathlib import Path

import httpx


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferwatch", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def foreground_up(run_dir: Path, traffic: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``inferwatch up`` in the foreground, read until it says how to stop it; the caller
    kills it should anything fail."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferwatch", "up", "--fast", "--auto-ports", "--traffic",
         traffic, "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
    except BaseException:
        proc.kill()
        raise
    return proc, lines


def test_up_detached_status_load_and_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = cli("up", "--fast", "--auto-ports", "--detach", "--traffic", "0",
             "--run-dir", str(run_dir))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for name in ("service", "prometheus", "alertmanager", "node_exporter", "pushgateway",
                     "inbox"):
            assert name in up.stdout
        ports = json.loads((run_dir / "state.json").read_text())["ports"]
        assert httpx.get(f"http://127.0.0.1:{ports['service']}/ping").json() == {
            "status": "Healthy"}
        assert cli("status", "--run-dir", str(run_dir)).returncode == 0

        load = cli("load", "--url", f"http://127.0.0.1:{ports['service']}", "--rate", "100",
                   "--count", "150", "--prometheus", f"http://127.0.0.1:{ports['prometheus']}",
                   "--json")
        assert load.returncode == 0, load.stdout + load.stderr
        figures = json.loads(load.stdout.strip().splitlines()[-1])
        assert figures["sent"] == figures["ok"] == 150
        assert figures["prometheus"]["requests_delta"] == 150
        assert figures["prometheus"]["p95_ms"] > 0
    finally:
        down = cli("down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert cli("status", "--run-dir", str(run_dir)).returncode != 0


def test_up_in_foreground_stops_everything_on_sigint(tmp_path: Path) -> None:
    import signal

    from inferwatch.stack.runner import alive, read_state

    run_dir = tmp_path / "run"
    proc, lines = foreground_up(run_dir, "2")
    try:
        processes = read_state(run_dir)
        assert {p.name for p in processes} == {
            "service", "inbox", "node_exporter", "pushgateway", "alertmanager", "prometheus",
            "dashboard", "traffic"}, "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "stopped." in out
    assert not any(alive(p) for p in processes)
    assert not (run_dir / "state.json").exists()


def test_up_in_foreground_survives_what_anyone_posts_to_the_inbox(tmp_path: Path) -> None:
    import signal

    run_dir = tmp_path / "run"
    proc, lines = foreground_up(run_dir, "0")
    assert proc.stdout is not None
    try:
        port = json.loads((run_dir / "state.json").read_text())["ports"]["inbox"]
        inbox = f"http://127.0.0.1:{port}/alerts"
        with (run_dir / "inbox.jsonl").open("a") as f:
            f.write('{"received_at": 1, "notification": {"alerts": [1]}}\nnot json\n')
        assert httpx.post(inbox, json={"alerts": [1]}).status_code == 400
        for model in ("[/x]", "\x1b[2J"):
            httpx.post(inbox, json={"status": "firing", "alerts": [{
                "status": "firing", "labels": {"alertname": "Posted", "model": model}}]}
                       ).raise_for_status()
        for line in proc.stdout:
            lines.append(line)
            if "model=\\x1b[2J" in line:
                break
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = "".join(lines)
    assert "FIRING Posted model=[/x]" in printed and "\x1b" not in printed, printed
    assert proc.returncode == 0 and "stopped." in out, printed + out
