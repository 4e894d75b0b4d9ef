import os
import stat
from pathlib import Path

import pytest

from inferwatch.secrets import SecretFileError, read_secret_file, write_secret_file


def test_secret_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_secret_file(tmp_path / "deep" / "token", "value-from-test")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path, "token") == "value-from-test"
    # Rewriting replaces the file: a looser mode it had does not survive.
    path.chmod(0o644)
    write_secret_file(path, "second")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700 | 0o001])
def test_secrets_with_looser_modes_are_refused_not_read(tmp_path: Path, mode: int) -> None:
    path = write_secret_file(tmp_path / "token", "value-from-test")
    path.chmod(mode)
    with pytest.raises(SecretFileError, match=f"chmod 600 {path}"):
        read_secret_file(path, "token")
    with pytest.raises(SecretFileError, match="not a file"):
        read_secret_file(tmp_path, "token")
