"""`/metrics` as prometheus_client writes it, with histograms written straight from their counts.

A collector with an ``exposition(openmetrics)`` method writes its own text here, every other
one goes through prometheus_client's encoder; the output is the same byte for byte (a unit
test pins it). Why: docs/instrumentation.md#exposition.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

_EOF = "# EOF\n"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

HistogramSeries = tuple[Mapping[str, str], Sequence[float], float, Sequence[Exemplar | None]]
"""One labelled histogram: labels, cumulative bucket counts (last is +Inf), sum, and each
bucket's exemplar (or none at all: an empty sequence)."""


def render_exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``registry`` for an ``Accept`` header, and its content type.

    >>> from prometheus_client import Counter
    >>> registry = CollectorRegistry()
    >>> Counter("hits", "Hits.", registry=registry).inc()
    >>> body, content_type = render_exposition(registry)
    >>> b"hits_total 1.0" in body, content_type.split(";")[0]
    (True, 'text/plain')
    """
    encoder, content_type = choose_encoder(accept)
    collectors = _collectors(registry)
    if collectors is None:
        return encoder(registry), content_type
    openmetrics = content_type.startswith("application/openmetrics-text")
    parts: list[str] = []
    for collector in collectors:
        own = getattr(collector, "exposition", None)
        if own is not None:
            parts.append(own(openmetrics))
            continue
        parts.append(families_text(collector.collect(), openmetrics))
    if openmetrics:
        parts.append(_EOF)
    return "".join(parts).encode("utf-8"), content_type


def families_text(metrics: Iterable[Metric], openmetrics: bool) -> str:
    """``metrics`` as prometheus_client writes them: counters and gauges by
    :func:`family_text`, other types by prometheus_client's own encoder."""
    parts = []
    for metric in metrics:
        text = family_text(metric, openmetrics)
        parts.append(text if text is not None else _stock_text(metric, openmetrics))
    return "".join(parts)


def family_text(metric: Metric, openmetrics: bool) -> str | None:
    """A counter or gauge family as prometheus_client writes it; None for anything else
    (other types, units, exemplars, timestamps, `_created`, names that need escaping)."""
    if metric.type not in ("counter", "gauge") or metric.unit \
            or not _NAME.fullmatch(metric.name):
        return None
    name = metric.name + "_total" if metric.type == "counter" and not openmetrics \
        else metric.name
    lines = [f"# HELP {name} {_help(metric.documentation, openmetrics)}",
             f"# TYPE {name} {metric.type}"]
    for sample in metric.samples:
        if sample.timestamp is not None or sample.exemplar is not None \
                or sample.native_histogram is not None or sample.name.endswith("_created") \
                or not _NAME.fullmatch(sample.name):
            return None
        if sample.labels:
            if not all(_LABEL.fullmatch(k) for k in sample.labels):
                return None
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{sample.name}{{{labels}}} {_count(sample.value)}")
        else:
            lines.append(f"{sample.name} {_count(sample.value)}")
    return "\n".join(lines) + "\n"


def histogram_text(name: str, documentation: str, bounds: Sequence[str],
                   series: Iterable[HistogramSeries], openmetrics: bool) -> str:
    """A histogram family in the text or OpenMetrics format (identical for histograms but
    for the HELP escaping, and exemplars, which only OpenMetrics has); ``bounds`` are the
    ``le`` values, ``+Inf`` last.

    >>> print(histogram_text("t", "Time.", ["0.5", "+Inf"],
    ...                      [({"model": "m"}, [1.0, 3.0], 2.5, ())], False), end="")
    # HELP t Time.
    # TYPE t histogram
    t_bucket{le="0.5",model="m"} 1.0
    t_bucket{le="+Inf",model="m"} 3.0
    t_count{model="m"} 3.0
    t_sum{model="m"} 2.5
    """
    lines = [f"# HELP {name} {_help(documentation, openmetrics)}", f"# TYPE {name} histogram"]
    for labels, cumulative, total, exemplars in series:
        pairs = sorted((k, _escape(v)) for k, v in labels.items())
        before = "".join(f'{k}="{v}",' for k, v in pairs if k < "le")
        after = "".join(f',{k}="{v}"' for k, v in pairs if k > "le")
        plain = ",".join(f'{k}="{v}"' for k, v in pairs)
        plain = f"{{{plain}}}" if plain else ""
        head, tail = f'{name}_bucket{{{before}le="', f'"{after}}} '
        buckets = [f"{head}{le}{tail}{_count(c)}" for le, c in zip(bounds, cumulative,
                                                                   strict=True)]
        if openmetrics and exemplars:
            buckets = [line if e is None else line + _exemplar(e)
                       for line, e in zip(buckets, exemplars, strict=True)]
        lines.extend(buckets)
        lines.append(f"{name}_count{plain} {_count(cumulative[-1])}")
        lines.append(f"{name}_sum{plain} {floatToGoString(total)}")
    return "\n".join(lines) + "\n"


def cumulative(counts: Iterable[float]) -> list[float]:
    return list(itertools.accumulate(counts, initial=0.0))[1:]


def _count(value: float) -> str:
    # floatToGoString of a whole number below 1e6 is repr's "N.0"; this is 3x faster.
    return f"{int(value)}.0" if 0 <= value < 1e6 and value == int(value) \
        else floatToGoString(value)


def _exemplar(exemplar: Exemplar) -> str:
    """The exemplar after a bucket's count, as prometheus_client's OpenMetrics encoder
    writes it."""
    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(exemplar.labels.items()))
    stamp = "" if exemplar.timestamp is None else f" {exemplar.timestamp}"
    return f" # {{{labels}}} {floatToGoString(exemplar.value)}{stamp}"


def _help(documentation: str, openmetrics: bool) -> str:
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r'\"') if openmetrics else text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _collectors(registry: Any) -> list[Any] | None:
    """The registry's collectors in order, as its ``collect`` walks them; None when it has
    a target info metric or is not a ``CollectorRegistry`` (then the stock encoder runs)."""
    if type(registry) is not CollectorRegistry or registry._target_info:
        return None
    with registry._lock:
        return list(registry._collector_to_names)


class _Fixed:
    """What the stock encoders need of a registry: ``collect``."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def _stock_text(metric: Metric, openmetrics: bool) -> str:
    encoder, _ = choose_encoder("application/openmetrics-text" if openmetrics else "")
    text: str = encoder(_Fixed([metric])).decode("utf-8")
    return text[:-len(_EOF)] if openmetrics and text.endswith(_EOF) else text
