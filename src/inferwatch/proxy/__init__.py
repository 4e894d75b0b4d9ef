"""An instrumented reverse proxy for any HTTP inference server.

>>> from prometheus_client import CollectorRegistry
>>> from inferwatch.proxy import ProxyConfig, ProxyServer
>>> proxy = ProxyServer(ProxyConfig("http://127.0.0.1:8080", models=["resnet18"]),
...                     CollectorRegistry())

It forwards TorchServe ``/predictions/{model}``, Open Inference Protocol v2
``/v2/models/{model}/infer``, OpenAI-style ``POST /v1/...`` and the seed tutorial's
``POST /infer``, and exports the same metrics as ``inferwatch serve``.
"""

from inferwatch.extras import require

require("proxy", "uvicorn", "httptools", "httpx")

from inferwatch.proxy.discovery import DiscoveryError, discover_models
from inferwatch.proxy.routes import Route, classify
from inferwatch.proxy.server import ProxyConfig, ProxyServer

__all__ = [
    "DiscoveryError",
    "ProxyConfig",
    "ProxyServer",
    "Route",
    "classify",
    "discover_models",
]
