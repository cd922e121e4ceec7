"""Profile one TPC-H run of ``bench_scale`` in this process, with cProfile.

``python -m benchmarks.profile_run RUNNER QUERY SCALE [TOP]``, for instance
``python -m benchmarks.profile_run tierflow-dask q18 1``: the libraries are imported
before the clock as in the benchmark, a Dask runner gets a LocalCluster of 2 workers
(started and warmed first), and the run's functions are printed by cumulative time.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time

from benchmarks import bench_scale


def main(argv: list[str]) -> int:
    runner, query, scale = argv[0], argv[1], argv[2]
    top = int(argv[3]) if len(argv) > 3 else 40
    data = bench_scale.bench_root() / f"tpch-sf{scale}"
    out = bench_scale.ROOT / ".local" / "bench-out" / f"profile-{runner}-{query}"
    bench_scale._preload(runner)
    scheduler = None
    if "dask" in runner:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address=None, processes=True)  # fmt: skip
        Client(cluster).submit(sum, [1, 2]).result()
        scheduler = cluster.scheduler_address
    profile = cProfile.Profile()
    began = time.perf_counter()
    profile.enable()
    seconds = bench_scale.run_one(runner, query, data, out, scheduler)
    profile.disable()
    print(f"{runner} {query} SF{scale}: {seconds:.2f} s (wall {time.perf_counter() - began:.2f})")
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(top)
    print(text.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
