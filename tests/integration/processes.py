"""What the integration tests share for servers they run as processes: start one and wait
until it answers, stop it at the end, and read its /metrics."""

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def process(argv: list[str], ready_url: str, log: Path, timeout: float = 90,
            **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv``, wait until ``ready_url`` answers 200, stop it at the end."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{argv[:3]} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{ready_url} not ready:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def scrape(metrics_url: str) -> Samples:
    """Every sample of ``metrics_url``, by name and sorted labels."""
    text = httpx.get(metrics_url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
