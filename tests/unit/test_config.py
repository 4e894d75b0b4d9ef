from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.config import PUSHGATEWAY_SAMPLE_LIMIT, render_prometheus_config
from inferwatch.stack.profiles import FAST


def test_only_the_pushgateway_scrape_has_a_sample_limit() -> None:
    jobs = {j["job_name"]: j for j in render_prometheus_config(FAST, StackPorts())[
        "scrape_configs"]}
    # Anyone who reaches the Pushgateway can push series; the other targets are ours.
    assert jobs.pop("pushgateway")["sample_limit"] == PUSHGATEWAY_SAMPLE_LIMIT
    assert all("sample_limit" not in j for j in jobs.values())
