"""Secrets live in files only their owner can read, never in the repository or in flags."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretFileError(ValueError):
    pass


def check_secret_file(path: str | Path, what: str) -> Path:
    """Refuse, never just warn about, a secret file that its group or others may access."""
    p = Path(path)
    if not p.is_file():
        raise SecretFileError(f"{what}: {p} is not a file")
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"{what}: {p} is readable by others; chmod 600 {p}")
    return p


def read_secret_file(path: str | Path, what: str) -> str:
    return check_secret_file(path, what).read_text().strip()


def write_secret_file(path: Path, value: str) -> Path:
    """Create ``path`` with mode 0600 before any byte of the secret is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # Created 0600 by open(2) itself: never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    path.chmod(0o600)  # the umask can only remove bits; this pins the mode exactly
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path
