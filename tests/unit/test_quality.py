import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferwatch.metrics.quality import (
    FeatureReference,
    FeedbackStore,
    QualityMetrics,
    QualityMonitor,
    QualityReference,
    psi,
)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    ref = FeatureReference.from_samples(rng.normal(0, 1, 5000))
    assert ref.shares.sum() == pytest.approx(1)
    same = psi(ref.shares, ref.shares_of(rng.normal(0, 1, 5000)))
    small = psi(ref.shares, ref.shares_of(rng.normal(0.2, 1, 5000)))
    large = psi(ref.shares, ref.shares_of(rng.normal(1.0, 1, 5000)))
    assert same < 0.02 < small < 0.25 < large
    assert psi(np.array([0.5, 0.5]), np.array([1.0, 0.0])) > 1  # empty bins stay finite


def test_monitor_counts_in_the_background_fold_and_drift_window() -> None:
    registry = CollectorRegistry()
    ref = QualityReference({"x": FeatureReference(np.array([0.5]), np.array([0.5, 0.5]))},
                           np.array([0.5, 0.5]))
    monitor = QualityMonitor(QualityMetrics(registry), "m", "1", ["a", "b"], ref,
                             features=lambda s: {"x": s[:, 0]}, window=4)
    monitor.observe(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.1], [0.9]]))
    labels = {"model": "m", "version": "1"}
    # Nothing is counted on the request path.
    assert registry.get_sample_value("inference_prediction_confidence_count", labels) == 0
    monitor.flush()
    assert registry.get_sample_value("inference_prediction_confidence_count", labels) == 2
    assert registry.get_sample_value("inference_predictions_total", {**labels, "class": "b"}) == 1
    assert registry.get_sample_value("inference_drift_psi", {**labels, "feature": "x"}) == 0
    monitor.observe(np.array([[0.9, 0.1]] * 4), np.array([[0.1]] * 4))  # the window shifts
    monitor.flush()
    assert registry.get_sample_value("inference_drift_psi", {**labels, "feature": "x"}) > 1
    assert registry.get_sample_value("inference_drift_psi",
                                     {**labels, "feature": "prediction"}) > 1
    assert registry.get_sample_value("inference_drift_window_samples", labels) == 4


def test_feedback_store_scores_once_and_forgets_old_answers() -> None:
    store = FeedbackStore(capacity=2, ttl=60)
    store.remember("a", "m", [3, 1])
    answer = store.lookup("a")
    assert not isinstance(answer, str) and list(answer.top) == [3, 1]
    store.mark("a")
    assert store.lookup("a") == "duplicate_feedback"
    store.remember("b", "m", [1])
    store.remember("c", "m", [2])  # over capacity: "a" goes
    assert store.lookup("a") == "unknown_request_id"
    assert store.lookup("nope") == "unknown_request_id"
    expiring = FeedbackStore(ttl=0.0)
    expiring.remember("x", "m", [0])
    assert expiring.lookup("x") == "unknown_request_id"


def test_feedback_entries_are_not_tracked_by_the_garbage_collector() -> None:
    """100,000 tracked answers made every full collection walk them (bench/quality.py)."""
    import gc

    store = FeedbackStore()
    store.remember("a", "m", np.array([3, 1]))
    gc.collect()  # untracks the inner tuple of classes,
    gc.collect()  # then the entry that holds it
    entry = store._answers["a"]
    assert not gc.is_tracked(entry) and not gc.is_tracked(entry[1])
