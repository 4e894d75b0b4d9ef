"""What ``up`` records of a running stack (RUN_DIR/state.json), and what commands given no
--prometheus URL read from it: where its components listen, its store, its Prometheus user."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from inferwatch.stack.addresses import HOST, url
from inferwatch.stack.webconfig import BasicAuth

if TYPE_CHECKING:
    from inferwatch.stack.config import Inference

__all__ = [
    "MonitoredState",
    "ProcessState",
    "SavedAuth",
    "StackState",
    "StackStateError",
    "StoreState",
    "component_url",
    "query_url",
    "read_stack_state",
    "running_stack",
    "saved_prometheus_auth",
]


class StackStateError(ValueError):
    pass


class SavedAuth(TypedDict):
    username: str
    password_file: str


class StoreState(TypedDict):
    kind: str
    retention: str
    url: str


class MonitoredState(TypedDict):
    """A ``MonitoredServer``, as JSON."""

    kind: str
    api: str
    metrics: str | None
    models_at: str
    proxied: bool
    models: list[str]


class ProcessState(TypedDict):
    """A ``RunningProcess``, as JSON."""

    name: str
    pid: int
    argv: list[str]
    log: str
    url: str | None


class StackState(TypedDict, total=False):
    """state.json, as ``Stack`` writes it; empty when no stack runs there."""

    profile: str
    ports: dict[str, int]  # component -> port
    replicas: int
    bind: str
    host: str  # where a client on this machine reaches the components
    inference: Inference  # the component scraped as the inference job; None: monitored only
    monitored: list[MonitoredState]
    prometheus_auth: SavedAuth | None
    store: StoreState | None
    ha: bool
    processes: list[ProcessState]


def read_stack_state(run_dir: Path) -> StackState:
    path = run_dir / "state.json"
    if not path.exists():
        return {}
    state: StackState = json.loads(path.read_text())
    return state


def running_stack(run_dir: Path) -> StackState:
    """The state of the stack in ``run_dir``, for commands given no --prometheus URL."""
    state = read_stack_state(run_dir)
    if not state.get("ports"):
        raise StackStateError(f"no stack in {run_dir}: pass --prometheus URL")
    return state


def component_url(state: StackState, component: str) -> str:
    return url(state["ports"][component], state.get("host", HOST))


def query_url(state: StackState, store: bool) -> str:
    """The stack's Prometheus, or with ``store`` its remote_write store."""
    if not store:
        return component_url(state, "prometheus")
    saved = state.get("store")
    if not saved:
        raise StackStateError("this stack has no store: start it with --replicas above 1")
    return saved["url"]


def saved_prometheus_auth(state: StackState) -> BasicAuth | None:
    """The Prometheus user of a stack started with ``up --prometheus-auth``."""
    saved = state.get("prometheus_auth")
    if not saved:
        return None
    return BasicAuth(saved["username"], Path(saved["password_file"]))
