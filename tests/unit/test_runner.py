import json
import sys
from pathlib import Path

import pytest

from inferwatch.stack.profiles import FAST
from inferwatch.stack.runner import Component, Stack, StackError, StackOptions, alive

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_component_stops_and_starts_again_in_its_place(tmp_path: Path) -> None:
    stack = Stack(StackOptions(run_dir=tmp_path, profile=FAST))
    stack.start_components([Component("first", SLEEPER, None), Component("second", SLEEPER, None)])
    try:
        old = stack.process("first")
        with pytest.raises(StackError, match="still running"):
            stack.start_component("first")
        stack.stop_component("first", kill=True)
        assert not alive(old)
        stack.start_component("first")
        new = stack.process("first")
        assert alive(new) and new.pid != old.pid and new.argv == old.argv
        assert [p.name for p in stack.processes] == ["first", "second"]  # stop order kept
        state = json.loads((tmp_path / "state.json").read_text())
        assert [p["pid"] for p in state["processes"]] == [p.pid for p in stack.processes]
        stack.restart("second")
        assert alive(stack.process("second"))
    finally:
        processes = list(stack.processes)
        stack.stop()
    assert not any(alive(p) for p in processes)


def test_a_directory_that_is_no_run_dir_is_never_narrowed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    (shared / "notes.txt").write_text("someone else's")
    Stack(StackOptions(run_dir=shared, profile=FAST)).write_config()
    assert shared.stat().st_mode & 0o777 == 0o755
    assert (shared / "data").stat().st_mode & 0o777 == 0o700
    assert (shared / "prometheus.yml").stat().st_mode & 0o777 == 0o600
    for fresh in (tmp_path / "new", tmp_path / "empty"):
        if fresh.name == "empty":
            fresh.mkdir()
        Stack(StackOptions(run_dir=fresh, profile=FAST)).write_config()
        assert fresh.stat().st_mode & 0o777 == 0o700
        Stack(StackOptions(run_dir=fresh, profile=FAST)).write_config()  # an earlier stack's
