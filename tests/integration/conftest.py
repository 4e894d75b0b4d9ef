import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferwatch.operate.promapi import PrometheusAPI
from inferwatch.stack.addresses import StackPorts, url
from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import BINARIES, Stack, StackOptions

MISSING = [c for c, names in BINARIES.items() if not any(shutil.which(n) for n in names)]

# `make test` installs the binaries; a run without them must say so, not pass quietly.
if MISSING:
    raise RuntimeError(f"integration tests need {', '.join(MISSING)} on PATH: run `make deps`")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    opts = StackOptions(run_dir=tmp_path_factory.mktemp("stack"), profile=FAST,
                        ports=StackPorts.free(), traffic_rate=0)
    with Stack(opts) as running:
        yield running


@pytest.fixture(scope="module")
def prom(stack: Stack) -> Iterator[PrometheusAPI]:
    api = PrometheusAPI(url(stack.opts.ports.prometheus))
    # Prometheus starts scraping a few seconds after it is ready: a test that sends traffic
    # before the first scrape of the service would see no increase at all.
    for job in ("inference", "node"):
        api.wait_for_scrape(job, after=0)
    yield api
    api.close()


def run_dir(stack: Stack) -> Path:
    return stack.opts.run_dir
