"""Timing profiles: the seed's 10 s cadence, and a fast one for demos and tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    scrape_interval: str
    evaluation_interval: str
    rate_window: str  # range of rate() in rules and panels; >= 4 scrape intervals
    error_alert_for: str  # the seed's rule, target down, saturation
    slow_alert_for: str  # latency, no traffic, host resources
    group_wait: str
    group_interval: str
    repeat_interval: str
    resend_delay: str  # Prometheus --rules.alert.resend-delay
    batch_stale_after: str  # a batch job that has not pushed for this long is stale
    remote_write_deadline: str  # longest wait before a partial remote_write batch is sent
    # With --ha: how long each Alertmanager waits, per position in the cluster, for a peer
    # to send a notification before it sends it itself (--cluster.peer-timeout).
    peer_timeout: str = "15s"

    @property
    def scrape_seconds(self) -> float:
        return parse_duration(self.scrape_interval)


DEFAULT = Profile(
    name="default", scrape_interval="10s", evaluation_interval="10s", rate_window="5m",
    error_alert_for="1m", slow_alert_for="5m", group_wait="30s", group_interval="5m",
    repeat_interval="12h", resend_delay="1m", batch_stale_after="25h",  # a daily job, 1h late
    remote_write_deadline="5s",
)
FAST = Profile(
    name="fast", scrape_interval="1s", evaluation_interval="1s", rate_window="15s",
    error_alert_for="5s", slow_alert_for="10s", group_wait="1s", group_interval="5s",
    repeat_interval="1h", resend_delay="1s", batch_stale_after="10s",
    remote_write_deadline="1s", peer_timeout="2s",
)
PROFILES = {p.name: p for p in (DEFAULT, FAST)}


def parse_duration(text: str) -> float:
    """Seconds in a simple Prometheus duration such as ``15s``, ``5m`` or ``12h``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    for suffix in ("ms", "s", "m", "h", "d", "w"):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return int(text[: -len(suffix)]) * units[suffix]
    raise ValueError(f"not a simple duration: {text!r}")


class ProfileError(ValueError):
    pass


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}"
                           ) from None
