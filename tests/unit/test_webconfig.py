import stat
from pathlib import Path

import bcrypt
import pytest
import yaml

from inferwatch.secrets import SecretFileError, write_secret_file
from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.config import render_prometheus_config
from inferwatch.stack.profiles import FAST
from inferwatch.stack.webconfig import (
    PASSWORD_ENV,
    BasicAuth,
    WebConfigError,
    check_web_config,
    given_password,
    render_web_config,
    write_web_config,
)


def test_the_hash_verifies_the_password_and_nothing_else() -> None:
    hashed = render_web_config("ops", "s3cret-from-test")["basic_auth_users"]["ops"]
    assert "s3cret-from-test" not in hashed
    assert bcrypt.checkpw(b"s3cret-from-test", hashed.encode())
    assert not bcrypt.checkpw(b"s3cret-from-tesT", hashed.encode())


def test_written_web_config_is_private_and_promtool_accepts_it(tmp_path: Path) -> None:
    path = write_web_config(tmp_path / "web.yml", "ops", "s3cret-from-test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "s3cret-from-test" not in path.read_text()
    assert list(yaml.safe_load(path.read_text())["basic_auth_users"]) == ["ops"]
    check_web_config(path)


@pytest.mark.parametrize("content, message", [
    ("basic_auth_users:\n  ops: not-a-bcrypt-hash\n", "bcrypt"),
    ("basic_auth_user:\n  ops: x\n", "basic_auth_user"),
])
def test_promtool_refusal_carries_its_message(tmp_path: Path, content: str,
                                              message: str) -> None:
    path = write_secret_file(tmp_path / "web.yml", content)
    with pytest.raises(WebConfigError, match=message):
        check_web_config(path)


def test_password_comes_from_a_private_file_or_the_environment_never_a_default(
        tmp_path: Path) -> None:
    assert given_password(None, {}) is None
    assert given_password(None, {PASSWORD_ENV: "from-env"}) == "from-env"
    secret = write_secret_file(tmp_path / "password", "from-file")
    assert given_password(secret, {PASSWORD_ENV: "from-env"}) == "from-file"
    secret.chmod(0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        given_password(secret, {})
    empty = write_secret_file(tmp_path / "empty", "")
    with pytest.raises(WebConfigError, match="empty"):
        given_password(empty, {})


def test_basic_auth_refuses_bad_names_and_loose_password_files(tmp_path: Path) -> None:
    for name in ("", "a:b", "a b"):
        with pytest.raises(WebConfigError):
            BasicAuth(name, tmp_path / "password")
    auth = BasicAuth("ops", write_secret_file(tmp_path / "password", "pw-from-test"))
    assert auth.credentials() == ("ops", "pw-from-test")
    auth.password_file.chmod(0o640)
    with pytest.raises(SecretFileError):
        auth.credentials()


def test_prometheus_sends_the_password_file_to_itself_and_alertmanager(tmp_path: Path) -> None:
    auth = BasicAuth("ops", tmp_path / "password")
    config = render_prometheus_config(FAST, StackPorts(), host="10.1.2.3", auth=auth)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    expected = {"username": "ops", "password_file": str(tmp_path / "password")}
    guarded = ("prometheus", "alertmanager")
    assert all(jobs[name]["basic_auth"] == expected for name in guarded)
    assert config["alerting"]["alertmanagers"][0]["basic_auth"] == expected
    assert all("basic_auth" not in j for name, j in jobs.items() if name not in guarded)
    assert jobs["node"]["static_configs"][0]["targets"] == ["10.1.2.3:9100"]
    assert "basic_auth" not in str(render_prometheus_config(FAST, StackPorts()))
