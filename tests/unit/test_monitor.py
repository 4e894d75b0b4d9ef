"""`up --monitor` / `render --monitor`: the addresses of a server, the stack around it, and
SLOs that its series can evaluate."""

from pathlib import Path

import pytest
from servers import serving
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from typer.testing import CliRunner

from inferwatch.cli import app
from inferwatch.stack.addresses import StackPorts, free_ports
from inferwatch.stack.config import render_prometheus_config
from inferwatch.stack.monitor import (
    MonitoredServer,
    MonitorError,
    check_metrics,
    coverage_notes,
    discover,
    monitored_slos,
    parse_monitor,
    parse_monitors,
)
from inferwatch.stack.profiles import FAST
from inferwatch.stack.rules import alert_names, render_rule_file
from inferwatch.stack.ruletests import render_rule_tests
from inferwatch.stack.runner import HA_PORTS, StackError, StackOptions, components
from inferwatch.stack.slo import LatencyObjective, SLOError, load_slos, parse_slos, slos_for


@pytest.mark.parametrize(("spec", "metrics", "models_at"), [
    ("torchserve=127.0.0.1:8080", "127.0.0.1:8082", "127.0.0.1:8081"),
    ("torchserve=10.0.0.5:9080,metrics=10.0.0.5:9082,management=10.0.0.5:9081",
     "10.0.0.5:9082", "10.0.0.5:9081"),
    ("triton=127.0.0.1:8000", "127.0.0.1:8002", "127.0.0.1:8000"),
    ("mlserver=127.0.0.1:8080", "127.0.0.1:8082", "127.0.0.1:8080"),
    ("vllm=[::1]:8001", "[::1]:8001", "[::1]:8001"),  # metrics on the API port, wherever
])
def test_metrics_and_model_list_addresses_default_to_the_servers_ports(
        spec: str, metrics: str, models_at: str) -> None:
    server = parse_monitor(spec)
    assert (server.metrics, server.models_at, server.proxied) == (metrics, models_at, False)


def test_proxy_before_a_server_or_any_server() -> None:
    assert parse_monitor("vllm=127.0.0.1:8000,proxy").proxied
    assert parse_monitors(["triton=127.0.0.1:8000"], proxy=True)[0].proxied
    anything = parse_monitor("proxy=127.0.0.1:5000")
    assert (anything.proxied, anything.metrics, anything.models_at) == (
        True, None, "127.0.0.1:5000")


@pytest.mark.parametrize(("specs", "proxy", "message"), [
    (["nosuch=127.0.0.1:1"], False, "KIND must be one of torchserve"),
    (["torchserve=127.0.0.1"], False, "expected HOST:PORT"),
    (["torchserve=127.0.0.1:99999"], False, "expected HOST:PORT"),
    (["torchserve=127.0.0.1:8080,metrics=8082"], False, "expected HOST:PORT"),
    (["triton=127.0.0.1:8000,management=127.0.0.1:8001"], False, "unknown option"),
    (["proxy=127.0.0.1:8000,metrics=127.0.0.1:8001"], False, "unknown option"),
    (["torchserve=127.0.0.1:8080", "triton=127.0.0.1:8000"], True, "exactly one --monitor"),
    (["vllm=127.0.0.1:8000", "vllm=127.0.0.1:8001"], False, "one --monitor per kind"),
    (["vllm=127.0.0.1:8000,proxy", "proxy=127.0.0.1:8001"], False, "one proxy"),
])
def test_bad_monitor_specs_are_refused_with_the_reason(specs: list[str], proxy: bool,
                                                       message: str) -> None:
    with pytest.raises(MonitorError, match=message):
        parse_monitors(specs, proxy)


def served(spec: str, *models: str) -> list[MonitoredServer]:
    return [discover(parse_monitor(spec), models)]


def objectives(spec: str, *models: str) -> dict[str, tuple[bool, bool]]:
    """{model: (availability objective, latency objective)}."""
    return {s.model: (s.availability is not None, s.latency_threshold is not None)
            for s in monitored_slos(served(spec, *models))}


def test_slos_keep_only_the_objectives_the_servers_series_measure() -> None:
    # TorchServe: no per-model failures, no latency histogram; vLLM: no failures; Triton and
    # MLServer: no histogram; the proxy measures both.
    assert objectives("torchserve=127.0.0.1:8080", "densenet161") == {
        "densenet161": (False, False)}
    assert objectives("vllm=127.0.0.1:8000", "opt") == {"opt": (False, True)}
    assert objectives("triton=127.0.0.1:8000", "simple") == {"simple": (True, False)}
    assert objectives("mlserver=127.0.0.1:8080", "iris") == {"iris": (True, False)}
    assert objectives("torchserve=127.0.0.1:8080,proxy", "densenet161") == {
        "densenet161": (True, True)}
    notes = coverage_notes(served("torchserve=127.0.0.1:8080", "densenet161"))
    assert notes == ["TorchServe's own metrics have no per-model errors nor latency histogram: "
                     "no availability or latency SLO for densenet161; --proxy adds them "
                     "(docs/proxy.md)"]


