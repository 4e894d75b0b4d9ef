"""A slow bucket leads to a request: a real Prometheus, with exemplar storage on, scrapes
`serve` in OpenMetrics and answers ``/api/v1/query_exemplars`` with the slow request's id."""

import time
from pathlib import Path

import httpx
from processes import process
from prometheus_client import CollectorRegistry
from servers import serving

from inferwatch.operate.load import build_payloads
from inferwatch.serve.app import ServeConfig, create_app
from inferwatch.stack.addresses import free_ports
from inferwatch.stack.runner import find_binary

SLOW = 0.3  # s added to one request's preprocessing
SLOW_ID = "slow-exemplar-1"


def prometheus_config(target: str) -> str:
    return ("global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n- job_name: inference\n"
            f"  static_configs:\n  - targets: ['{target}']\n")


def exemplars(base: str, since: float) -> list[tuple[dict[str, str], float]]:
    """Every exemplar of the latency buckets Prometheus stored since ``since``."""
    response = httpx.get(f"{base}/api/v1/query_exemplars", timeout=10, params={
        "query": "inference_latency_seconds_bucket", "start": since, "end": time.time() + 60})
    response.raise_for_status()
    return [(e["labels"], float(e["value"]))
            for series in response.json()["data"] for e in series["exemplars"]]


def test_prometheus_finds_the_slow_request_by_its_latency_exemplar(tmp_path: Path) -> None:
    app = create_app(ServeConfig(), CollectorRegistry())
    service = app.state.service
    png = build_payloads("predictions")[0]
    headers = {"Content-Type": png.content_type}
    with serving(app) as url:
        prom_port, = free_ports(1)
        config = tmp_path / "prometheus.yml"
        config.write_text(prometheus_config(url.removeprefix("http://")))
        base = f"http://127.0.0.1:{prom_port}"
        argv = [find_binary("prometheus"), f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--enable-feature=exemplar-storage"]
        with process(argv, f"{base}/-/ready", tmp_path / "prometheus.log"):
            since = time.time() - 5
            service.faults.set_latency("preprocess", SLOW)
            slow = httpx.post(url + png.path, content=png.body, timeout=10,
                              headers={**headers, "X-Request-ID": SLOW_ID})
            service.faults.set_latency("preprocess", 0.0)
            fast = [httpx.post(url + png.path, content=png.body, headers=headers, timeout=10)
                    for _ in range(20)]
            assert slow.status_code == 200 and {r.status_code for r in fast} == {200}
            deadline = time.monotonic() + 60
            while not any(e[0].get("request_id") == SLOW_ID for e in exemplars(base, since)):
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.5)
            found = exemplars(base, since)
    slow_ones = {labels["request_id"] for labels, seconds in found if seconds >= SLOW}
    assert slow_ones == {SLOW_ID}
    answered = {r.headers["X-Request-ID"] for r in fast}
    assert {labels["request_id"] for labels, seconds in found if seconds < SLOW} <= answered
