"""The public API of ``inferwatch.metrics`` is its ``__all__``, pinned here (as httpx pins its
own): a name added to or dropped from the package is a decision, made in this list."""

from types import ModuleType

import inferwatch.metrics
from inferwatch.metrics import __all__ as exported_members

PUBLIC_API = [
    "DEFAULT_BATCH_SIZE_BUCKETS",
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_STAGE_BUCKETS",
    "ERROR_REASONS",
    "REASON_STATE_KEY",
    "STAGES",
    "UNKNOWN_MODEL",
    "BatchJobMetrics",
    "FeatureReference",
    "FeedbackStore",
    "GPUCollector",
    "InferenceMetrics",
    "MetricsMiddleware",
    "QualityMetrics",
    "QualityMonitor",
    "QualityReference",
    "QualityWorker",
    "log_buckets",
    "model_from_path",
]


def test_all_is_the_pinned_public_api() -> None:
    assert exported_members == PUBLIC_API


def test_every_exported_name_is_importable() -> None:
    for name in exported_members:
        assert getattr(inferwatch.metrics, name) is not None, name


def test_every_public_name_of_the_package_is_exported() -> None:
    # Its modules are where serve and the proxy take lower-level pieces from; a user
    # imports from the package.
    public = {name for name, member in vars(inferwatch.metrics).items()
              if not name.startswith("_") and not isinstance(member, ModuleType)}
    assert public == set(exported_members)


def test_every_exported_name_says_what_it_is_for() -> None:
    doc = inferwatch.metrics.__doc__ or ""
    assert [name for name in exported_members
            if name not in doc and not name.startswith("DEFAULT_")] == []