def test_another_servers_digits_gets_the_defaults_not_serves_objectives(
        tmp_path: Path) -> None:
    digits, = slos_for(["digits"])
    # serve's digits expects traffic (an idle TorchServe would page) and feedback accuracy.
    assert (digits.expect_traffic, digits.accuracy) == (False, None)
    assert (digits.availability, digits.latency_threshold) == (0.99, 1.0)
    mine = tmp_path / "slo.yml"
    mine.write_text("models:\n  densenet161:\n    availability: 0.9\n    expect_traffic: true\n"
                    "defaults:\n  latency: {objective: 0.9, threshold_seconds: 0.5}\n")
    densenet, other = slos_for(["densenet161", "other"], mine)
    assert (densenet.availability, densenet.latency_threshold, densenet.expect_traffic) == (
        0.9, None, True)
    assert (other.availability, other.latency_threshold) == (None, 0.5)


def test_slo_file_objectives_are_each_optional_but_checked() -> None:
    slo, = parse_slos({"models": {"m": {"availability": 0.99}}})
    assert slo.latency_threshold is None
    with pytest.raises(SLOError, match="not a histogram bucket"):
        parse_slos({"models": {}, "defaults": {"latency": {"objective": 0.9,
                                                           "threshold_seconds": 0.026}}})
    with pytest.raises(SLOError, match="no latency objective"):
        assert slo.le


def test_rules_of_a_native_torchserve_have_no_alert_that_cannot_evaluate() -> None:
    slos = monitored_slos(served("torchserve=127.0.0.1:8080", "digits"))
    names = set(alert_names(FAST, slos))
    assert names.isdisjoint({"InferenceNoTraffic", "InferenceLatencyHigh", "AccuracyDrop",
                             "InferenceErrorBudgetBurnFast", "InferenceLatencyBudgetBurnFast"})
    text = str(render_rule_file(FAST, slos))
    assert 'model="digits"' not in text
    render_rule_tests(FAST, slos, "rules.yml")  # every remaining alert has its promtool test


def stream_objectives(spec: str) -> tuple[bool, bool]:
    """(time-to-first-token objective, inter-token latency objective) of the server's model."""
    slo, = monitored_slos(served(spec, "m"))
    return slo.time_to_first_token is not None, slo.inter_token_latency is not None


def test_llm_objectives_only_where_llm_streams_are_measured() -> None:
    # vLLM's own series, or the proxy before an OpenAI-style server (vLLM, or one it does
    # not know); TorchServe, Triton and MLServer stream no tokens, proxied or not.
    for spec in ("vllm=127.0.0.1:8000", "vllm=127.0.0.1:8000,proxy", "proxy=127.0.0.1:8000"):
        assert stream_objectives(spec) == (True, True), spec
    for spec in ("torchserve=127.0.0.1:8080,proxy", "triton=127.0.0.1:8000",
                 "mlserver=127.0.0.1:8080,proxy"):
        assert stream_objectives(spec) == (False, False), spec
    slo, = monitored_slos(served("vllm=127.0.0.1:8000", "m"))
    assert slo.time_to_first_token is not None and slo.inter_token_latency is not None
    # Bounds of inferwatch's buckets and of vLLM's, so the share above them is exact.
    assert (slo.time_to_first_token.le, slo.inter_token_latency.le) == ("1.0", "0.1")
    # serve's own models are no LLMs: their SLOs set none.
    assert all(s.time_to_first_token is None and s.inter_token_latency is None
               for s in load_slos())


def test_llm_objectives_are_checked_against_their_histograms_buckets() -> None:
    slo, = parse_slos({"models": {"m": {"time_to_first_token": {
        "objective": 0.9, "threshold_seconds": 0.25}}}})
    assert slo.time_to_first_token == LatencyObjective(0.9, 0.25)
    assert (slo.availability, slo.latency_threshold, slo.inter_token_latency) == (
        None, None, None)
    with pytest.raises(SLOError, match=r"inter_token_latency threshold_seconds 0\.11 .* "
                                       r"nearest bounds: 0\.1, 0\.125"):
        parse_slos({"models": {"m": {"inter_token_latency": {
            "objective": 0.9, "threshold_seconds": 0.11}}}})
    with pytest.raises(SLOError, match=r"time_to_first_token\.objective"):
        parse_slos({"models": {"m": {"time_to_first_token": {
            "objective": 95, "threshold_seconds": 1.0}}}})


