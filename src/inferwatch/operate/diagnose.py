"""``inferwatch diagnose``: name the likely cause of the current symptom, with evidence.

Every series is read with ``query_range`` over the look-back window. The symptom (latency up,
errors up, accuracy down) and every candidate signal get a change point: the split of the
series into two flat segments with the least squared error. A signal's shift is the change of
its mean across that split over the spread of its before-segment; its lead is its change time
minus the symptom's. Causes are ranked by a score in [0, 1]; docs/diagnose.md explains it.

>>> diagnosis = Diagnoser(PrometheusAPI("http://127.0.0.1:9090"), since=900).run()  # doctest: +SKIP
>>> diagnosis.causes[0].name  # doctest: +SKIP
'CPU'
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from inferwatch.metrics import STAGES
from inferwatch.metrics.names import (
    BATCH_SIZE,
    DRIFT_PSI,
    LATENCY_SECONDS,
    MODEL_INFO,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    SHED_REASON,
    STAGE_SECONDS,
)
from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack import queries
from inferwatch.stack.profiles import parse_duration

__all__ = ["Cause", "Diagnoser", "Diagnosis", "Evidence", "as_json", "change_point", "onset",
           "render"]

SQUASH_Z = 3.0  # a shift of 3 before-segment deviations is evidence 0.5
SYMPTOM_Z = 2.0  # with a change that matters in practice, this shift makes a symptom
POINTS = 150  # aim for this many points over the window
MIN_SEGMENT = 3
# A shift is measured against the before-segment's spread, but never against less than
# this share of its level: a flat series would make any wobble look like a large shift.
RELATIVE_FLOOR = 0.1


@dataclass(frozen=True)
class Evidence:
    """One signal's numbers: means before and after its change point, in its own units."""

    signal: str
    query: str
    before: float
    after: float
    z: float  # (after - before) / spread of before, in the bad direction
    changed_at: float | None  # unix time
    lead_s: float | None  # changed_at minus the symptom's change time; negative = led
    correlation: float | None  # Pearson r with the symptom, both oriented bad-up


@dataclass
class Cause:
    name: str
    kind: str  # "root" or "stage"
    score: float
    evidence: list[Evidence]
    detail: str = ""

    @property
    def lead_s(self) -> float | None:
        return self.evidence[0].lead_s if self.evidence else None


@dataclass
class Diagnosis:
    symptom: Evidence | None
    causes: list[Cause]
    start: float
    end: float
    step: float
    rate_window: str
    model: str | None = None
    skipped: list[str] = field(default_factory=list)  # candidates without data
    symptoms: list[Evidence] = field(default_factory=list)  # every symptom measured


@dataclass(frozen=True)
class _Spec:
    """A candidate signal: its query, its smallest meaningful change, and for a resource the
    levels between which it goes from idle to saturated (a resource with room to spare
    cannot slow anything down, whatever its change)."""

    name: str
    query: str
    floor: float
    saturation: tuple[float, float] | None = None
    scored: bool = True  # False: shown as context, never the cause's score

    def headroom_factor(self, level: float) -> float:
        if not self.scored:
            return 0.0
        if self.saturation is None:
            return 1.0
        idle, full = self.saturation
        return min(max((level - idle) / (full - idle), 0.0), 1.0)


def change_point(values: np.ndarray, min_segment: int = MIN_SEGMENT) -> int | None:
    """Index of the first point of the second segment of the best two-segment fit, or None
    when the series is too short to split."""
    n = len(values)
    if n < 2 * min_segment:
        return None
    cumsum = np.cumsum(values)
    cumsq = np.cumsum(values * values)
    best, best_k = math.inf, None
    for k in range(min_segment, n - min_segment + 1):
        left = cumsq[k - 1] - cumsum[k - 1] ** 2 / k
        right_sum = cumsum[-1] - cumsum[k - 1]
        right = (cumsq[-1] - cumsq[k - 1]) - right_sum ** 2 / (n - k)
        if left + right < best:
            best, best_k = left + right, k
    return best_k


