"""What a second BLAS thread costs the digits model: OpenBLAS's default threads vs one.

    python bench/blas_threads.py [--rounds 5] [--calls 200] [--sizes 64,256]

Each round starts two fresh processes per batch size, one with OpenBLAS's default threads
and one limited to a single thread as `inferwatch serve` limits itself
(``prepare_serving_process``). Each makes --calls forward passes of the digits model on a
batch of that many samples, 2 ms apart (a service between model calls), and reports the CPU
time of the whole process (every thread, from ``time.process_time``) and the wall time per
call. Prints every round, then the medians and the ratio default/one thread. A v2 request
may carry up to 256 samples, and ``--max-batch-size`` may allow batches that large.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CHILD = "--child"


def child(limit: bool, size: int, calls: int) -> None:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from inferwatch.models.digits import DigitsModel

    if limit:
        threadpool_limits(1, user_api="blas")
    model = DigitsModel()
    batch = np.rint(np.random.default_rng(0).random((size, 64)) * 16).astype(np.float32)
    model.predict_proba(batch)  # warm-up
    cpu, wall = time.process_time(), 0.0
    for _ in range(calls):
        started = time.perf_counter()
        model.predict_proba(batch)
        wall += time.perf_counter() - started
        time.sleep(0.002)
    print(json.dumps({"cpu": (time.process_time() - cpu) / calls, "wall": wall / calls}))


def run(limit: bool, size: int, calls: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, CHILD, str(int(limit)), str(size),
                          str(calls)], capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    if sys.argv[1:2] == [CHILD]:
        child(sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--sizes", default="64,256")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[int, bool], list[dict[str, float]]] = {
        (s, limit): [] for s in sizes for limit in (False, True)}
    for r in range(args.rounds):
        for size in sizes:
            for limit in ((False, True) if r % 2 == 0 else (True, False)):
                results[size, limit].append(run(limit, size, args.calls))
        print(f"round {r + 1}: " + "; ".join(
            f"{size} samples {'one thread' if limit else 'default'} "
            f"{results[size, limit][-1]['cpu'] * 1e6:.0f} us CPU "
            f"{results[size, limit][-1]['wall'] * 1e6:.0f} us wall"
            for size in sizes for limit in (False, True)), flush=True)
    print(f"\nmedians of {args.rounds} rounds, {args.calls} calls 2 ms apart, CPU of every "
          "thread per call:")
    for size in sizes:
        default, one = ({k: statistics.median(x[k] for x in results[size, limit])
                         for k in ("cpu", "wall")} for limit in (False, True))
        per_round = statistics.median(a["cpu"] / b["cpu"] for a, b in zip(
            results[size, False], results[size, True], strict=True))
        print(f"{size:>4} samples: default threads {default['cpu'] * 1e6:.0f} us CPU "
              f"({default['wall'] * 1e6:.0f} us wall), one thread {one['cpu'] * 1e6:.0f} us "
              f"CPU ({one['wall'] * 1e6:.0f} us wall): {default['cpu'] / one['cpu']:.2f}x "
              f"the CPU, per round {per_round:.2f}x")


if __name__ == "__main__":
    main()
