"""Dashboard panels: the only place a dashboard query is written.

The first panels are the seed tutorial's five, with its average-latency formula corrected
(``avg(sum / count)`` averages per-series lifetime means; the mean over a window is
``rate(sum) / rate(count)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from inferwatch.stack.profiles import DEFAULT, Profile


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    expr: str  # PromQL with $window for the rate range, $model for the model selector
    unit: str
    row: str = "business"

    def query(self, profile: Profile = DEFAULT, model: str = ".+") -> str:
        return self.expr.replace("$window", profile.rate_window).replace("$model", model)


_M = 'model=~"$model"'

SEED_PANELS = (
    Panel("qps", "Requests per second (QPS)",
          f"sum by (model) (rate(inference_requests_total{{{_M}}}[$window]))", "reqps"),
    Panel("latency_avg", "Average latency",
          f"sum by (model) (rate(inference_latency_seconds_sum{{{_M}}}[$window]))"
          f" / sum by (model) (rate(inference_latency_seconds_count{{{_M}}}[$window]))", "s"),
    Panel("latency_p95", "p95 latency",
          f"histogram_quantile(0.95, sum by (model, le) "
          f"(rate(inference_latency_seconds_bucket{{{_M}}}[$window])))", "s"),
    Panel("error_ratio", "Error ratio",
          f"sum by (model) (rate(inference_errors_total{{{_M}}}[$window]))"
          f" / sum by (model) (rate(inference_requests_total{{{_M}}}[$window]))",
          "percentunit"),
    Panel("cpu", "Host CPU utilisation",
          '100 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[$window])) * 100',
          "percent", row="system"),
)
