"""Client of the service's admin API: inject faults, clear them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from inferwatch.secrets import SecretFileError, read_secret_file


class ChaosError(RuntimeError):
    pass


class ChaosClient:
    """Talks to ``inferwatch serve --admin-port``.

    >>> chaos = ChaosClient("http://127.0.0.1:9097", token)  # doctest: +SKIP
    >>> chaos.errors(0.5)  # doctest: +SKIP
    """

    def __init__(self, admin_url: str, token: str, timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=admin_url.rstrip("/"), timeout=timeout,
                                    headers={"Authorization": f"Bearer {token}"})

    @classmethod
    def connect(cls, run_dir: Path, admin_url: str | None = None,
                token_file: Path | None = None) -> ChaosClient:
        """The admin API at ``admin_url`` with the token of ``token_file``, else the one of
        the stack in ``run_dir``."""
        try:
            if not admin_url:
                return cls.from_run_dir(run_dir)
            if token_file is None:
                raise ChaosError("--admin-url needs --token-file")
            return cls(admin_url, read_secret_file(token_file, "--token-file"))
        except SecretFileError as exc:
            raise ChaosError(str(exc)) from None

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> ChaosClient:
        """The admin API of the stack started with ``inferwatch up --run-dir run_dir``."""
        import json

        state = run_dir / "state.json"
        if not state.exists():
            raise ChaosError(f"no running stack in {run_dir} (no state.json)")
        port = json.loads(state.read_text())["ports"]["admin"]
        token = read_secret_file(run_dir / "admin-token", "admin token")
        return cls(f"http://127.0.0.1:{port}", token)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChaosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ChaosError(f"admin API unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ChaosError(f"{method} {path}: HTTP {response.status_code}: {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/admin/faults")

    def errors(self, ratio: float) -> dict[str, Any]:
        return self._call("POST", "/admin/faults/errors", {"ratio": ratio})

    def latency(self, stage: str, seconds: float) -> dict[str, Any]:
        return self._call("POST", "/admin/faults/latency", {"stage": stage, "seconds": seconds})

    def cpu(self, workers: int, seconds: float) -> dict[str, Any]:
        return self._call("POST", "/admin/faults/cpu", {"workers": workers, "seconds": seconds})

    def drift(self, kind: str, strength: float) -> dict[str, Any]:
        return self._call("POST", "/admin/faults/drift", {"kind": kind, "strength": strength})

    def clear(self) -> dict[str, Any]:
        return self._call("DELETE", "/admin/faults")

    def kill(self) -> dict[str, Any]:
        return self._call("POST", "/admin/kill")
