import asyncio
import gc
import os
import sys

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferwatch.metrics import (
    FeatureReference,
    FeedbackStore,
    QualityMetrics,
    QualityMonitor,
    QualityReference,
    QualityWorker,
    feedback,
)
from inferwatch.metrics.feedback import RequestIds, answer_key
from inferwatch.metrics.quality import psi


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


def test_feedback_store_holds_nothing_the_garbage_collector_walks() -> None:
    """100,000 answers in a tracked container made every full collection visit each one
    (bench/overhead.py)."""
    store = FeedbackStore(capacity=1000)
    gc.collect()
    tracked = len(gc.get_objects())
    for i in range(2500):
        store.remember(f"id-{i}", "m", np.array([3, 1, 4, 1, 5, 9]))
    for i in range(2500, 5000, 10):
        store.defer("m", [f"id-{j}" for j in range(i, i + 10)],
                    np.tile([0.0, 0.1, 0.0, 0.3, 0.2, 0.4], (10, 1)))
    store.settle()
    gc.collect()
    assert len(gc.get_objects()) - tracked < 50  # not one per answer
    answer = store.lookup("id-4999")
    assert not isinstance(answer, str) and answer.top == (5, 3, 4, 1, 2)  # top_k=5 kept
    assert store.lookup("id-3999") == "unknown_request_id"  # overwritten by the ring


def test_feedback_store_replaces_an_answer_given_again_under_the_same_id() -> None:
    store = FeedbackStore(capacity=3)
    store.remember("a", "m", [1])
    store.mark("a")
    store.remember("a", "n", [2])  # a new answer: scorable again
    answer = store.lookup("a")
    assert not isinstance(answer, str) and (answer.model, answer.top) == ("n", (2,))
    store.remember("b", "m", [3])
    store.remember("c", "m", [4])  # overwrites the slot of the first "a", not the second
    assert store.lookup("a") != "unknown_request_id"
    store.remember("d", "m", [5])
    assert store.lookup("a") == "unknown_request_id"


def test_deferred_answers_are_sorted_at_settle_and_found_before_it() -> None:
    store = FeedbackStore(capacity=10)
    store.defer("m", ["a", None, "c"], np.array([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4],
                                                  [0.7, 0.1, 0.2]]))
    store.defer("wide", ["b"], np.array([0.05, 0.05, 0.1, 0.2, 0.25, 0.35]))
    answer = store.lookup("a")  # a lookup settles what was deferred
    assert not isinstance(answer, str) and (answer.model, answer.top) == ("m", (1, 2, 0))
    third = store.lookup("c")
    assert not isinstance(third, str) and third.top == (0, 2, 1)
    wide = store.lookup("b")
    assert not isinstance(wide, str) and (wide.model, wide.top) == ("wide", (5, 4, 3, 2, 1))
    assert store._next == 3  # the row without an id is not kept
    store.remember("a", "m", [0])  # remembered later: replaces the deferred answer
    again = store.lookup("a")
    assert not isinstance(again, str) and again.top == (0,)
    store.mark("c")
    store.defer("m", ["d"], np.array([[0.2, 0.3, 0.5]]))
    assert store.lookup("c") == "duplicate_feedback"
    assert store._deferred == {}  # settled by the lookup


def test_deferring_past_capacity_settles_at_once() -> None:
    store = FeedbackStore(capacity=3)
    for i in range(7):
        store.defer("m", [f"id-{i}"], np.array([[0.5, 0.5]]))
        assert store._deferred_rows < 3
    assert store.lookup("id-6") != "unknown_request_id"
    assert store.lookup("id-3") == "unknown_request_id"  # the ring holds the last 3


def test_settling_a_batch_larger_than_the_ring_wraps_and_keeps_the_newest() -> None:
    store = FeedbackStore(capacity=4)
    store.defer("m", ["x", "y"], np.array([[0.9, 0.1], [0.9, 0.1]]))
    store.settle()
    ids = [f"id-{i}" for i in range(6)]
    store.defer("m", ids, np.array([[0.2, 0.8]] * 6))  # wraps past the ring's end
    store.settle()
    assert [store.lookup(i) for i in ("x", "y", "id-0", "id-1")] == ["unknown_request_id"] * 4
    for i in ids[2:]:
        answer = store.lookup(i)
        assert not isinstance(answer, str) and answer.top == (1, 0)
    store.defer("m", ["id-5", "z"], np.array([[0.6, 0.4], [0.6, 0.4]]))  # id-5 again
    store.settle()
    five = store.lookup("id-5")
    assert not isinstance(five, str) and five.top == (0, 1)
    assert store.lookup("id-2") == "unknown_request_id"
    assert all(store.lookup(i) != "unknown_request_id" for i in ("id-4", "z"))


