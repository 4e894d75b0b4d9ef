"""metrics/names.py: the one list of series names and the one error-reason table."""

import ast
import doctest
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

import inferwatch
from inferwatch.metrics import InferenceMetrics, names
from inferwatch.metrics.names import (
    ERROR_REASONS,
    FEEDBACK_STATUS_BY_REASON,
    REASON_BY_STATUS,
    RELAYED_REASONS,
    SHED_REASON,
    STATUS_BY_REASON,
    reason_for_status,
)
from inferwatch.metrics.quality import (
    FeatureReference,
    QualityMetrics,
    QualityMonitor,
    QualityReference,
)
from inferwatch.serve.errors import InferenceError

PACKAGE = Path(inferwatch.__file__).parent
METRIC_NAMES = {value for key, value in vars(names).items()
                if key.isupper() and isinstance(value, str)
                and value.startswith(("inference_", "inferwatch_"))}


def test_the_doctests_pass() -> None:
    assert doctest.testmod(names).failed == 0


def test_every_reason_is_answered_with_a_client_or_server_error() -> None:
    for reason, status in {**STATUS_BY_REASON, **FEEDBACK_STATUS_BY_REASON}.items():
        assert 400 <= status < 600, reason


def test_the_reason_label_values_are_pinned() -> None:
    """Dashboards and alerts select on these values: adding or dropping one is a decision."""
    assert {
        "invalid_json", "invalid_image", "invalid_shape", "empty_body", "body_too_large",
        "bad_request", "unsupported_media_type", "unknown_model", "method_not_allowed", "not_found",
        "overloaded", "timeout", "internal", "injected", "upstream_connect", "proxy_internal",
        "upstream_timeout", "upstream_5xx", "upstream_4xx", "client_closed", "image_too_large",
        "unknown_output",
    } == ERROR_REASONS
    assert RELAYED_REASONS < ERROR_REASONS
    assert not set(FEEDBACK_STATUS_BY_REASON) & ERROR_REASONS
    assert STATUS_BY_REASON[SHED_REASON] == 503


def test_a_reason_found_by_its_status_is_answered_with_that_status() -> None:
    for status in range(400, 600):
        assert reason_for_status(status) in ERROR_REASONS
    # 429 is other servers' shedding; serve answers it 503.
    for status, reason in REASON_BY_STATUS.items():
        assert STATUS_BY_REASON[reason] == (503 if status == 429 else status)


def test_serve_answers_each_reason_with_the_tables_status() -> None:
    for reason, status in {**STATUS_BY_REASON, **FEEDBACK_STATUS_BY_REASON}.items():
        assert InferenceError(reason, "m").status == status


def _code(path: Path) -> Iterator[ast.AST]:
    """The nodes of ``path`` outside its docstrings (of modules, classes, functions and
    attributes: every string that stands as a statement of its own)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return (node for node in ast.walk(tree) if id(node) not in docstrings)


def _is_status(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, int) \
        and 400 <= node.value < 600


def _is_reason(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in ERROR_REASONS


def test_no_other_module_maps_reasons_to_statuses() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "names.py":
            continue
        for node in _code(path):
            if isinstance(node, ast.Dict) and any(
                    (_is_reason(k) and _is_status(v)) or (_is_status(k) and _is_reason(v))
                    for k, v in zip(node.keys, node.values, strict=True)):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def test_no_other_module_spells_a_metric_name() -> None:
    spelled = re.compile(r"(?<![A-Za-z0-9_:])(" + "|".join(sorted(METRIC_NAMES)) + r")\b")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "names.py":
            continue
        for node in _code(path):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and spelled.search(node.value):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value[:60]}")
    assert found == []


def test_the_instruments_export_the_names() -> None:
    registry = CollectorRegistry()
    metrics = InferenceMetrics({"m": "1"}, registry=registry)
    metrics.watch_queue("m", lambda: 0, 1)
    metrics.set_model_loaded("m", runtime="numpy", load_seconds=1, accuracy=0.9)
    metrics.observe_request("m", 400, 0.1, "invalid_image")
    quality = QualityMetrics(registry)
    quality.feedback_rejected.labels("invalid_label").inc()
    monitor = QualityMonitor(quality, "m", "1", ["a", "b"], QualityReference(
        {"x": FeatureReference(np.array([0.5]), np.array([0.5, 0.5]))}, np.array([0.5, 0.5])),
        features=lambda s: {"mean_intensity": s[:, 0], "x": s[:, 0]})
    monitor.observe(np.array([[0.9, 0.1]]), np.array([[0.2]]))
    monitor.flush()
    samples = {s.name for family in registry.collect() for s in family.samples}
    serving = {value for key, value in vars(names).items()
               if isinstance(value, str) and value in METRIC_NAMES
               and not key.startswith(("GPU_", "BATCH_JOB_"))}
    missing = {name for name in serving if name not in samples and f"{name}_count" not in samples}
    assert missing == {
        names.TIME_TO_FIRST_BYTE_SECONDS,  # observed by the proxy's streams
        # observed by the proxy's OpenAI-style completions (test_proxy_completions.py)
        names.TOKENS_TOTAL, names.FINISH_REASONS_TOTAL, names.TIME_TO_FIRST_TOKEN_SECONDS,
        names.INTER_TOKEN_LATENCY_SECONDS, names.OUTPUT_TOKENS_PER_SECOND,
        # made by recording rules from servers that report them (vLLM), never by inferwatch
        names.KV_CACHE_USAGE_RATIO, names.PREEMPTIONS_TOTAL,
    }
