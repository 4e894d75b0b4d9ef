"""The dashboard against a live stack: every panel query returns data, and the page draws it."""

import json
import math
import time
from collections.abc import Iterator
from itertools import product
from pathlib import Path

import pytest

from inferwatch.operate.chaos import ChaosClient
from inferwatch.operate.load import LoadPlan, Payload, run_load_sync
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.grafana import RATE_WINDOW, render_dashboard
from inferwatch.stack.panels import ALL, DASHBOARD, literal_regex
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Stack, StackOptions

CHROMIUM = Path("/usr/bin/chromium")
# Playwright drives Debian's Chromium; it must never download a browser of its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "screenshots" / "dashboard.png"
CONDITIONAL = {p.key for p in DASHBOARD.panels if p.requires}
ALERT = "HighInferenceErrorRate"

# Every chart of the page has drawn points for the given model selection ("" is All); a
# conditional panel may instead say why it has none.
DRAWN = """(model) => {
  const cards = [...document.querySelectorAll('.panel[data-kind]')]
    .filter((c) => c.dataset.kind !== 'alertmanager');
  return cards.length > 0 && cards.every((c) => c.dataset.model === model &&
    (c.dataset.state === 'unavailable' || (c.dataset.state === 'ok' && +c.dataset.points > 0)));
}"""
STATES = """() => Object.fromEntries([...document.querySelectorAll('.panel[data-kind]')]
  .map((c) => [c.dataset.panel, {state: c.dataset.state, points: +c.dataset.points || 0,
    series: JSON.parse(c.dataset.series || '[]'), canvas: !!c.querySelector('canvas')}]))"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with steady demo traffic and some client mistakes, so error panels have data."""
    opts = StackOptions(run_dir=tmp_path_factory.mktemp("stack"), profile=FAST,
                        ports=StackPorts.free(), traffic_rate=20)
    with Stack(opts) as running:
        service = url(opts.ports.service)
        unknown = run_load_sync(LoadPlan(url=service, rate=50, count=30, model="no-such-model"))
        assert unknown.statuses == {404: 30}
        garbage = [Payload("/predictions/digits", b"not an image", "image/png", 0)]
        invalid = run_load_sync(LoadPlan(url=service, rate=50, count=30), payloads=garbage)
        assert invalid.statuses == {400: 30}
        # A real alert for the alert panels: 30% injected failures fire the seed's rule.
        with ChaosClient.from_run_dir(opts.run_dir) as chaos:
            chaos.errors(0.3)
            prom = PrometheusAPI(url(opts.ports.prometheus))
            deadline = time.monotonic() + 60
            while not any(a["labels"]["alertname"] == ALERT and a["state"] == "firing"
                          for a in prom.alerts()):
                assert time.monotonic() < deadline, f"{ALERT} did not fire"
                time.sleep(0.5)
            prom.close()
            yield running
            chaos.clear()


def wait_for_samples(prom: PrometheusAPI) -> None:
    """Two scrapes of every job after the traffic above: enough for rate() to have a value."""
    for _ in range(2):
        after = time.time()
        for job in ("inference", "node"):
            prom.wait_for_scrape(job, after=after)


def grafana_queries(model: str, instance: str, step: float) -> list[str]:
    """The Grafana JSON's panel queries, in ``DASHBOARD.panels`` order, with its variables
    substituted as Grafana does for a range query of this ``step``: ``$__rate_interval`` is
    max($__interval + scrape interval, 4 x scrape interval), the scrape interval being the
    datasource's timeInterval (the profile's), $__interval the step."""
    scrape = FAST.scrape_seconds
    window = f"{max(step + scrape, 4 * scrape):g}s"
    panels = [p for p in json.loads(render_dashboard(FAST))["panels"] if p["type"] != "row"]
    return [t["expr"].replace(RATE_WINDOW, window).replace("$model", model)
            .replace("$instance", instance) for p in panels for t in p["targets"]]


def test_every_panel_query_returns_data_for_every_variable_value(
        stack: Stack, prom: PrometheusAPI) -> None:
    wait_for_samples(prom)
    values = {v.name: [ALL, *map(literal_regex, v.options(prom.label_values(v.label, v.metric)))]
              for v in DASHBOARD.variables}
    assert values == {"model": [ALL, "digits"], "instance": [ALL, literal_regex("127.0.0.1")]}

    end = time.time()
    empty, unmet = [], set()
    for model, instance in product(values["model"], values["instance"]):
        grafana = grafana_queries(model, instance, 1)
        assert len(grafana) == len(DASHBOARD.panels)
        for panel, in_grafana in zip(DASHBOARD.panels, grafana, strict=True):
            requirement = panel.requirement(FAST, model, instance)
            if requirement is not None and not prom.query(requirement):
                unmet.add((panel.key, model, instance))
            # The built-in page's query (the profile's window), then Grafana's: each runs,
            # so a conditional panel's error fails here too.
            for query in (panel.query(FAST, model, instance), in_grafana):
                assert "$" not in query, query
                data = prom.query_range(query, end - 60, end, 1)
                if not any(math.isfinite(float(v)) for series in data["result"]
                           for _, v in series["values"]):
                    empty.append((panel.key, model, instance, query))
    # Conditional panels are excepted where their series are absent, and only they: the GPU
    # ones without a GPU, and the LLM row (the digits demo counts no tokens).
    assert [e for e in empty if e[:3] not in unmet] == []
    assert {key for key, _, _ in unmet} >= {p.key for p in DASHBOARD.panels if p.row == "llm"}

    names = set(prom.label_values("__name__"))
    for panel in DASHBOARD.panels:
        if any(key == panel.key for key, _, _ in unmet):
            continue
        assert panel.metrics <= names, (panel.key, panel.metrics - names)

    firing = [a for a in prom.alerts() if a["state"] == "firing"]
    assert any(a["labels"]["alertname"] == ALERT for a in firing)
    assert prom.scalar(DASHBOARD.panel("alerts_firing").query(FAST)) == len(firing)


def test_page_draws_every_chart_switches_model_without_console_errors(
        stack: Stack, prom: PrometheusAPI) -> None:
    if not CHROMIUM.exists():
        raise RuntimeError(f"the browser test needs {CHROMIUM}: run `make deps`")
    from playwright.sync_api import sync_playwright

    wait_for_samples(prom)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("console",
                    lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(f"{url(stack.opts.ports.dashboard)}/?range=60&refresh=5")

            page.wait_for_function(DRAWN, arg="", timeout=30_000)
            page.wait_for_function(
                "(name) => document.querySelector('[data-panel=alertmanager]')"
                ".textContent.includes(name)", arg=ALERT, timeout=15_000)
            before = page.evaluate(STATES)
            assert {k for k, v in before.items() if v["state"] == "unavailable"} <= CONDITIONAL
            charts = [p.key for p in DASHBOARD.panels if p.kind == "timeseries"]
            assert all(before[k]["canvas"] for k in charts if before[k]["state"] == "ok")
            assert set(before["qps"]["series"]) == {"digits", "_unknown"}

            page.select_option("select[data-variable=model]", "digits")
            page.wait_for_function(DRAWN, arg="digits", timeout=30_000)
            after = page.evaluate(STATES)
            assert after["qps"]["series"] == ["digits"]
            assert "model=digits" in page.url
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert problems == []
