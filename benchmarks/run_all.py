"""``make bench``: every benchmark, one after the other, then the summary with targets and plots.

Each runs as its own process (as ``make bench-<name>`` would), writing into today's
``benchmarks/results/<date>/``; a failing benchmark is reported and the rest still run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

#: (module, environment): the ETL benchmark is bench_scale at small scale factors.
BENCHMARKS = (
    ("bench_scale", {"TIERFLOW_BENCH_NAME": "etl", "TIERFLOW_BENCH_SCALES": "0.1,1",
                     "TIERFLOW_BENCH_QUERIES": "q1,q3"}),
    ("bench_delta", {}), ("bench_streaming", {}), ("bench_features", {}), ("bench_training", {}),
)  # fmt: skip


def main() -> int:
    failed = []
    began = time.monotonic()
    for name, env in BENCHMARKS:
        print(f"\n=== {name}", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False,
                              env=os.environ | env).returncode  # fmt: skip
        print(f"=== {name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    subprocess.run([sys.executable, "-m", "benchmarks.summary"], check=True)
    print(
        f"\nall benchmarks in {(time.monotonic() - began) / 60:.1f} min; failed: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
