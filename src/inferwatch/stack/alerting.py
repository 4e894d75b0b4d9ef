"""Alertmanager configuration: routing by severity, inhibition, and receivers.

Credentials never enter the generated file as values: the SMTP password and the Slack webhook
URL are files (mode 0600) that Alertmanager reads itself; their paths come from the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inferwatch.secrets import SecretFileError, check_secret_file
from inferwatch.stack.profiles import Profile

# Receiver names: the routing tree sends each severity to one of these.
PAGE, TICKET, DEFAULT = "page", "ticket", "default"
SEVERITY_RECEIVERS = {"critical": PAGE, "warning": TICKET}


class AlertingConfigError(ValueError):
    pass


def _private(path: str, what: str) -> None:
    try:
        check_secret_file(path, what)
    except SecretFileError as exc:
        raise AlertingConfigError(str(exc)) from None


@dataclass(frozen=True)
class EmailSettings:
    to: str
    sender: str
    smarthost: str  # host:port
    username: str | None = None
    password_file: str | None = None
    require_tls: bool = True


@dataclass(frozen=True)
class SlackSettings:
    """A Slack-style incoming webhook; the URL is a secret, so it is read from a file."""

    api_url_file: str
    channel: str | None = None


@dataclass(frozen=True)
class Receivers:
    webhook_urls: tuple[str, ...] = ()
    email: EmailSettings | None = None
    slack: SlackSettings | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def receivers_from_env(env: Mapping[str, str] | None = None,
                       webhook_urls: tuple[str, ...] = ()) -> Receivers:
    """Email and Slack settings from ``INFERWATCH_*`` variables; absent ones stay off.

    Email: INFERWATCH_SMTP_SMARTHOST, INFERWATCH_SMTP_FROM, INFERWATCH_EMAIL_TO,
    INFERWATCH_SMTP_USERNAME, INFERWATCH_SMTP_PASSWORD_FILE, INFERWATCH_SMTP_REQUIRE_TLS.
    Slack: INFERWATCH_SLACK_WEBHOOK_URL_FILE, INFERWATCH_SLACK_CHANNEL.
    """
    env = os.environ if env is None else env
    email = None
    if env.get("INFERWATCH_SMTP_SMARTHOST"):
        missing = [k for k in ("INFERWATCH_SMTP_FROM", "INFERWATCH_EMAIL_TO") if not env.get(k)]
        if missing:
            raise AlertingConfigError(f"email receiver needs {', '.join(missing)}")
        password_file = env.get("INFERWATCH_SMTP_PASSWORD_FILE") or None
        if password_file:
            _private(password_file, "INFERWATCH_SMTP_PASSWORD_FILE")
        email = EmailSettings(
            to=env["INFERWATCH_EMAIL_TO"], sender=env["INFERWATCH_SMTP_FROM"],
            smarthost=env["INFERWATCH_SMTP_SMARTHOST"],
            username=env.get("INFERWATCH_SMTP_USERNAME") or None, password_file=password_file,
            require_tls=env.get("INFERWATCH_SMTP_REQUIRE_TLS", "true").lower() != "false",
        )
    slack = None
    if env.get("INFERWATCH_SLACK_WEBHOOK_URL_FILE"):
        _private(env["INFERWATCH_SLACK_WEBHOOK_URL_FILE"], "INFERWATCH_SLACK_WEBHOOK_URL_FILE")
        slack = SlackSettings(env["INFERWATCH_SLACK_WEBHOOK_URL_FILE"],
                              env.get("INFERWATCH_SLACK_CHANNEL") or None)
    return Receivers(webhook_urls, email, slack)


def _email(settings: EmailSettings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "to": settings.to, "from": settings.sender, "smarthost": settings.smarthost,
        "require_tls": settings.require_tls, "send_resolved": True,
        "headers": {"Subject": '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} '
                               '{{ .CommonLabels.model }}: {{ .CommonAnnotations.summary }}'},
    }
    if settings.username:
        out["auth_username"] = settings.username
    if settings.password_file:
        out["auth_password_file"] = settings.password_file
    return out


def _slack(settings: SlackSettings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "api_url_file": settings.api_url_file, "send_resolved": True,
        "title": '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }}',
        "text": '{{ range .Alerts }}{{ .Annotations.summary }}: {{ .Annotations.description }}'
                '\n{{ end }}',
    }
    if settings.channel:
        out["channel"] = settings.channel
    return out


def render_alertmanager_config(profile: Profile, receivers: Receivers) -> dict[str, Any]:
    webhooks = [{"url": u, "send_resolved": True} for u in receivers.webhook_urls]

    def receiver(name: str, email: bool, slack: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name}
        if webhooks:
            out["webhook_configs"] = webhooks
        if email and receivers.email:
            out["email_configs"] = [_email(receivers.email)]
        if slack and receivers.slack:
            out["slack_configs"] = [_slack(receivers.slack)]
        return out

    return {
        "route": {
            "receiver": DEFAULT,
            "group_by": ["alertname", "model"],
            "group_wait": profile.group_wait,
            "group_interval": profile.group_interval,
            "repeat_interval": profile.repeat_interval,
            "routes": [{"receiver": name, "matchers": [f'severity="{severity}"']}
                       for severity, name in SEVERITY_RECEIVERS.items()],
        },
        "inhibit_rules": [
            # A critical alert of a model silences that model's warnings.
            {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
             "equal": ["model"]},
            # A target that cannot be scraped explains every symptom of that instance.
            {"source_matchers": ['alertname="TargetDown"'],
             "target_matchers": ['alertname!="TargetDown"'], "equal": ["instance"]},
        ],
        "receivers": [
            receiver(DEFAULT, email=False, slack=False),
            receiver(PAGE, email=True, slack=True),
            receiver(TICKET, email=False, slack=True),
        ],
    }
