"""inferwatch: monitor real-time AI inference services with Prometheus and Alertmanager."""

__version__ = "0.1.0"

__all__ = ["__version__"]