def test_feedback_store_finds_the_newest_answer_of_an_id_used_again_and_again() -> None:
    store = FeedbackStore(capacity=1000)
    for i in range(600):  # a client that sends one X-Request-ID with every request
        store.defer("m", ["same"], np.array([[1.0 - i / 600, i / 600]]))
    answer = store.lookup("same")
    assert not isinstance(answer, str) and answer.top == (1, 0)  # the last one, not the first
    assert store.lookup("") == "unknown_request_id"  # hash("") is 0, as in an empty slot


def test_feedback_store_keeps_no_id_string_and_never_answers_from_an_empty_slot() -> None:
    store = FeedbackStore(capacity=4)
    long_id = "x" * 1000
    ids = [long_id, "caf\u00e9"]
    held = sys.getrefcount(ids), sys.getrefcount(long_id)
    store.defer("m", ids, np.array([[0.3, 0.7], [0.8, 0.2]]))
    assert (sys.getrefcount(ids), sys.getrefcount(long_id)) == held  # hashed, not held
    store.remember("c", "m", [2])
    answer = store.lookup(long_id)
    assert not isinstance(answer, str) and answer.top == (1, 0)
    assert store.lookup("caf\u00e9") != "unknown_request_id"
    store._key[:] = hash("a")  # every slot, c's and the empty one, claims a's key
    found = store.lookup("a")
    assert not isinstance(found, str) and found.top == (2,)  # the newest filled slot
    assert store.lookup("") == "unknown_request_id"


def test_request_ids_are_random_and_come_with_their_keys() -> None:
    ids = RequestIds()
    drawn = [ids.new() for _ in range(4097)]  # past the first block of 4,096
    assert len({i for i, _ in drawn}) == 4097
    assert all(len(i) == 16 and answer_key(i) == key for i, key in drawn)
    assert any(key < 0 for _, key in drawn) and any(key > 0 for _, key in drawn)
    store = FeedbackStore(capacity=8)
    store.defer("m", [key for _, key in drawn[:2]] + ["given", None],
                np.array([[0.1, 0.9]] * 4))
    assert all(store.lookup(i) != "unknown_request_id" for i in (drawn[0][0], "given"))
    assert store.lookup(drawn[2][0]) == "unknown_request_id"
    assert store._next == 3  # the row without an id is not kept
    assert answer_key("req-1") == hash("req-1") and answer_key("0" * 16) == 0
    assert answer_key("f" * 16) == -1 and answer_key("F" * 16) == hash("F" * 16)
    # An id whose key is that of an empty slot finds none.
    assert store.lookup(f"{feedback._NO_ID & (2**64 - 1):016x}") == "unknown_request_id"


def test_request_ids_drawn_after_a_fork_are_the_childs_own() -> None:
    ids = RequestIds()
    ids.new()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, ids.new()[0].encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != ids.new()[0]


def test_a_defer_that_fails_adds_nothing_and_the_worker_goes_on() -> None:
    store = FeedbackStore(capacity=4)
    for bad in ([2**63], [1.5]):  # beyond int64; not an id
        with pytest.raises((OverflowError, TypeError)):
            store.defer("m", bad, np.array([[0.5, 0.5]]))
    assert store._deferred == {} and store._deferred_rows == 0
    store.defer("m", ["a"], np.array([[0.5, 0.5]]))
    store.settle()
    assert store.lookup("a") != "unknown_request_id"

    flushed = []

    def failing() -> None:
        flushed.append(1)
        raise RuntimeError("a broken job")

    async def run() -> None:
        worker = QualityWorker([], interval=0.01)
        worker.jobs = [failing]
        worker.start()
        await asyncio.sleep(0.1)
        await worker.stop()  # its last flush too: logged, not raised

    asyncio.run(run())
    assert len(flushed) > 2  # kept flushing after the first failure


def test_digit_features_are_the_per_image_statistics_they_name() -> None:
    from inferwatch.models.digits import digit_features, heldout_digits

    digits = heldout_digits().images.astype(np.float32)  # 0..16
    png = (np.rint(digits * (255 / 16)) * (16 / 255)).astype(np.float32)  # as PNGs arrive
    for images in (digits, png):
        x = images.reshape(len(images), 8, 8).astype(np.float64) / 16.0
        features = digit_features(images)
        # Bit for bit what the scaled image gives in float64 (the features are summed in
        # float64); the training reference goes through the same function.
        np.testing.assert_array_equal(features["mean_intensity"], x.mean(axis=(1, 2)))
        np.testing.assert_array_equal(features["ink_fraction"],
                                      (x > 7.5 / 16).mean(axis=(1, 2)))
        np.testing.assert_array_equal(features["top_half_ink"],
                                      x[:, :4].sum(axis=(1, 2)) / x.sum(axis=(1, 2)))
    blank = digit_features(np.zeros((1, 64), np.float32))
    assert blank["top_half_ink"][0] == 0 and blank["mean_intensity"][0] == 0
