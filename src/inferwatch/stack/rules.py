"""Alert and recording rules, defined once and rendered to Prometheus rule files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inferwatch.stack.profiles import Profile


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def render(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def alert_rules(profile: Profile) -> list[AlertRule]:
    w = profile.rate_window
    return [
        # The seed's rule, kept as written; its window and `for` follow the profile.
        AlertRule(
            name="HighInferenceErrorRate",
            expr=f"rate(inference_errors_total[{w}]) / rate(inference_requests_total[{w}])"
                 " > 0.05",
            for_=profile.error_alert_for,
            severity="critical",
            summary="High inference error rate on {{ $labels.instance }}",
            description="The inference error ratio of model {{ $labels.model }} on "
                        "{{ $labels.instance }} over the last " + w + " is "
                        "{{ $value | humanizePercentage }}, above the 5% threshold.",
        ),
    ]


def render_rule_file(profile: Profile) -> dict[str, Any]:
    return {"groups": [{
        "name": "inferwatch-alerts",
        "rules": [rule.render() for rule in alert_rules(profile)],
    }]}
