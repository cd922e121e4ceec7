"""What every benchmark shares: local services, timing, medians, result files.

Benchmarks run tierflow and its hand-written peer in the same process, alternating, on
the same data, several repetitions each; results are medians, and ratios are tierflow
over the peer (below 1 means tierflow is faster).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


@dataclass
class Results:
    """Rows of a results table, plus raw measurements, written as JSON and Markdown."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, **row: Any) -> None:
        """One line of the table."""
        self.rows.append(row)
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)

    def write(self, out_dir: Path | None = None) -> Path:
        """``benchmarks/results/<date>/<name>.{json,md}``."""
        out_dir = out_dir or ROOT / "benchmarks" / "results" / datetime.now(timezone.utc).strftime(
            "%Y-%m-%d"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"name": self.name, "machine": machine(), "rows": self.rows, "raw": self.raw,
                   "written_at": datetime.now(timezone.utc).isoformat()}  # fmt: skip
        (out_dir / f"{self.name}.json").write_text(json.dumps(payload, indent=2, default=str))
        (out_dir / f"{self.name}.md").write_text(self.markdown())
        return out_dir

    def finish(self) -> int:
        """Write the results, print the table and where it went; the exit status."""
        out = self.write()
        print(self.markdown())
        print(f"results in {out}")
        return 0

    def markdown(self) -> str:
        """The table in Markdown."""
        if not self.rows:
            return f"## {self.name}\n\n(no rows)\n"
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        lines = [f"## {self.name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


@contextmanager
def local_services(*names: str) -> Iterator[Any]:
    """Start the named services, empty, in a state folder of their own; stop them and
    delete their data afterwards (a store left full by an earlier run would first have
    to load it all back)."""
    from tierflow.config.services import load_services_config
    from tierflow.paths import ProjectPaths
    from tierflow.services.manager import ServiceManager

    os.environ.setdefault("TIERFLOW_STATE_DIR", str(ROOT / ".local" / "bench-services"))
    paths = ProjectPaths.discover()
    manager = ServiceManager(load_services_config(None, paths.settings("services.yaml")), paths)
    manager.down(list(names), purge=True)  # what a killed run left behind
    manager.up(list(names))
    try:
        yield manager
    finally:
        manager.down(list(names), purge=True)


#: A runner whose processes (its tree and the workers) use no CPU for this long is hung:
#: it is killed and reported so, instead of waiting for the whole timeout.
STALL_S = 300.0


def _cpu_seconds(roots: list[int]) -> float:
    """CPU time used so far by ``roots`` and their descendants (0 for those gone)."""
    import psutil

    total = 0.0
    for pid in roots:
        try:
            parent = psutil.Process(pid)
            for proc in [parent, *parent.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:  # gone meanwhile
            continue
    return total


class _Watchdog(threading.Thread):
    """Kills ``child`` when it and ``workers`` use no CPU for ``stall_s`` seconds."""

    def __init__(self, child: Any, workers: list[int], stall_s: float) -> None:
        super().__init__(daemon=True)
        self.child, self.workers, self.stall_s = child, workers, stall_s
        self.stalled = False
        self.done = threading.Event()

    def run(self) -> None:
        used, since = -1.0, time.monotonic()
        while not self.done.wait(5.0):
            now = _cpu_seconds([self.child.pid, *self.workers])
            if now - used >= 0.5:
                used, since = now, time.monotonic()
            elif time.monotonic() - since >= self.stall_s:
                self.stalled = True
                self.child.kill()
                return


def run_measured(
    argv: list[str], *, workers: list[int], timeout_s: float, stall_s: float = STALL_S
) -> dict[str, Any]:
    """Run ``argv`` (a runner that prints its result as a JSON line last) in a process of
    its own: the result, with ``peak_bytes`` the highest of the process tree's sampled
    peak and its own, plus the ``workers``' peak (a Dask cluster's) during the run.

    Returns ``{"error": why}`` when it fails, is killed, passes ``timeout_s``, or uses
    no CPU (nor do the workers) for ``stall_s``: hung.
    """
    import subprocess

    from tierflow.jobs.calibration import PeakMemory

    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)  # fmt: skip
    watchdog = _Watchdog(child, workers, stall_s)
    watchdog.start()
    with (
        PeakMemory(lambda: [child.pid], every=0.2) as tree,
        PeakMemory(lambda: workers, every=0.2) as pool,
    ):
        try:
            stdout, stderr = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return {"error": f"stopped after {timeout_s:.0f} s"}
        finally:
            watchdog.done.set()
    if watchdog.stalled:
        return {"error": f"hung: no CPU used for {stall_s:.0f} s, killed "
                         f"(peak {tree.peak / 2**30:.2f} GiB)"}  # fmt: skip
    if child.returncode != 0:
        killed = child.returncode < 0 or child.returncode == 137
        why = "killed (out of memory?)" if killed else stderr.strip()[-600:]
        return {"error": f"exit {child.returncode}: {why}"}
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["peak_bytes"] = max(result["peak_bytes"], tree.peak) + (pool.peak if workers else 0)
    return result
