import pytest

from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.config import KNOWN_SERVERS, render_prometheus_config
from inferwatch.stack.profiles import FAST


def test_known_server_jobs_are_opt_in_with_default_ports_and_docs() -> None:
    plain = render_prometheus_config(FAST, StackPorts())
    assert [j["job_name"] for j in plain["scrape_configs"]] == [
        "inference", "node", "alertmanager", "prometheus", "pushgateway"]
    config = render_prometheus_config(FAST, StackPorts(), {
        "torchserve": None, "triton": None, "vllm": "10.0.0.5:8000"})
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["torchserve"]["static_configs"] == [{"targets": ["127.0.0.1:8082"]}]
    assert jobs["triton"]["static_configs"] == [{"targets": ["127.0.0.1:8002"]}]
    assert jobs["vllm"]["static_configs"] == [{"targets": ["10.0.0.5:8000"]}]
    assert all(jobs[n]["metrics_path"] == "/metrics" for n in ("torchserve", "triton", "vllm"))
    assert all(s.docs.startswith("https://") for s in KNOWN_SERVERS.values())
    with pytest.raises(ValueError, match="known: torchserve"):
        render_prometheus_config(FAST, StackPorts(), {"nosuch": None})
