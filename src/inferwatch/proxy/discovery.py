"""The upstream's model set, asked once at start: the proxy's bound on ``model`` labels."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


class DiscoveryError(RuntimeError):
    pass


def _inferwatch_or_torchserve(data: Any) -> dict[str, str]:
    # inferwatch serve: GET /models; TorchServe answers the same shape on its management port.
    return {str(m["modelName"]): str(m.get("modelVersion") or "")
            for m in data["models"]}


def _oip_v2(data: Any) -> dict[str, str]:
    # Open Inference Protocol repository extension (MLServer, Triton).
    return {str(m["name"]): str(m.get("version") or "") for m in data}


def _openai(data: Any) -> dict[str, str]:
    return {str(m["id"]): "" for m in data["data"]}


_PROBES: tuple[tuple[str, str, Callable[[Any], dict[str, str]]], ...] = (
    ("GET", "/models", _inferwatch_or_torchserve),
    ("POST", "/v2/repository/index", _oip_v2),
    ("GET", "/v1/models", _openai),
)


def discover_models(upstream: str, timeout: float = 5.0, wait: float = 0.0) -> dict[str, str]:
    """``{model: version}`` listed by the upstream.

    Tries ``GET /models`` (inferwatch serve, TorchServe management API),
    ``POST /v2/repository/index`` (Open Inference Protocol v2: MLServer, Triton) and
    ``GET /v1/models`` (OpenAI-style: vLLM), and returns the first non-empty answer. While the
    upstream cannot be reached at all, tries again every second for up to ``wait`` seconds
    (a proxy started beside its server, as in Compose, waits for it).
    """
    base = upstream.rstrip("/")
    deadline = time.monotonic() + wait
    with httpx.Client(timeout=timeout) as client:
        while True:
            tried, reached = [], False
            for method, path, parse in _PROBES:
                try:
                    response = client.request(method, base + path,
                                              json={} if method == "POST" else None)
                    reached = True
                    response.raise_for_status()
                    models = parse(response.json())
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    tried.append(f"{method} {path}: {type(exc).__name__}")
                    continue
                if models:
                    return models
                tried.append(f"{method} {path}: no models")
            if reached or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
    raise DiscoveryError(f"could not list the models of {upstream} ({'; '.join(tried)}); "
                         "name them with --model")
