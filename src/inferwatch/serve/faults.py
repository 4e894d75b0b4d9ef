"""Faults the service can be told to inject, for alert and diagnosis drills.

Only the admin API (off unless enabled, localhost-only, token-protected) changes them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferwatch.metrics import STAGES

MAX_CPU_WORKERS = 64
DRIFT_KINDS = ("noise", "rotate", "invert")
MAX_SECONDS = 3600.0

_SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


class FaultError(ValueError):
    pass


@dataclass
class Faults:
    error_ratio: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)  # stage -> added seconds
    drift: tuple[str, float] | None = None  # (kind, strength) applied to every input
    _hogs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _hog_until: float = 0.0
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def set_error_ratio(self, ratio: float) -> None:
        if not 0 <= ratio <= 1:
            raise FaultError("ratio must be between 0 and 1")
        with self._lock:
            self.error_ratio, self._count = ratio, 0

    def should_fail(self) -> bool:
        """Deterministic: exactly ``ratio`` of the requests fail, evenly spread."""
        if not self.error_ratio:
            return False
        with self._lock:
            self._count += 1
            n, r = self._count, self.error_ratio
        return int(n * r) > int((n - 1) * r)

    def set_latency(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise FaultError(f"stage must be one of {', '.join(STAGES)}")
        if not 0 <= seconds <= 60:
            raise FaultError("seconds must be between 0 and 60")
        if seconds:
            self.latency[stage] = seconds
        else:
            self.latency.pop(stage, None)

    def delay(self, stage: str) -> float:
        return self.latency.get(stage, 0.0)

    def set_drift(self, kind: str, strength: float) -> None:
        if kind not in DRIFT_KINDS:
            raise FaultError(f"kind must be one of {', '.join(DRIFT_KINDS)}")
        if not 0 < strength <= 1:
            raise FaultError("strength must be in (0, 1]")
        self.drift = (kind, strength)

    def drift_inputs(self, samples: np.ndarray, value_range: tuple[float, float] | None
                     ) -> np.ndarray:
        """Inputs as a shifted client population would send them: noisier, rotated or
        inverted images (``strength`` is the share of samples affected, or the noise level)."""
        if self.drift is None or value_range is None:
            return samples
        kind, strength = self.drift
        lo, hi = value_range
        if kind == "noise":
            noise = self._rng.normal(0.0, strength * (hi - lo) / 4, samples.shape)
            return np.clip(samples + noise, lo, hi).astype(samples.dtype)
        chosen = self._rng.random(len(samples)) < strength
        out = samples.copy()
        if kind == "invert":
            out[chosen] = hi + lo - samples[chosen]
        else:
            out[chosen] = np.rot90(samples[chosen], axes=(-2, -1))
        return out

    def start_cpu_hog(self, workers: int, seconds: float) -> None:
        """Busy processes (not threads: they must not hold this process' GIL) that end
        by themselves after ``seconds`` even if nobody clears them."""
        if not 1 <= workers <= MAX_CPU_WORKERS:
            raise FaultError(f"workers must be between 1 and {MAX_CPU_WORKERS}")
        if not 0 < seconds <= MAX_SECONDS:
            raise FaultError(f"seconds must be in (0, {MAX_SECONDS:g}]")
        self.stop_cpu_hog()
        code = _SPIN.format(seconds=float(seconds))
        self._hogs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
                      for _ in range(workers)]
        self._hog_until = time.time() + seconds

    def stop_cpu_hog(self) -> None:
        for proc in self._hogs:
            proc.kill()
            proc.wait()
        self._hogs, self._hog_until = [], 0.0

    def clear(self) -> None:
        self.set_error_ratio(0.0)
        self.drift = None
        self.latency.clear()
        self.stop_cpu_hog()

    def describe(self) -> dict[str, Any]:
        hogs = [p for p in self._hogs if p.poll() is None]
        return {
            "error_ratio": self.error_ratio,
            "latency_seconds": dict(self.latency),
            "cpu_hog": {"workers": len(hogs), "until": self._hog_until} if hogs else None,
            "drift": {"kind": self.drift[0], "strength": self.drift[1]} if self.drift else None,
        }
