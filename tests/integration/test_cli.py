import json
import subprocess
import sys
from pathlib import Path

import httpx


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferwatch", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_up_detached_status_load_and_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = cli("up", "--fast", "--auto-ports", "--detach", "--traffic", "0",
             "--run-dir", str(run_dir))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for name in ("service", "prometheus", "alertmanager", "node_exporter", "inbox"):
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
