import json
import re
from pathlib import Path

import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from inferwatch.stack.grafana import (
    DATASOURCE_UID,
    RATE_WINDOW,
    decode_dashboard,
    render_dashboard,
    render_provisioning,
    write_grafana_files,
)
from inferwatch.stack.panels import DASHBOARD
from inferwatch.stack.profiles import DEFAULT, FAST


def test_json_decodes_through_the_sdk_models_unchanged() -> None:
    text = render_dashboard(FAST)
    decoded = decode_dashboard(text)
    assert JSONEncoder(sort_keys=True, indent=2).encode(decoded) + "\n" == text
    assert decoded.uid == DASHBOARD.uid and decoded.title == DASHBOARD.title


def test_rows_panels_and_queries_come_from_panels_py() -> None:
    for profile in (DEFAULT, FAST):
        decoded = decode_dashboard(render_dashboard(profile))
        assert decoded.panels is not None
        rows = [p for p in decoded.panels if p.type_val == "row"]
        assert [r.title for r in rows] == [r.title for r in DASHBOARD.rows]
        panels = [p for p in decoded.panels if p.type_val != "row"]
        assert len(panels) == len(DASHBOARD.panels)
        for built, panel in zip(panels, DASHBOARD.panels, strict=True):
            assert built.title == panel.title
            assert built.type_val == panel.kind
            assert built.datasource is not None and built.datasource.uid == "${datasource}"
            assert built.targets is not None and len(built.targets) == 1
            target = built.targets[0].to_json()
            assert target["expr"] == panel.query(profile, "$model", "$instance", RATE_WINDOW)
            assert target["legendFormat"] == panel.legend
            defaults = built.field_config.defaults if built.field_config else None
            assert defaults is not None and defaults.unit == panel.unit
            steps = defaults.thresholds.steps if defaults.thresholds else []
            if panel.thresholds:
                assert [(s.value, s.color) for s in steps] == [
                    (t.value, t.color) for t in panel.thresholds]
            assert built.grid_pos is not None and built.grid_pos.w == panel.width


def test_template_variables_datasource_model_and_instance() -> None:
    data = json.loads(render_dashboard(FAST))
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert list(variables) == ["datasource", "model", "instance"]
    chooser = variables.pop("datasource")
    assert (chooser["type"], chooser["query"]) == ("datasource", "prometheus")
    assert chooser["current"]["value"] == DATASOURCE_UID  # ours, where it is provisioned
    for variable in variables.values():
        assert variable["type"] == "query" and variable["includeAll"]
        assert variable["allValue"] == ".+"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for variable in DASHBOARD.variables:
        assert variables[variable.name]["query"] == variable.grafana_query
    assert variables["instance"]["regex"].startswith("/^(")
    assert data["refresh"] == "5s" and json.loads(render_dashboard(DEFAULT))["refresh"] == "30s"


def test_provisioning_files(tmp_path: Path) -> None:
    paths = write_grafana_files(tmp_path, FAST, "http://prometheus:9090")
    assert set(paths) == {"grafana_dashboard", "grafana_datasources", "grafana_dashboards"}
    datasource = yaml.safe_load(paths["grafana_datasources"].read_text())["datasources"][0]
    assert datasource["uid"] == DATASOURCE_UID and datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["jsonData"]["timeInterval"] == FAST.scrape_interval
    provider = yaml.safe_load(paths["grafana_dashboards"].read_text())["providers"][0]
    assert Path(provider["options"]["path"]) == paths["grafana_dashboard"].parent
    assert paths["grafana_dashboard"].read_text() == render_dashboard(FAST)


def test_no_panel_names_a_datasource_uid_or_a_fixed_window() -> None:
    """Every panel reads ${datasource}, and Grafana picks each rate's window."""
    for profile in (DEFAULT, FAST):
        text = render_dashboard(profile)
        assert text.count(DATASOURCE_UID) == 1  # the datasource variable's current value
        exprs = [t["expr"] for p in json.loads(text)["panels"] for t in p.get("targets", [])]
        ranges = {r for e in exprs for r in re.findall(r"\}\[([^\]]+)\]", e)}  # a selector's
        assert ranges == {RATE_WINDOW}


def test_only_a_lone_datasource_is_marked_default(tmp_path: Path) -> None:
    local = render_provisioning(FAST, tmp_path, "http://prometheus:9090")
    assert local["datasources"]["datasources"][0]["isDefault"] is True
    shared = render_provisioning(FAST, tmp_path, "http://prometheus:9090", default=False)
    assert "isDefault" not in shared["datasources"]["datasources"][0]