def onset(values: np.ndarray, split: int, threshold: float) -> int:
    """Start of the excursion above ``threshold`` that holds at ``split``: a gradual rise is
    dated from where it left the before-segment, not from its middle."""
    i = split
    if values[i] < threshold:
        while i < len(values) - 1 and values[i] < threshold:
            i += 1
        return i
    while i > 0 and values[i - 1] >= threshold:
        i -= 1
    return i


def _spread(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation: robust to spikes."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _squash(z: float) -> float:
    return z / (z + SQUASH_Z) if z > 0 else 0.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 2 * MIN_SEGMENT:
        return None
    x, y = a[ok], b[ok]
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


class Diagnoser:
    """Reads one Prometheus and ranks the causes of the symptom over the last ``since`` s."""

    def __init__(self, prom: PrometheusAPI, model: str | None = None, since: float = 900.0,
                 end: float | None = None, symptom: str | None = None) -> None:
        self.prom = prom
        self.model = model
        self.end = time.time() if end is None else end
        self.start = self.end - since
        self.wanted_symptom = symptom
        scrape = self._scrape_interval()
        self.step = max(scrape, since / POINTS)
        window = max(4 * scrape, 2 * self.step)
        self.window = f"{math.ceil(window)}s"
        self.guard = math.ceil(window / self.step / 2)
        self.times = np.arange(self.start, self.end + self.step / 2, self.step)
        self.skipped: list[str] = []
        self.symptoms: list[Evidence] = []

    def _scrape_interval(self) -> float:
        intervals = [parse_duration(t["scrapeInterval"]) for t in self.prom.targets()
                     if t.get("scrapeInterval")]
        if intervals:
            return min(intervals)
        # A remote_write store scrapes nothing: the spacing of the samples its writers stored.
        gaps = [b - a for _, points in self.prom.raw_samples("up", self.end - 60, self.end)
                for (a, _), (b, _) in pairwise(points)]
        return float(np.median(gaps)) if gaps else 15.0

    @property
    def _sel(self) -> str:
        return f'model="{self.model}"' if self.model else ""

    def _range(self, expr: str) -> dict[tuple[tuple[str, str], ...], np.ndarray]:
        data = self.prom.query_range(expr, self.start, self.end, self.step)
        out = {}
        for series in data["result"]:
            values = np.full(len(self.times), np.nan)
            for t, v in series["values"]:
                i = round((float(t) - self.start) / self.step)
                if 0 <= i < len(values):
                    values[i] = float(v)
            out[tuple(sorted(series["metric"].items()))] = values
        return out

    def _one(self, expr: str) -> np.ndarray | None:
        series = self._range(expr)
        return next(iter(series.values())) if series else None

    # -- symptoms ---------------------------------------------------------------------------

    def _symptoms(self) -> list[tuple[str, str, float, float]]:
        """(name, query, floor, sign) of each symptom; sign -1 where bad is down."""
        latency = queries.histogram_mean(LATENCY_SECONDS, self.window, self._sel)
        errors = queries.error_ratio(self.window, self._sel)
        accuracy = queries.accuracy(self.window, self._sel)
        return [("latency", latency, 0.0001, 1.0), ("errors", errors, 0.005, 1.0),
                ("accuracy", accuracy, 0.01, -1.0)]

    def _measure(self, name: str, query: str, values: np.ndarray, floor: float, sign: float,
                 reference: tuple[float, np.ndarray] | None) -> Evidence | None:
        ok = ~np.isnan(values)
        if ok.sum() < 2 * MIN_SEGMENT:
            return None
        times, series = self.times[ok], values[ok] * sign
        k = change_point(series)
        if k is None:
            return None
        g = min(self.guard, k - 1, len(series) - k - 1)
        before, after = series[: k - g], series[k + g:]
        if len(before) == 0 or len(after) == 0:
            before, after = series[:k], series[k:]
        low, high = float(np.mean(before)), float(np.mean(after))
        spread = max(_spread(before), floor, RELATIVE_FLOOR * abs(low))
        z = (high - low) / spread
        if z > 0:
            k = onset(series, k, low + max(3 * spread, 0.1 * (high - low)))
        changed_at = float(times[k])
        lead = corr = None
        if reference is not None:
            lead = changed_at - reference[0]
            corr = _pearson(values * sign, reference[1])
        return Evidence(name, query, float(np.mean(before)) * sign,
                        float(np.mean(after)) * sign, z, changed_at, lead, corr)

    def _timing(self, lead: float | None) -> float:
        """1 for a signal that changed before or with the symptom, decaying as it lags."""
        if lead is None:
            return 1.0
        tolerance = parse_duration(self.window) + 2 * self.step
        return 1.0 if lead <= tolerance else math.exp(-(lead - tolerance) / tolerance)

    # -- the diagnosis ----------------------------------------------------------------------

    def run(self) -> Diagnosis:
        symptom, reference = self._pick_symptom()
        causes = self._root_causes(reference)
        stages = self._stages(symptom, reference)
        # Explaining away: a stage that a strong root cause accounts for is its consequence.
        links = {"CPU": set(STAGES), "queue saturation": {"queue"}, "GPU": {"compute"},
                 "memory": {"compute"}}
        for stage in stages:
            explained = max((c.score for c in causes
                             if stage.name.split()[0] in links.get(c.name, set())), default=0.0)
            stage.score *= 1.0 - explained
        ranked = sorted(causes + stages, key=lambda c: c.score, reverse=True)
        return Diagnosis(symptom, ranked, self.start, self.end, self.step, self.window,
                         self.model, self.skipped, self.symptoms)

    def _pick_symptom(self) -> tuple[Evidence | None, tuple[float, np.ndarray] | None]:
        best: tuple[float, Evidence, np.ndarray] | None = None
        for name, query, floor, sign in self._symptoms():
            if self.wanted_symptom and name != self.wanted_symptom:
                continue
            values = self._one(query)
            if values is None:
                continue
            ev = self._measure(name, query, values, floor, sign, None)
            if ev is None:
                continue
            self.symptoms.append(ev)
            practical = {"latency": ev.after > 1.25 * ev.before,
                         "errors": ev.after - ev.before > 0.01,
                         "accuracy": ev.before - ev.after > 0.03}[name]
            if not (practical or self.wanted_symptom) or ev.z < SYMPTOM_Z:
                continue
            if best is None or ev.z > best[0]:
                best = (ev.z, ev, values * sign)
        if best is None:
            return None, None
        assert best[1].changed_at is not None
        return best[1], (best[1].changed_at, best[2])

    def _root(self, name: str, specs: Sequence[_Spec],
              reference: tuple[float, np.ndarray] | None, detail: str = "",
              discount: float = 0.0) -> Cause | None:
        evidence = []
        for spec in specs:
            values = self._one(spec.query)
            if values is None:
                continue
            ev = self._measure(spec.name, spec.query, values, spec.floor, 1.0, reference)
            if ev is not None:
                evidence.append((self._root_score(ev, reference) * spec.headroom_factor(
                    ev.after), ev))
        if not evidence:
            self.skipped.append(name)
            return None
        evidence.sort(key=lambda pair: pair[0], reverse=True)
        score = evidence[0][0] * (1.0 - discount)
        return Cause(name, "root", score, [ev for _, ev in evidence], detail)

    def _root_score(self, ev: Evidence, reference: tuple[float, np.ndarray] | None) -> float:
        # Correlation over a noisy window can halve a cause's score, never zero it: timing
        # and headroom already tie the cause to the symptom.
        relevance = 1.0 if reference is None else 0.5 + 0.5 * max(ev.correlation or 0.0, 0.0)
        return _squash(ev.z) * self._timing(ev.lead_s) * relevance

    def _root_causes(self, reference: tuple[float, np.ndarray] | None) -> list[Cause]:
        requests = queries.request_rate(self.window, self._sel)
        traffic = self._root("traffic", [_Spec("request rate", requests, 1.0)], None)
        # CPU that rises with the offered load is the load's consequence, not interference.
        load = _squash(traffic.evidence[0].z) if traffic else 0.0
        shed = queries.shed_rate(self.window, self._sel)
        cpu_waiting = queries.select("node_pressure_cpu_waiting_seconds_total",
                                     queries.LOCAL_NODE)
        pressure = f"rate({cpu_waiting}[{self.window}])"
        causes = [
            self._root("CPU", [
                _Spec("CPU utilisation", f"avg({queries.cpu_utilisation(self.window)})", 0.05,
                      (0.5, 0.9)),
                _Spec("CPU pressure (share of time tasks waited for a CPU)",
                      f"avg({pressure})", 0.05, (0.1, 0.5)),
            ], reference, discount=load),
            self._root("memory", [
                _Spec("memory utilisation", f"avg({queries.memory_utilisation()})", 0.02,
                       (0.7, 0.9))], reference),
            self._root("GPU", [
                _Spec("GPU utilisation",
                      f"avg({queries.gpu_utilisation(self.window)})",
                      0.05, (0.5, 0.9)),
                _Spec("GPU memory",
                      f"avg({queries.gpu_memory_ratio()})",
                      0.02, (0.8, 0.95)),
            ], reference),
            self._root("queue saturation", [
                _Spec("queue fill (depth / capacity)",
                      f"max(avg_over_time({queries.select(QUEUE_DEPTH, self._sel)}"
                      f"[{self.window}])) / max({queries.select(QUEUE_CAPACITY, self._sel)})",
                      0.05, (0.0, 0.5)),
                _Spec("requests shed (503 overloaded) per request",
                      f"({shed} or vector(0)) / {requests}", 0.01, (0.0, 0.01)),
                _Spec("mean batch size",
                      queries.histogram_mean(BATCH_SIZE, self.window, self._sel), 1.0,
                      scored=False),
                _Spec("request rate", requests, 1.0, scored=False),
            ], reference),
            self._root("input drift", [
                _Spec("PSI (max over features)",
                      f"max({queries.select(DRIFT_PSI, self._sel)})",
                      0.05)], reference),
            self._root("flapping target", [
                _Spec("targets down", "count(up == 0) or vector(0)", 0.5)], reference),
        ]
        found = [c for c in causes if c is not None]
        found += self._reasons(requests, reference)
        version = self._version_change(reference)
        if version is not None:
            found.append(version)
        return found

    def _reasons(self, requests: str, reference: tuple[float, np.ndarray] | None
                 ) -> list[Cause]:
        query = queries.error_reason_rate(self.window, self._sel, f'reason!="{SHED_REASON}"',
                                          by=("reason",))
        total = self._one(requests)
        causes = []
        for labels, values in self._range(query).items():
            reason = dict(labels).get("reason", "?")
            share = np.where(np.isnan(values), 0.0, values) / total if total is not None \
                else values
            one = queries.error_reason_rate(self.window, self._sel, f'reason="{reason}"')
            spec_query = f"{one} / {requests}"
            ev = self._measure(f"errors with reason {reason} per request", spec_query, share,
                               0.005, 1.0, reference)
            if ev is not None:
                # The proxy's reasons name the upstream: its failures, seen from outside.
                name = (f"upstream errors ({reason})" if reason.startswith("upstream_")
                        else f"error reason {reason}")
                causes.append(Cause(name, "root",
                                    self._root_score(ev, reference), [ev]))
        return causes

    def _version_change(self, reference: tuple[float, np.ndarray] | None) -> Cause | None:
        query = queries.select(MODEL_INFO, self._sel)
        series = self._range(query)
        first_seen: dict[str, float] = {}
        for labels, values in series.items():
            ok = np.flatnonzero(~np.isnan(values))
            if len(ok):
                version = dict(labels).get("version", "")
                at = float(self.times[ok[0]])
                first_seen[version] = min(at, first_seen.get(version, at))
        if not first_seen:
            self.skipped.append("model version change")
            return None
        indicator = np.zeros(len(self.times))
        changed_at = None
        if len(first_seen) > 1:
            changed_at = max(first_seen.values())
            indicator[self.times >= changed_at] = 1.0
        lead = corr = None
        if reference is not None and changed_at is not None:
            lead, corr = changed_at - reference[0], _pearson(indicator, reference[1])
        ev = Evidence("distinct versions served", f"count by (version) ({query})",
                      1.0, float(len(first_seen)), 10.0 if changed_at else 0.0,
                      changed_at, lead, corr)
        score = self._root_score(ev, reference) if changed_at else 0.0
        return Cause("model version change", "root", score, [ev],
                     "versions: " + ", ".join(sorted(first_seen)))

    def _stages(self, symptom: Evidence | None, reference: tuple[float, np.ndarray] | None
                ) -> list[Cause]:
        query = queries.histogram_mean(STAGE_SECONDS, self.window, self._sel, by=("stage",))
        series = {dict(k).get("stage", "?"): v for k, v in self._range(query).items()}
        if not series:
            self.skipped.append("stages")
            return []
        measured = {}
        for stage, values in series.items():
            ev = self._measure(f"mean {stage} seconds", query, values, 0.0001, 1.0, reference)
            if ev is not None:
                measured[stage] = (values, ev)
        growth: dict[str, float] = {}
        if symptom is not None and symptom.signal == "latency" and reference is not None:
            # Each stage's share of the latency growth, split at the symptom's change.
            at = reference[0]
            for stage, (values, _) in measured.items():
                before, after = values[self.times < at], values[self.times >= at]
                before, after = before[~np.isnan(before)], after[~np.isnan(after)]
                if len(before) and len(after):
                    growth[stage] = max(float(after.mean() - before.mean()), 0.0)
        total = sum(growth.values())
        causes = []
        for stage, (_, ev) in measured.items():
            if total > 0:
                share = growth.get(stage, 0.0) / total
                score = share * self._timing(ev.lead_s)
                detail = f"{share:.0%} of the latency growth"
            else:
                score = self._root_score(ev, reference) * 0.5
                detail = ""
            causes.append(Cause(f"{stage} stage", "stage", score, [ev], detail))
        return causes


def as_json(diagnosis: Diagnosis) -> dict[str, Any]:
    from dataclasses import asdict

    def clean(value: Any) -> Any:
        if isinstance(value, float):
            return None if math.isnan(value) or math.isinf(value) else round(value, 6)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean({
        "symptom": asdict(diagnosis.symptom) if diagnosis.symptom else None,
        "window": {"start": diagnosis.start, "end": diagnosis.end, "step": diagnosis.step,
                   "rate_window": diagnosis.rate_window},
        "model": diagnosis.model,
        "causes": [{**asdict(c), "lead_s": c.lead_s} for c in diagnosis.causes],
        "skipped": diagnosis.skipped,
        "symptoms_measured": [asdict(e) for e in diagnosis.symptoms],
    })


def render(diagnosis: Diagnosis, console: Console, since: str) -> None:
    """Print the symptom of the look-back window ``since`` and the ranked causes."""
    s = diagnosis.symptom
    if s is None:
        console.print(f"no symptom over the last {since}: latency, errors and accuracy held "
                      "steady; causes below are ranked by their own change")
    else:
        at = time.strftime("%H:%M:%S", time.localtime(s.changed_at))
        console.print(f"symptom: [bold]{s.signal}[/] {s.before:.4g} -> {s.after:.4g} "
                      f"(shift {s.z:.1f} sd) from {at}")
    table = Table(title=f"inferwatch diagnose (step {diagnosis.step:g}s, rate window "
                        f"{diagnosis.rate_window})")
    for column in ("rank", "cause", "score", "lead", "evidence", "query"):
        table.add_column(column, overflow="fold")
    for rank, cause in enumerate(diagnosis.causes, 1):
        ev = cause.evidence[0]
        lead = "" if ev.lead_s is None else f"{ev.lead_s:+.0f}s"
        corr = "" if ev.correlation is None else f", r {ev.correlation:.2f}"
        numbers = f"{ev.signal}: {ev.before:.4g} -> {ev.after:.4g} (shift {ev.z:.1f} sd{corr})"
        if cause.detail:
            numbers += f"; {cause.detail}"
        table.add_row(str(rank), cause.name, f"{cause.score:.2f}", lead, numbers, ev.query)
    console.print(table)
    if diagnosis.skipped:
        console.print("no data for: " + ", ".join(diagnosis.skipped))
