"""`inferwatch proxy` as a process in front of real servers: our own `serve`, killed and
restarted under load, and MLServer (a third-party Open Inference Protocol v2 server)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from processes import Samples, process, scrape
from servers import free_port

from inferwatch.models.digits import heldout_digits
from inferwatch.operate.load import LoadPlan, Payload, run_load_sync

ROOT = Path(__file__).resolve().parents[2]


def serve(port: int) -> list[str]:
    return [sys.executable, "-m", "inferwatch", "serve", "--port", str(port)]


def proxy_argv(upstream: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inferwatch", "proxy", "--upstream", upstream,
            "--port", str(port), *extra]


def sample(values: Samples, name: str,
           **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_upstream_killed_mid_load_gives_502_with_reason_then_recovers(tmp_path: Path) -> None:
    serve_port, proxy_port = free_port(), free_port()
    upstream, url = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{proxy_port}"
    log = tmp_path / "processes.log"
    digits = {"model": "digits", "version": ""}
    with process(serve(serve_port), f"{upstream}/ping", log) as first, \
            process(proxy_argv(upstream, proxy_port, "--model", "digits"), f"{url}/metrics",
                    log):
        def kill_after_200(sent: int, total: int) -> None:
            if sent == 200:
                first.kill()  # SIGKILL, as a crash would

        during = run_load_sync(LoadPlan(url=url, rate=200, count=600), kill_after_200)
        assert first.poll() is not None
        assert set(during.statuses) == {200, 502}, during.statuses
        assert during.transport_errors == {}  # the proxy answered every request
        down = httpx.post(f"{url}/predictions/digits", content=b"x")
        assert down.status_code == 502
        assert down.json()["error"] == "upstream_connect" and down.json()["code"] == 502

        with process(serve(serve_port), f"{url}/ping", log):  # /ping via the proxy
            after = run_load_sync(LoadPlan(url=url, rate=200, count=200))
        assert after.ok == 200, after.statuses

        values = scrape(f"{url}/metrics")
        sent = during.sent + 1 + after.sent
        assert sample(values, "inference_requests_total", **digits) == sent
        assert sample(values, "inference_responses_total", code="200",
                      **digits) == during.ok + after.ok
        failed = during.statuses[502] + 1
        assert sample(values, "inference_error_reasons_total", reason="upstream_connect",
                      **digits) == failed
        assert sample(values, "inference_errors_total", **digits) == failed
        assert sample(values, "inference_latency_seconds_count", **digits) == during.ok + after.ok


def mlserver_binary() -> str | None:
    """MLServer from INFERWATCH_MLSERVER, the venv `make test` makes, or PATH."""
    for candidate in (os.environ.get("INFERWATCH_MLSERVER"),
                      str(ROOT / ".venv-mlserver" / "bin" / "mlserver"), shutil.which("mlserver")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


# Trained by MLServer's own Python, so that its scikit-learn loads the file it wrote.
TRAIN = """
import json, sys
from pathlib import Path
import joblib
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

root, http, metrics = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
digits = load_digits()
model = LogisticRegression(max_iter=300).fit(digits.data[:1200] / 16.0, digits.target[:1200])
(root / "digits").mkdir(parents=True)
joblib.dump(model, root / "digits" / "model.joblib")
(root / "digits" / "model-settings.json").write_text(json.dumps({
    "name": "digits", "implementation": "mlserver_sklearn.SKLearnModel",
    "parameters": {"uri": "./model.joblib", "version": "1"}}))
(root / "settings.json").write_text(json.dumps({
    "host": "127.0.0.1", "http_port": http, "grpc_port": 0, "metrics_port": metrics,
    "parallel_workers": 0, "debug": False}))
"""


@pytest.mark.skipif(mlserver_binary() is None,
                    reason="MLServer is not installed: `make test` puts it in .venv-mlserver")
def test_mlserver_counts_match_exactly(tmp_path: Path) -> None:
    mlserver = mlserver_binary()
    assert mlserver is not None
    http_port, metrics_port, proxy_port = free_port(), free_port(), free_port()
    python = str(Path(mlserver).parent / "python")
    subprocess.run([python, "-c", TRAIN, str(tmp_path / "models"), str(http_port),
                    str(metrics_port)], check=True, timeout=120, capture_output=True)
    upstream, url = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{proxy_port}"
    log = tmp_path / "processes.log"
    data = heldout_digits()
    payloads = [Payload("/v2/models/digits/infer", json.dumps({"inputs": [{
        "name": "x", "shape": [1, 64], "datatype": "FP32",
        "data": [float(v) for v in image.reshape(-1)]}]}).encode(), "application/json",
        int(label)) for image, label in zip(data.images, data.labels, strict=True)]
    n = 300
    with process([mlserver, "start", str(tmp_path / "models")],
                 f"{upstream}/v2/models/digits/ready", log, timeout=120), \
            process(proxy_argv(upstream, proxy_port), f"{url}/metrics", log):  # discovers
        answer = httpx.post(url + payloads[0].path, content=payloads[0].body,
                            headers={"Content-Type": "application/json"}).json()
        assert answer["model_name"] == "digits" and answer["outputs"][0]["data"] == [
            payloads[0].label]
        result = run_load_sync(LoadPlan(url=url, rate=100, count=n), payloads=payloads)
        assert result.ok == n, (result.statuses, result.transport_errors)

        ours = scrape(f"{url}/metrics")
        labels = {"model": "digits", "version": "1"}  # the version MLServer reported
        assert sample(ours, "inference_requests_total", **labels) == n + 1
        assert sample(ours, "inference_responses_total", code="200", **labels) == n + 1
        assert sample(ours, "inference_stage_seconds_count", stage="compute", **labels) == n + 1
        native = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        successes = [v for (name, lab), v in native.items()
                     if name == "model_infer_request_success_total" and ("model", "digits") in lab]
        assert successes == [n + 1]
