"""No default or literal password in any tracked file: each pattern is a way one has crept
into monitoring repositories before (Grafana's admin/admin, a password in Compose or YAML)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A value is fine when it is a reference: ${VAR...}, $(command), <placeholder>, or empty;
# after a `:` (Compose's ${VAR:?message}), `?` too. `${VAR:-x}` is a default: caught.
_LITERAL = r"""["']?(?![$<{?"'\s])[^\s"']+"""
PATTERNS = {
    "admin/admin": re.compile(r"\badmin\s*[/:]\s*admin\b", re.IGNORECASE),
    "Grafana admin password": re.compile(
        r"GF_SECURITY_ADMIN_PASSWORD\s*[=:]\s*" + _LITERAL),
    "adminPassword": re.compile(r"adminPassword\s*[=:]\s*" + _LITERAL),
    "YAML password": re.compile(r"^\s*[\w-]*password\s*:\s*" + _LITERAL,
                                re.IGNORECASE | re.MULTILINE),
    # The name of an environment variable (PASSWORD_ENV = "X_PASSWORD") is not a password.
    "Python password": re.compile(
        r"\b\w*password\w*\s*=\s*[\"'](?!(?-i:[A-Z][A-Z0-9_]*)[\"'])[^\"']+[\"']", re.IGNORECASE),
}
NOT_IN_PYTHON = {"YAML password"}  # there `password: str` is a type annotation


def tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                               check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        # Not a checkout (a source archive): every file but caches and environments.
        skip = {".git", ".venv", "build", "node_modules", "__pycache__"}
        return [p for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names if n]


def test_patterns_catch_what_they_are_for() -> None:
    caught = ["login admin/admin", "GF_SECURITY_ADMIN_PASSWORD=hunter2",
              "GF_SECURITY_ADMIN_PASSWORD: 'hunter2'", "  password: hunter2",
              "  smtp_auth_password: hunter2", 'PASSWORD = "hunter2"', "adminPassword: x1",
              "GF_SECURITY_ADMIN_PASSWORD=${GF_SECURITY_ADMIN_PASSWORD:-admin}"]
    allowed = ["GF_SECURITY_ADMIN_PASSWORD=${GF_SECURITY_ADMIN_PASSWORD:?set it}",
               "GF_SECURITY_ADMIN_PASSWORD=$(openssl rand -hex 16)", "password_file: /run/pw",
               "password: <from your vault>", "password = secrets.token_urlsafe(16)",
               "auth_password_file: /run/pw", 'PASSWORD_ENV = "INFERWATCH_PROMETHEUS_PASSWORD"']
    for line in caught:
        assert any(p.search(line) for p in PATTERNS.values()), line
    for line in allowed:
        assert not any(p.search(line) for p in PATTERNS.values()), line


def test_no_tracked_file_holds_a_default_password() -> None:
    me = Path(__file__).resolve()
    found = []
    for path in tracked_files():
        if path.resolve() == me or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # images, weights
        for name, pattern in PATTERNS.items():
            if path.suffix == ".py" and name in NOT_IN_PYTHON:
                continue
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {name}: {match.group().strip()}")
    assert not found, "\n".join(found)
