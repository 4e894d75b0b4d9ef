"""Grafana dashboard JSON and provisioning files, rendered from ``panels.DASHBOARD``.

Built with grafana-foundation-sdk, so the JSON follows Grafana's own schema; the tests decode
it back through the SDK's models.

Panels and variables name their datasource through the ``${datasource}`` variable, so the
dashboard works in a Grafana that has another Prometheus (kube-prometheus-stack's), and
Grafana picks each rate's window (``$__rate_interval``) from the datasource's scrape interval
and the time range shown. The built-in page runs the same queries with the profile's window.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

# The SDK deprecates the classic dashboard schema in favour of v2, but classic JSON is what
# Grafana's file provisioning loads in every version (v2 needs feature flags in Grafana 12).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.builders.common import (
        GraphThresholdsStyleConfig,
        VizLegendOptions,
        VizTooltipOptions,
    )
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model

from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.panels import ALL, DASHBOARD, Dashboard, Panel, Variable
from inferwatch.stack.profiles import Profile
from inferwatch.stack.yamlfile import write_yaml

__all__ = [
    "DATASOURCE_NAME",
    "DATASOURCE_UID",
    "DATASOURCE_VARIABLE",
    "RATE_WINDOW",
    "build_dashboard",
    "decode_dashboard",
    "render_dashboard",
    "render_provisioning",
    "write_grafana_files",
]

DATASOURCE_UID = "inferwatch-prometheus"
DATASOURCE_NAME = "Prometheus (inferwatch)"
DATASOURCE_VARIABLE = "datasource"
RATE_WINDOW = "$__rate_interval"  # max($__interval + scrape interval, 4 x scrape interval)
_DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")
_HEIGHT = 8


def _thresholds(panel: Panel) -> gd.ThresholdsConfig:
    steps = [model.Threshold(value=t.value, color=t.color) for t in panel.thresholds]
    return (gd.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps(steps or [model.Threshold(value=None, color="green")]))


def _panel(panel: Panel, profile: Profile) -> stat.Panel | timeseries.Panel:
    query = (prometheus.Dataquery()
             .expr(panel.query(profile, "$model", "$instance", window=RATE_WINDOW))
             .legend_format(panel.legend).ref_id("A").datasource(_DATASOURCE))
    built: stat.Panel | timeseries.Panel
    if panel.kind == "stat":
        built = stat.Panel().color_mode(common.BigValueColorMode.VALUE)
    else:
        style = common.GraphThresholdsStyleMode.DASHED if panel.thresholds else \
            common.GraphThresholdsStyleMode.OFF
        built = (timeseries.Panel().fill_opacity(10).line_width(1)
                 .thresholds_style(GraphThresholdsStyleConfig().mode(style))
                 .legend(VizLegendOptions().show_legend(True)
                         .display_mode(common.LegendDisplayMode.LIST)
                         .placement(common.LegendPlacement.BOTTOM))
                 .tooltip(VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                          .sort(common.SortOrder.DESCENDING)))
    built = (built.title(panel.title).unit(panel.unit).datasource(_DATASOURCE)
             .thresholds(_thresholds(panel)).with_target(query)
             .height(_HEIGHT).span(panel.width))
    if panel.description:
        built = built.description(panel.description)
    if panel.absent:
        built = built.no_value(panel.absent)
    return built


def _variable(variable: Variable) -> gd.QueryVariable:
    built = (gd.QueryVariable(variable.name).label(variable.title)
             .query(variable.grafana_query).datasource(_DATASOURCE)
             .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
             .sort(model.VariableSort.ALPHABETICAL_ASC)
             .multi(True).include_all(True).all_value(ALL)
             .current(model.VariableOption(selected=True, text=["All"], value=["$__all"])))
    if variable.regex is not None:
        built = built.regex(f"/{variable.regex}/")
    return built


def _datasource_variable() -> gd.DatasourceVariable:
    # Ours when it is provisioned (render, compose, k8s), else the first Prometheus.
    ours = model.VariableOption(selected=True, text=DATASOURCE_NAME, value=DATASOURCE_UID)
    return (gd.DatasourceVariable(DATASOURCE_VARIABLE).label("Data source").type("prometheus")
            .current(ours))


def build_dashboard(profile: Profile, dashboard: Dashboard = DASHBOARD) -> model.Dashboard:
    builder = (gd.Dashboard(dashboard.title).uid(dashboard.uid).tags(["inferwatch"])
               .time("now-1h", "now").refresh(_refresh(profile)).timezone("browser")
               .tooltip(model.DashboardCursorSync.CROSSHAIR)
               .with_variable(_datasource_variable()))
    for variable in dashboard.variables:
        builder = builder.with_variable(_variable(variable))
    for row in dashboard.rows:
        builder = builder.with_row(gd.Row(row.title))
        for panel in row.panels:
            builder = builder.with_panel(_panel(panel, profile))
    return builder.build()


def _refresh(profile: Profile) -> str:
    return "5s" if profile.scrape_seconds < 5 else "30s"


def render_dashboard(profile: Profile, dashboard: Dashboard = DASHBOARD) -> str:
    """The dashboard as Grafana JSON; ``profile`` sets its refresh."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard(profile, dashboard)) + "\n"


def render_provisioning(profile: Profile, dashboards_dir: Path, prometheus_url: str,
                        default: bool = True) -> dict[str, dict[str, Any]]:
    """Grafana's datasource and dashboard-provider provisioning, keyed by kind.

    ``default`` marks the datasource as the organisation's default: harmless where it is
    Grafana's only one (the local stack, Compose), refused next to another default.
    """
    datasource = {
        "name": DATASOURCE_NAME, "type": "prometheus", "uid": DATASOURCE_UID,
        "access": "proxy", "url": prometheus_url, "editable": False,
        # The scrape interval: Grafana's $__rate_interval and $__interval are built on it.
        "jsonData": {"timeInterval": profile.scrape_interval, "httpMethod": "POST"},
    }
    if default:
        datasource["isDefault"] = True
    return {
        "datasources": {"apiVersion": 1, "datasources": [datasource]},
        "dashboards": {"apiVersion": 1, "providers": [{
            "name": "inferwatch", "folder": "inferwatch", "type": "file",
            "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 30,
            "options": {"path": str(dashboards_dir)},
        }]},
    }


def write_grafana_files(out_dir: Path, profile: Profile,
                        prometheus_url: str | None = None) -> dict[str, Path]:
    """Write the dashboard JSON and Grafana provisioning under ``out_dir``.

    Point Grafana's ``paths.provisioning`` (``GF_PATHS_PROVISIONING``) at
    ``out_dir/provisioning``; the dashboard provider reads ``out_dir/dashboards``.
    """
    out_dir = out_dir.resolve()
    dashboards = out_dir / "dashboards"
    dashboards.mkdir(parents=True, exist_ok=True)
    json_path = dashboards / f"{DASHBOARD.uid}.json"
    json_path.write_text(render_dashboard(profile))
    provisioning = render_provisioning(
        profile, dashboards, prometheus_url or url(StackPorts().prometheus))
    paths = {"grafana_dashboard": json_path}
    for kind, data in provisioning.items():
        paths[f"grafana_{kind}"] = write_yaml(
            out_dir / "provisioning" / kind / "inferwatch.yml", data)
    return paths


def decode_dashboard(text: str) -> model.Dashboard:
    """Parse dashboard JSON with the SDK's models, as a check that Grafana's schema holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        register_default_plugins()
    return model.Dashboard.from_json(json.loads(text))