@pytest.mark.parametrize(("spec", "slo_alerts"), [
    ("vllm=127.0.0.1:8000,proxy", {"InferenceLatencyHigh", "InferenceLatencyBudgetBurnFast",
                                   "InferenceErrorBudgetBurnSlow",
                                   "InferenceTimeToFirstTokenBudgetBurnFast",
                                   "InferenceInterTokenLatencyBudgetBurnSlow"}),
    ("vllm=127.0.0.1:8000", {"InferenceLatencyHigh", "InferenceLatencyBudgetBurnSlow",
                             "InferenceTimeToFirstTokenBudgetBurnSlow",
                             "InferenceInterTokenLatencyBudgetBurnFast"}),
    ("triton=127.0.0.1:8000", {"InferenceErrorBudgetBurnFast"}),
    ("mlserver=127.0.0.1:8080", {"InferenceErrorBudgetBurnSlow"}),
])
def test_rule_tests_cover_slos_of_models_other_than_digits(spec: str,
                                                            slo_alerts: set[str]) -> None:
    slos = monitored_slos(served(spec, "opt"))
    tests = render_rule_tests(FAST, slos, "rules.yml")  # raises when an alert has no test
    names = {t["alert_rule_test"][0]["alertname"] for k in tests.values() for t in k["tests"]}
    assert slo_alerts <= names


def test_the_inference_job_is_the_component_that_measures() -> None:
    def jobs(**kw: object) -> dict[str, list[str]]:
        config = render_prometheus_config(FAST, StackPorts(), **kw)
        return {j["job_name"]: j["static_configs"][0]["targets"]
                for j in config["scrape_configs"]}

    assert jobs()["inference"] == ["127.0.0.1:8080"]
    assert jobs(inference="proxy")["inference"] == ["127.0.0.1:8090"]
    assert "inference" not in jobs(inference=None, known_servers={"torchserve": None})


def test_a_monitoring_stack_runs_no_service_and_the_proxy_only_when_asked(
        tmp_path: Path) -> None:
    server = discover(parse_monitor("torchserve=127.0.0.1:8080"), ["a", "b"])
    opts = StackOptions(run_dir=tmp_path, profile=FAST, traffic_rate=0, monitored=[server])
    assert {p.name for p in components(opts)} == {
        "inbox", "node_exporter", "pushgateway", "alertmanager", "prometheus", "dashboard"}
    assert opts.unused_ports() == {"service", "admin", "proxy", "store", *HA_PORTS}

    proxied = discover(parse_monitor("torchserve=127.0.0.1:8080,proxy"), ["a", "b"])
    opts = StackOptions(run_dir=tmp_path, profile=FAST, traffic_rate=0, monitored=[proxied])
    proxy = next(p for p in components(opts) if p.name == "proxy")
    assert proxy.argv[3:] == ["proxy", "--upstream", "http://127.0.0.1:8080", "--host",
                              "127.0.0.1", "--port", "8090", "--model", "a", "--model", "b"]
    assert "proxy" not in opts.unused_ports()


def test_demo_traffic_is_refused_around_a_monitored_server(tmp_path: Path) -> None:
    from inferwatch.stack.runner import Stack

    server = parse_monitor("torchserve=127.0.0.1:8080")
    with pytest.raises(StackError, match="demo traffic"):
        Stack(StackOptions(run_dir=tmp_path, profile=FAST, traffic_rate=1,
                           monitored=[server])).start()


def test_a_metrics_endpoint_that_does_not_answer_stops_the_start() -> None:
    not_found = Starlette(routes=[Route("/ping", lambda r: PlainTextResponse("ok"))])
    with serving(not_found) as base:
        host_port = base.removeprefix("http://")
        server = parse_monitor(f"torchserve={host_port},metrics={host_port}")
        with pytest.raises(MonitorError, match=r"HTTP 404\. TorchServe serves them on its "
                                               r"metrics_address"):
            check_metrics(server)
    closed = f"127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(MonitorError, match="ConnectError"):
        check_metrics(parse_monitor(f"vllm={closed}"))


def test_cli_refuses_bad_monitor_options(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["render", "--out", str(tmp_path), "--monitor", "tgi=h:1"])
    assert result.exit_code == 2 and "KIND must be one of" in result.output
    result = runner.invoke(app, ["render", "--out", str(tmp_path), "--proxy"])
    assert result.exit_code == 2 and "--proxy needs --monitor" in result.output
    closed = f"127.0.0.1:{free_ports(1)[0]}"
    result = runner.invoke(app, ["render", "--out", str(tmp_path), "--monitor",
                                 f"torchserve={closed},management={closed}"])
    assert result.exit_code == 2 and "name them with --model" in result.output
