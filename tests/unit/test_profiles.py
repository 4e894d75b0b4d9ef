from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferwatch.cli import app
from inferwatch.stack.profiles import FAST, ProfileError, profile_named


def test_a_profile_is_found_by_name() -> None:
    assert profile_named("fast") is FAST
    with pytest.raises(ProfileError, match="unknown profile 'bogus'; choose from default, fast"):
        profile_named("bogus")


@pytest.mark.parametrize("command", [
    ["render", "--out"], ["render", "compose", "--out"], ["render", "k8s", "--out"],
    ["up", "--run-dir"], ["dashboard"],
])
def test_every_command_names_the_profiles_it_knows(command: list[str], tmp_path: Path) -> None:
    out = [str(tmp_path / "out")] if command[-1].startswith("--") else []
    result = CliRunner().invoke(app, [*command, *out, "--profile", "bogus"])
    assert result.exit_code == 2
    assert "unknown profile 'bogus'; choose from default, fast" in result.output
    assert not (tmp_path / "out").exists()
