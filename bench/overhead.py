"""What the instrumentation costs: `inferwatch serve` with metrics on vs off, side by side.

    python bench/overhead.py [--rounds 7] [--seconds 4] [--connections 32] [--cpu-rate 800]

Three services run throughout, each its own process on its own port:
- ``on``: the default (`inferwatch serve`: metrics and quality tracking),
- ``on-noq``: metrics without quality tracking (`--no-quality`),
- ``off``: `--no-metrics` (no middleware, no instrument call per request, no /metrics).

Each round drives every service in turn, the order rotating between rounds, with:
1. open-loop load from `inferwatch load` at --cpu-rate req/s for --seconds: CPU seconds
   (user + system from /proc, every thread) the service spent per successful request. Its
   inverse is the throughput of a dedicated core, and unlike wall-clock throughput it barely
   moves when other processes share the machine;
2. wrk, closed loop, --connections connections posting one OIP v2 digit for --seconds:
   requests/s, and the CPU per request under that saturation.
Prints every round, then the medians and the ratios to ``off`` (throughput: higher is better,
so on/off; from CPU: off's CPU per request / on's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from inferwatch.operate.load import LoadPlan, build_payloads, run_load_sync

SERVICES = {"on": [], "on-noq": ["--no-quality"], "off": ["--no-metrics"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "inferwatch", "serve", "--port", str(port),
                             *flags, "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ping").status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"service {flags} did not start")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_loop_cpu(pid: int, base: str, rate: float, seconds: float) -> float:
    before = cpu_seconds(pid)
    result = run_load_sync(LoadPlan(url=base, rate=rate, duration=seconds))
    time.sleep(0.6)  # the quality thread's last fold belongs to this round
    return (cpu_seconds(pid) - before) / max(result.ok, 1)


def wrk(pid: int, url: str, script: Path, connections: int,
        seconds: float) -> tuple[float, float]:
    before = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - before
    lines = out.splitlines()
    if any("Non-2xx" in line for line in lines):
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rate = next(float(line.split()[1]) for line in lines if line.startswith("Requests/sec:"))
    count = next(int(line.split()[0]) for line in lines if " requests in " in line)
    return rate, cpu / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cpu-rate", type=float, default=800)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    payload = build_payloads("v2")[0]
    script = Path(tempfile.mkdtemp(prefix="iw-bench-overhead-")) / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = '
                      f'"{payload.content_type}"\nwrk.body = [[{payload.body.decode()}]]\n')

    names = list(SERVICES)
    services = {name: start(flags) for name, flags in SERVICES.items()}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    rps: dict[str, list[float]] = {n: [] for n in names}
    wrk_cpu: dict[str, list[float]] = {n: [] for n in names}
    try:
        for proc, base in services.values():  # warm-up
            wrk(proc.pid, base + payload.path, script, args.connections, 2)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                proc, base = services[name]
                cpu[name].append(open_loop_cpu(proc.pid, base, args.cpu_rate, args.seconds))
                rate, per_request = wrk(proc.pid, base + payload.path, script,
                                        args.connections, args.seconds)
                rps[name].append(rate)
                wrk_cpu[name].append(per_request)
            print(f"round {r + 1} ({', '.join(order)}): " + "; ".join(
                f"{n} {cpu[n][-1] * 1e6:.0f} us/req at {args.cpu_rate:g}/s, "
                f"{rps[n][-1]:.0f} req/s ({wrk_cpu[n][-1] * 1e6:.0f} us/req)" for n in names),
                flush=True)
    finally:
        for proc, _ in services.values():
            proc.terminate()
            proc.wait(10)

    print(f"\nmedians of {args.rounds} rounds (open loop {args.cpu_rate:g} req/s; "
          f"wrk -c{args.connections}):")
    print(f"{'service':>8} {'CPU/req':>9} {'ratio':>6} {'req/s':>7} {'ratio':>6} "
          f"{'per-round':>9} {'wrk CPU/req':>11} {'ratio':>6}")
    off_cpu, off_rps = statistics.median(cpu["off"]), statistics.median(rps["off"])
    off_wrk = statistics.median(wrk_cpu["off"])
    for n in names:
        c, t, w = (statistics.median(x[n]) for x in (cpu, rps, wrk_cpu))
        per_round = statistics.median(a / b for a, b in zip(rps[n], rps["off"], strict=True))
        print(f"{n:>8} {c * 1e6:>6.0f} us {off_cpu / c:>6.3f} {t:>7.0f} {t / off_rps:>6.3f} "
              f"{per_round:>9.3f} {w * 1e6:>8.0f} us {off_wrk / w:>6.3f}")
    print("ratio = throughput relative to off: off's CPU per request / this one's; req/s / "
          "off's req/s; per-round = median of the rounds' req/s ratios")


if __name__ == "__main__":
    main()
