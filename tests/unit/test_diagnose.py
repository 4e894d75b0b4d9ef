from typing import Any

import numpy as np

from inferwatch.operate.diagnose import Diagnoser, as_json, change_point, onset

START, END, FAULT_AT = 1000.0, 1060.0, 1030.0


def test_change_point_splits_a_step_where_it_steps() -> None:
    values = np.array([1.0] * 10 + [5.0] * 8)
    assert change_point(values) == 10
    assert change_point(np.array([1.0, 2.0])) is None


def test_onset_dates_a_ramp_from_where_it_left_the_baseline() -> None:
    ramp = np.array([0.0] * 10 + [0.2, 0.4, 0.6, 0.8] + [1.0] * 6)
    split = change_point(ramp)
    assert split is not None and split > 10
    assert onset(ramp, split, 0.1) == 10


class FakePrometheus:
    """Answers range queries from functions of time, matched by a substring of the query."""

    def __init__(self, series: list[tuple[str, dict[str, str], Any]]) -> None:
        self.series = series
        self.rng = np.random.default_rng(0)

    def targets(self) -> list[dict[str, Any]]:
        return [{"scrapeInterval": "1s"}]

    def query_range(self, expr: str, start: float, end: float, step: float) -> Any:
        for needle, _, _ in self.series:
            if needle in expr:
                break
        else:
            return {"result": []}
        times = np.arange(start, end + step / 2, step)
        return {"result": [
            {"metric": labels, "values": [
                [t, str(f(t) * (1 + 0.02 * self.rng.standard_normal()))] for t in times]}
            for n, labels, f in self.series if n == needle]}


def step(before: float, after: float) -> Any:
    return lambda t: before if t < FAULT_AT else after


def service(compute_after: float, **extra: Any) -> list[tuple[str, dict[str, str], Any]]:
    cpu = extra.get("cpu", step(0.2, 0.2))
    return [
        ("reason!=", {}, lambda t: 0.0),
        ("reason=\"overloaded\"", {}, lambda t: 0.0),
        ("inference_latency_seconds_sum", {}, step(0.002, 0.001 + compute_after)),
        ("inference_errors_total", {}, lambda t: 0.0),
        ("inference_feedback_total", {}, lambda t: 0.97),
        ("node_cpu_seconds_total", {}, cpu),
        ("node_pressure_cpu", {}, extra.get("pressure", step(0.05, 0.05))),
        ("node_memory", {}, lambda t: 0.3),
        ("inference_queue_depth", {}, lambda t: 0.0),
        ("inference_batch_size", {}, lambda t: 2.0),
        ("inference_drift_psi", {}, lambda t: 0.03),
        ("inference_model_info", {"version": "1"}, lambda t: 1.0),
        ("up == 0", {}, lambda t: 0.0),
        ("inference_stage_seconds_sum", {"stage": "compute"}, step(0.001, compute_after)),
        ("inference_stage_seconds_sum", {"stage": "queue"}, lambda t: 0.0005),
        ("inference_requests_total", {}, lambda t: 40.0),
    ]


def diagnose(series: list[tuple[str, dict[str, str], Any]]) -> Any:
    return Diagnoser(FakePrometheus(series), since=END - START, end=END).run()  # type: ignore[arg-type]


def test_a_slow_model_ranks_the_compute_stage_first() -> None:
    result = diagnose(service(0.02))
    assert result.symptom.signal == "latency"
    assert result.causes[0].name == "compute stage"
    assert abs(result.causes[0].lead_s) <= 2
    assert "GPU" in result.skipped


def test_cpu_saturation_explains_away_the_stage_it_slowed() -> None:
    result = diagnose(service(0.004, cpu=step(0.3, 0.99), pressure=step(0.05, 0.8)))
    names = [c.name for c in result.causes]
    assert names[0] == "CPU"
    compute = result.causes[names.index("compute stage")]
    assert compute.score < result.causes[0].score / 2
    document = as_json(result)
    assert document["causes"][0]["evidence"][0]["query"]


def test_cpu_with_room_to_spare_is_not_the_cause() -> None:
    result = diagnose(service(0.02, cpu=step(0.1, 0.6)))
    assert result.causes[0].name == "compute stage"


def test_upstream_errors_rank_first_when_errors_rise() -> None:
    replaced = {"reason!=": ({"reason": "upstream_5xx"}, step(0.0, 20.0)),
                "inference_errors_total": ({}, step(0.0, 0.5))}
    series = [(n, *replaced.get(n, (labels, f))) for n, labels, f in service(0.001)]
    result = diagnose(series)
    assert result.symptom.signal == "errors"
    assert result.causes[0].name == "upstream errors (upstream_5xx)"
    assert result.causes[0].evidence[0].after > 0.4
