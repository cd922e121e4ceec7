"""What each tier could run on: this machine, and the clusters the project names.

The planner weighs a job against real capacity, not rules of thumb:

- **this machine**: its cores and memory, lowered to a cgroup's limits when the process
  runs in one (a container, a systemd slice), and to ``planner.memory_gb`` /
  ``$TIERFLOW_MEMORY_GB`` when set;
- **a Dask scheduler**: its workers' threads and memory limits, asked from the scheduler;
- **a Spark master**: its alive workers' cores and memory, from the master's web UI JSON.

Asking a cluster that does not answer is not an error: the tier is then planned as
unreachable, and the plan says why.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

GiB = 1024**3
MEMORY_ENV = "TIERFLOW_MEMORY_GB"
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Place:
    """Where a tier would run: how many cores and how much memory it gets there."""

    label: str
    cores: int
    memory: int  # bytes, all workers together
    workers: int = 1
    #: A cluster's address (Dask scheduler, Spark master); None for this machine.
    address: str | None = None
    #: Why the tier cannot run there (a cluster that did not answer), else None.
    unreachable: str | None = None
    #: Where the numbers came from (for the plan's explanation).
    source: str = ""

    @property
    def memory_per_worker(self) -> int:
        """Memory of one worker (the unit a task's data must fit in)."""
        return self.memory // max(1, self.workers)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _levels(root: Path, path: str) -> list[Path]:
    """The cgroup folder of ``path`` under ``root`` and each parent up to ``root``."""
    folder = root / path.lstrip("/")
    return [level for level in (folder, *folder.parents) if root in (level, *level.parents)]


def _tighter(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None else min(current, value)


def cgroup_limits(
    root: Path = _CGROUP, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> tuple[int | None, float | None]:
    """``(memory bytes, cpus)`` this process's cgroups allow, None where unlimited.

    Reads cgroup v2 (``memory.max``, ``cpu.max``; mounted at ``root`` or, on a hybrid
    layout, ``root/unified``) and v1 (``memory.limit_in_bytes``, ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``, each controller under ``root/<controller>``). Every level up to
    the hierarchy's root counts, and the tightest limit wins.
    """
    memory: float | None = None
    cpus: float | None = None
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":  # v2: one unified hierarchy
            unified = root if (root / "cgroup.controllers").exists() else root / "unified"
            for level in _levels(unified, path):
                raw = _read(level / "memory.max")
                if raw and raw.isdigit():
                    memory = _tighter(memory, int(raw))
                quota = (_read(level / "cpu.max") or "max").split()
                if len(quota) == 2 and quota[0].isdigit():
                    cpus = _tighter(cpus, int(quota[0]) / int(quota[1]))
            continue
        kinds = controllers.split(",")
        if "memory" in kinds:
            for level in _levels(root / "memory", path):
                raw = _read(level / "memory.limit_in_bytes")
                # v1 says "no limit" with a huge number (2**63 - 1, page-aligned).
                if raw and raw.isdigit() and int(raw) < 2**60:
                    memory = _tighter(memory, int(raw))
        if "cpu" in kinds:
            folder = root / ("cpu,cpuacct" if "cpuacct" in kinds else "cpu")
            for level in _levels(folder if folder.exists() else root / "cpu", path):
                quota_us = _read(level / "cpu.cfs_quota_us")
                period_us = _read(level / "cpu.cfs_period_us")
                if quota_us and period_us and quota_us.isdigit() and int(quota_us) > 0:
                    cpus = _tighter(cpus, int(quota_us) / int(period_us))
    return (int(memory) if memory is not None else None), cpus


def this_machine(memory_gb: float | None = None) -> Place:
    """This machine's cores and memory, as its cgroup and the settings allow."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    limit, cpus = cgroup_limits()
    memory, source = physical, "physical memory"
    if limit is not None and limit < memory:
        memory, source = limit, "cgroup memory limit"
    from tierflow.settings import env_settings

    env = env_settings().memory_gb
    setting = env if env is not None else memory_gb
    if setting is not None:
        memory, source = int(setting * GiB), MEMORY_ENV if env is not None else "planner.memory_gb"
    if cpus is not None:
        cores = max(1, min(cores, int(cpus)))
    return Place("this machine", max(1, cores), memory, 1, None, None, source)


def dask_cluster(address: str, timeout: float = 10) -> Place:
    """The workers of the Dask scheduler at ``address`` (threads and memory limits).

    One ``identity`` call over the scheduler's RPC (with the TLS settings of Dask's
    configuration, as a client would use), not a whole client.
    """
    import asyncio

    async def identity() -> dict[str, Any]:
        from distributed.core import rpc
        from distributed.security import Security

        args = Security().get_connection_args("client")  # type: ignore[no-untyped-call]
        async with rpc(address, connection_args=args, timeout=timeout) as scheduler:  # type: ignore[no-untyped-call]
            return dict(await asyncio.wait_for(scheduler.identity(), timeout))

    try:
        workers = asyncio.run(identity()).get("workers", {})
    except Exception as exc:
        return Place(f"dask {address}", 0, 0, 0, address, f"{type(exc).__name__}: {exc}")
    if not workers:
        return Place(f"dask {address}", 0, 0, 0, address, "the scheduler has no workers")
    cores = sum(int(w.get("nthreads", 1)) for w in workers.values())
    memory = sum(int(w.get("memory_limit") or 0) for w in workers.values())
    return Place(
        f"dask {address}", cores, memory, len(workers), address, None, "the scheduler's workers"
    )


def spark_ui(master: str, ui: str | None = None) -> str:
    """The master's web UI address: given, or the master's host on port 8080."""
    if ui:
        return ui.rstrip("/")
    host = urlsplit(master).hostname or "127.0.0.1"
    return f"http://{host}:8080"


def spark_cluster(master: str, ui: str | None = None, timeout: float = 5) -> Place:
    """The alive workers of the Spark standalone master ``master`` (from its UI's JSON)."""
    url = f"{spark_ui(master, ui)}/json/"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            state = json.load(response)
    except (OSError, ValueError) as exc:
        return Place(f"spark {master}", 0, 0, 0, master, f"{url}: {exc}")
    alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
    if not alive:
        return Place(f"spark {master}", 0, 0, 0, master, "the master has no alive workers")
    cores = sum(int(w.get("cores", 0)) for w in alive)
    memory = sum(int(w.get("memory", 0)) for w in alive) * 1024**2  # the UI reports MiB
    return Place(f"spark {master}", cores, memory, len(alive), master, None, f"{url} workers")
