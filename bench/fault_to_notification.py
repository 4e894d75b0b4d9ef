"""Time from injecting errors to the alert notification, fast and default profiles side by side.

    python bench/fault_to_notification.py [--fast-runs 3] [--ratio 0.5]

Starts two full stacks (real Prometheus, Alertmanager, node_exporter, the service, an alert
inbox and 40 req/s of traffic each), injects the same error ratio into both at the same
moment, and measures until the `HighInferenceErrorRate` notification reaches each inbox; then
clears the fault and measures until the resolved notification arrives. The fast profile is
repeated --fast-runs times while the default profile's single run goes on.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from inferwatch.operate.chaos import ChaosClient
from inferwatch.operate.drills import wait_for_notification
from inferwatch.stack.addresses import StackPorts
from inferwatch.stack.profiles import DEFAULT, FAST, Profile
from inferwatch.stack.runner import Stack, StackOptions

ALERT = "HighInferenceErrorRate"


def drill(stack: Stack, ratio: float, timeout: float) -> tuple[float, float]:
    inbox = stack.opts.run_dir / "inbox.jsonl"
    chaos = ChaosClient.from_run_dir(stack.opts.run_dir)
    try:
        injected = time.time()
        chaos.errors(ratio)
        fired = wait_for_notification(inbox, ALERT, "firing", injected, timeout)
        cleared = time.time()
        chaos.clear()
        resolved = wait_for_notification(inbox, ALERT, "resolved", cleared, timeout)
    finally:
        chaos.clear()
        chaos.close()
    return fired["received_at"] - injected, resolved["received_at"] - cleared


def start(profile: Profile) -> Stack:
    stack = Stack(StackOptions(run_dir=Path(tempfile.mkdtemp(prefix=f"iw-{profile.name}-")),
                               profile=profile, ports=StackPorts.free(), traffic_rate=40))
    stack.start()
    return stack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fast-runs", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"fast": [], "default": []}
    stacks = [start(FAST), start(DEFAULT)]
    try:
        # A clean baseline first: the default profile needs a few 10 s scrapes.
        time.sleep(30)

        def run_default() -> None:
            results["default"].append(drill(stacks[1], args.ratio, 900))

        worker = threading.Thread(target=run_default)
        worker.start()
        for _ in range(args.fast_runs):
            results["fast"].append(drill(stacks[0], args.ratio, 120))
            time.sleep(20)  # let the 15 s rate window forget the previous drill
        worker.join()
    finally:
        for stack in stacks:
            stack.stop()
    print(f"error ratio injected: {args.ratio:g}, traffic 40 req/s")
    print(f"{'profile':>8} {'fault->firing (s)':>18} {'clear->resolved (s)':>20}")
    for name, runs in results.items():
        for fired, resolved in runs:
            print(f"{name:>8} {fired:>18.1f} {resolved:>20.1f}")
    fast = sorted(f for f, _ in results["fast"])
    default = results["default"][0][0]
    print(f"median fast {fast[len(fast) // 2]:.1f} s vs default {default:.1f} s: "
          f"{default / fast[len(fast) // 2]:.1f}x faster")


if __name__ == "__main__":
    main()
