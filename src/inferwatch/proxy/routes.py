"""Which requests the proxy forwards, and under which model it counts them.

Only these paths ever reach the upstream; everything else is answered 404 by the proxy, so
it cannot be used to reach other paths of the upstream or other hosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

RouteKind = Literal[
    "seed",         # POST /infer {"image_base64"}: decoded, sent to /predictions/{default}
    "inference",    # counted pass-through; model from the path
    "openai",       # counted pass-through; model from the JSON body's "model"
    "passthrough",  # health, metadata and explanations, forwarded uncounted
    "metrics",      # the proxy's own /metrics
    "not_found",
    "method_not_allowed",
    "bad_request",
    "too_large",    # body over the limit: answered 413, never read
]


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    model: str | None = None
    counted: bool = False
    """Whether the request is counted in the inference metrics (under ``model``)."""


NOT_FOUND = Route("not_found")
BAD_REQUEST = Route("bad_request")
METRICS = Route("metrics")
PASSTHROUGH = Route("passthrough")


def _segments(path: str) -> list[str] | None:
    """Decoded path segments, or None for a path that could escape its route."""
    if not path.startswith("/") or "\\" in path:
        return None
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    raw = path[1:].split("/")
    parts = [unquote(s) for s in raw] if "%" in path else raw
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part:
            return None
    return parts


def _get_route(parts: list[str]) -> bool:
    """Health and metadata paths of TorchServe, OIP v2 and OpenAI-style servers."""
    n = len(parts)
    head = parts[0]
    if n == 1:
        return head in ("ping", "models", "v2")
    if head == "v2":
        if parts[1] == "health":
            return n == 3 and parts[2] in ("live", "ready")
        if parts[1] != "models" or n < 3:
            return False
        rest = parts[3:]
        if rest[:1] == ["versions"]:
            rest = rest[2:] if n >= 5 else ["versions"]
        return rest in ([], ["ready"])
    return head == "v1" and parts[1] == "models"  # OpenAI model ids may hold a "/"


def _inference_model(parts: list[str]) -> str | None:
    n = len(parts)
    if parts[0] == "v2" and n >= 4 and parts[1] == "models" and parts[-1] == "infer" and (
            n == 4 or (n == 6 and parts[3] == "versions")):
        return parts[2]
    return None


def classify(method: str, path: str, default_model: str | None) -> Route:
    """The route of a request, from its method and (percent-encoded) path.

    >>> classify("POST", "/predictions/resnet18", "resnet18")
    Route(kind='inference', model='resnet18', counted=True)
    >>> classify("POST", "/infer", "resnet18")
    Route(kind='seed', model='resnet18', counted=True)
    >>> classify("GET", "/v2/health/ready", None).kind
    'passthrough'
    >>> classify("POST", "/predictions/..%2F..%2Fadmin", None).kind
    'not_found'
    """
    if path == "/metrics":
        return METRICS if method == "GET" else Route("method_not_allowed")
    parts = _segments(path)
    if parts is None:
        return NOT_FOUND
    post = method == "POST"
    if parts == ["infer"]:
        return Route("seed" if post else "method_not_allowed", default_model, True)
    if parts[0] in ("predictions", "explanations") and len(parts) in (2, 3):
        # TorchServe takes PUT as POST: its README sends images with `curl -T`, a PUT.
        sends = post or method == "PUT"
        if parts[0] == "explanations":
            # Not counted: an explanation costs many model calls, and its latency in the
            # histogram would move the inference latency SLO.
            return PASSTHROUGH if sends else Route("method_not_allowed")
        return Route("inference" if sends else "method_not_allowed", parts[1], True)
    model = _inference_model(parts)
    if model is not None:
        return Route("inference" if post else "method_not_allowed", model, True)
    if parts[0] == "v1" and len(parts) >= 2 and post and parts[1] != "models":
        return Route("openai", None, True)
    if _get_route(parts):
        return PASSTHROUGH if method == "GET" else Route("method_not_allowed")
    return NOT_FOUND


def split_target(target: bytes) -> tuple[str, bytes] | None:
    """``(path, query)`` of a request target; absolute-form targets keep only their path.

    The host of an absolute-form target is ignored: the upstream is fixed by configuration.

    >>> split_target(b"/v2/models/m/infer?x=1")
    ('/v2/models/m/infer', b'?x=1')
    >>> split_target(b"http://elsewhere.example/ping")
    ('/ping', b'')
    >>> split_target(b"*") is None
    True
    """
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    path, sep, query = target.partition(b"?")
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text, (b"?" + query if sep else b"")
