"""A real MLServer scraped by a real Prometheus with the generated rules, no proxy in front:
its own series become inferwatch's, and `diagnose` reads them; then with the proxy in front,
the model is counted once."""

import json
import subprocess
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from processes import process, scrape
from test_proxy_upstreams import TRAIN, free_port, mlserver_binary, proxy_argv

from inferwatch.models.digits import heldout_digits
from inferwatch.operate.diagnose import Diagnoser
from inferwatch.operate.load import LoadPlan, Payload, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.config import write_stack_config
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import find_binary

DIGITS = 'model="digits"'
NATIVE = f'{DIGITS}, source="mlserver"'


def payloads() -> list[Payload]:
    """Nine digits, then one request whose three features the model cannot take."""
    data = heldout_digits()
    good = [Payload("/v2/models/digits/infer", json.dumps({"inputs": [{
        "name": "x", "shape": [1, 64], "datatype": "FP32",
        "data": [float(v) for v in image.reshape(-1)]}]}).encode(), "application/json",
        int(label)) for image, label in zip(data.images[:9], data.labels[:9], strict=True)]
    bad = Payload("/v2/models/digits/infer", json.dumps({"inputs": [{
        "name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 1.0, 2.0]}]}).encode(),
        "application/json", 0)
    return [*good, bad]


def send(base: str, n: int, rate: float = 25) -> dict[int, int]:
    """``n`` requests one after the other, ``rate`` a second; MLServer answers the bad
    ones 500, then resets the connection (uvicorn, after the model's exception): each request
    gets its own."""
    statuses: dict[int, int] = {}
    cycle = payloads()
    with httpx.Client(base_url=base, timeout=10) as client:
        start = time.monotonic()
        for i in range(n):
            p = cycle[i % len(cycle)]
            code = client.post(p.path, content=p.body,
                               headers={"Content-Type": p.content_type,
                                        "Connection": "close"}).status_code
            statuses[code] = statuses.get(code, 0) + 1
            time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    return statuses


def wait_for(prom: PrometheusAPI, expr: str, expected: float | None,
             timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := prom.scalar(expr)) != expected:
        assert time.monotonic() < deadline, f"{expr} = {got}, expected {expected}"
        time.sleep(0.2)


@pytest.mark.skipif(mlserver_binary() is None,
                    reason="MLServer is not installed: `make test` puts it in .venv-mlserver")
def test_mlserver_series_feed_rules_panels_and_diagnose(tmp_path: Path) -> None:
    mlserver = mlserver_binary()
    assert mlserver is not None
    http_port, metrics_port = free_port(), free_port()
    ports = StackPorts.free()  # the proxy, when it comes, listens on the `inference` job's port
    subprocess.run([str(Path(mlserver).parent / "python"), "-c", TRAIN,
                    str(tmp_path / "models"), str(http_port), str(metrics_port)],
                   check=True, timeout=120, capture_output=True)
    config = write_stack_config(tmp_path / "stack", FAST, ports,
                                known_servers={"mlserver": f"127.0.0.1:{metrics_port}"})
    prometheus = [find_binary("prometheus"), f"--config.file={config['prometheus']}",
                  f"--storage.tsdb.path={tmp_path / 'data'}",
                  f"--web.listen-address=127.0.0.1:{ports.prometheus}"]
    upstream = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "processes.log"
    with process([mlserver, "start", str(tmp_path / "models")],
                 f"{upstream}/v2/models/digits/ready", log, timeout=120), \
            process(prometheus, f"{url(ports.prometheus)}/-/ready", log), \
            closing(PrometheusAPI(url(ports.prometheus))) as prom:
        prom.wait_for_scrape("mlserver", after=0)
        n, failed = 200, 20
        started = time.time()
        statuses = send(upstream, n)
        ended = time.time()
        assert statuses == {200: n - failed, 500: failed}, statuses

        # The recorded counters are MLServer's own, to the request.
        wait_for(prom, f"inference_requests_total{{{NATIVE}}}", n)
        assert prom.scalar(f"inference_errors_total{{{NATIVE}}}") == failed
        assert prom.scalar(f'model_infer_request_failure_total{{{DIGITS}}}') == failed
        native_mean = prom.scalar(f"model_infer_request_duration_sum{{{DIGITS}}}"
                                  f" / model_infer_request_duration_count{{{DIGITS}}}")
        mean = prom.scalar(f"inference_latency_seconds_sum{{{NATIVE}}}"
                           f" / inference_latency_seconds_count{{{NATIVE}}}")
        assert native_mean is not None and mean == pytest.approx(native_mean, rel=1e-9)
        info = prom.query(f"inference_model_info{{{NATIVE}}}")
        assert [s.labels["runtime"] for s in info] == ["mlserver"]
        # Over the rate window that ends with the traffic: MLServer's one failure in ten.
        ratio = prom.scalar(f"model:inference_errors:ratio_rate15s{{{DIGITS}}}", at=ended)
        assert ratio is not None and abs(ratio - 0.1) < 0.03, ratio

        diagnosis = Diagnoser(prom, model="digits", since=time.time() - started + 5
                              ).run()
        assert {"latency", "errors"} <= {e.signal for e in diagnosis.symptoms}
        assert "traffic" not in diagnosis.skipped

        # The proxy in front: its own count is used, MLServer's is no longer recorded.
        proxied = 50
        with process(proxy_argv(upstream, ports.service), f"{url(ports.service)}/metrics",
                     log):
            prom.wait_for_scrape("inference", after=time.time())
            sent = run_load_sync(LoadPlan(url=url(ports.service), rate=50, count=proxied),
                                 payloads=payloads()[:9])
            assert sent.ok == proxied
            ours = scrape(f"{url(ports.service)}/metrics")
            assert ours[("inference_requests_total", (("model", "digits"), ("version", "1")))] \
                == proxied
            wait_for(prom, f"sum(inference_requests_total{{{DIGITS}}})", proxied)
            wait_for(prom, f'sum(model_infer_request_success_total{{{DIGITS}}})',
                     n - failed + proxied)
            assert prom.query(f"inference_requests_total{{{NATIVE}}}") == []
