"""How fast each tier goes and how much memory it takes, measured where it runs.

``tierflow calibrate`` runs two small probe jobs through each available tier (the same
path as any job: plan, read, transform, write a Delta table): a scan with a filter and a
grouped aggregation, and a join with a grouped aggregation, each at two input sizes. From
the times and the peak resident memory of the processes doing the work it fits, per tier,

- ``startup_s``: starting the engine (a Spark session, a LocalCluster); 0 for Polars;
- ``fixed_s``: what every job costs whatever its size (planning, scheduling, the commit);
- ``core_s_per_gib``: core-seconds per GiB of estimated input (so more cores, less time);
- ``memory_base`` and ``memory_per_gib``: the memory of one worker before any data, and
  what a GiB of input adds to its peak.

A calibration is stored per place, as JSON under ``planner.calibration_dir``: one file for
this machine (named by host, cores and memory) and one per cluster address. Without one,
the planner uses the built-in costs below, measured on a 2-core, 24 GiB machine; the plan
says which it used.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.config.jobs import EngineName
from tierflow.jobs.resources import GiB, Place

if TYPE_CHECKING:
    from tierflow.engines.base import EngineOptions
    from tierflow.project import Project

ENGINES: tuple[EngineName, ...] = ("single", "dask", "spark")


@dataclass(frozen=True)
class TierCost:
    """One tier's measured costs at one place (see the module's description)."""

    startup_s: float
    fixed_s: float
    core_s_per_gib: float
    memory_base: int
    memory_per_gib: float

    def seconds(self, input_bytes: int, cores: int, *, started: bool = False) -> float:
        """Predicted wall time of a job over ``input_bytes`` on ``cores`` cores."""
        work = self.core_s_per_gib * input_bytes / GiB / max(1, cores)
        return (0.0 if started else self.startup_s) + self.fixed_s + work

    def peak(self, input_bytes: int, workers: int) -> int:
        """Predicted peak memory of one worker when ``workers`` share the input."""
        return int(self.memory_base + self.memory_per_gib * input_bytes / GiB / max(1, workers))


#: Costs measured on a 2-core, 24 GiB machine (``tierflow calibrate``, November 2026),
#: used until this machine or cluster is calibrated. The single-node tier's memory per GiB
#: is not visible in the probes (Polars streams them in its buffers); a quarter is the
#: share its peak took of the estimated input on TPC-H at scale factor 30 or less.
DEFAULT_COSTS: dict[EngineName, TierCost] = {
    "single": TierCost(0.5, 0.23, 3.4, 700 * 2**20, 0.25 * GiB),
    "dask": TierCost(1.5, 0.2, 21.5, 260 * 2**20, 1.45 * GiB),
    "spark": TierCost(8.5, 3.1, 17.1, 800 * 2**20, 0.8 * GiB),
}


@dataclass(frozen=True)
class Calibration:
    """The measured costs of the tiers at one place."""

    place: str
    costs: dict[EngineName, TierCost]
    measured_at: str = ""
    source: str = "built-in defaults (run `tierflow calibrate`)"
    raw: dict[str, Any] = field(default_factory=dict)

    def cost(self, engine: EngineName) -> tuple[TierCost, bool]:
        """``(cost, measured)``: this place's measurement, else the built-in default."""
        if engine in self.costs:
            return self.costs[engine], True
        return DEFAULT_COSTS[engine], False


def place_key(place: Place) -> str:
    """The file name a place's calibration is stored under.

    A cluster by its address; this machine by its host name, cores and physical memory
    (not the memory a setting allows: a budget changes what fits, not how fast it goes).
    """
    import os

    if place.address:
        return "cluster-" + re.sub(r"[^A-Za-z0-9.-]+", "_", place.address).strip("_")
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname())
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"machine-{host}-{os.cpu_count()}c-{round(physical / GiB)}g"


def load(folder: Path, place: Place) -> Calibration:
    """The stored calibration of ``place``, or one holding no measurement."""
    path = folder / f"{place_key(place)}.json"
    if not path.is_file():
        return Calibration(place_key(place), {})
    doc = json.loads(path.read_text())
    costs = {name: TierCost(**values) for name, values in doc.get("costs", {}).items()}
    return Calibration(
        place_key(place), costs, doc.get("measured_at", ""), str(path), doc.get("raw", {})
    )


def save(folder: Path, calibration: Calibration) -> Path:
    """Write (or update, engine by engine) a place's calibration; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{calibration.place}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    costs = {**old.get("costs", {}), **{k: asdict(v) for k, v in calibration.costs.items()}}
    raw = {**old.get("raw", {}), **calibration.raw}
    doc = {"place": calibration.place, "measured_at": calibration.measured_at, "costs": costs,
           "raw": raw}  # fmt: skip
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# --- measuring ------------------------------------------------------------------------


class PeakMemory:
    """Samples the resident memory of process trees in the background.

    ``roots`` gives the processes whose trees count (default: this process): the tree of
    this process holds the Spark JVM and a LocalCluster's workers it started.
    """

    def __init__(self, roots: Callable[[], list[int]] | None = None, every: float = 0.05) -> None:
        import os

        self.roots = roots or (lambda: [os.getpid()])
        self.every = every
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def tree_rss(roots: list[int] | None = None) -> int:
        """Resident bytes of the ``roots`` (default: this process) and their descendants."""
        import os

        page = os.sysconf("SC_PAGE_SIZE")
        parents: dict[int, int] = {}
        resident: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                statm = (entry / "statm").read_text().split()
            except OSError:  # gone meanwhile
                continue
            fields = stat.rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
            resident[int(entry.name)] = int(statm[1]) * page
        tree = set(roots or [os.getpid()])
        frontier = list(tree)
        while frontier:
            pid = frontier.pop()
            children = [c for c, p in parents.items() if p == pid and c not in tree]
            tree.update(children)
            frontier.extend(children)
        return sum(resident.get(pid, 0) for pid in tree)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.tree_rss(self.roots()))

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.tree_rss(self.roots())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.tree_rss(self.roots()))


#: Rows per probe file and per row group: fixed, so that a larger probe has more files
#: (as a larger table does), not larger buffers per file.
_FILE_ROWS = 1_000_000
_GROUP_ROWS = 250_000


def _probe_data(folder: Path, rows: int, seed: int = 11) -> Path:
    """A fact table of ``rows`` rows in files of a million and a dimension of ``rows // 8`` keys."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = folder / f"rows-{rows}"
    if (data / "_done").is_file():
        return data
    rng = np.random.default_rng(seed)
    keys = max(1, rows // 8)
    (data / "fact").mkdir(parents=True, exist_ok=True)
    (data / "dim").mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, rows, _FILE_ROWS)):
        n = min(_FILE_ROWS, rows - start)
        days = rng.integers(0, 3650, n).astype("int32")
        table = pa.table({
            "key": rng.integers(0, keys, n), "price": rng.random(n) * 1000,
            "discount": rng.random(n) / 10, "quantity": rng.integers(1, 50, n).astype("float64"),
            "flag": pa.array(np.array(["A", "N", "R", "X"])[rng.integers(0, 4, n)]),
            "day": pa.array(days, pa.int32()).cast(pa.date32()),
        })  # fmt: skip
        pq.write_table(table, data / "fact" / f"part-{part}.parquet", row_group_size=_GROUP_ROWS)
    labels = pa.array(np.array([f"segment-{i:02d}" for i in range(16)])[rng.integers(0, 16, keys)])
    pq.write_table(pa.table({"dkey": np.arange(keys), "segment": labels}),
                   data / "dim" / "d.parquet", row_group_size=_GROUP_ROWS)  # fmt: skip
    (data / "_done").write_text("ok\n")
    return data


def _probe_jobs(data: Path, out: Path) -> list[Any]:
    from tierflow.config.jobs import JobConfig

    fact = {"format": "parquet", "path": str(data / "fact")}
    dim = {"format": "parquet", "path": str(data / "dim")}
    return [
        JobConfig.model_validate({
            "name": "calibrate_aggregate", "sources": {"fact": fact},
            "transform": {"function": "_tierflow_probe_aggregate"},
            "sink": {"format": "delta", "path": str(out / "aggregate"), "mode": "overwrite"},
        }),
        JobConfig.model_validate({
            "name": "calibrate_join", "sources": {"fact": fact, "dim": dim},
            "transform": {"function": "_tierflow_probe_join"},
            "sink": {"format": "delta", "path": str(out / "join"), "mode": "overwrite"},
        }),
    ]  # fmt: skip


def _register_probes() -> None:
    from datetime import date

    import narwhals as nw

    from tierflow.jobs.registry import transform

    def aggregate(fact: nw.LazyFrame[Any]) -> nw.LazyFrame[Any]:
        volume = nw.col("price") * (1 - nw.col("discount"))
        return (
            fact.filter(nw.col("day") <= date(1978, 1, 1))
            .with_columns(volume.alias("volume"))
            .group_by("flag")
            .agg(nw.col("volume").sum(), nw.col("quantity").mean(), nw.len().alias("rows"))
        )

    def join(fact: nw.LazyFrame[Any], dim: nw.LazyFrame[Any]) -> nw.LazyFrame[Any]:
        return (
            fact.select("key", (nw.col("price") * nw.col("quantity")).alias("amount"))
            .join(dim, left_on="key", right_on="dkey")
            .group_by("segment")
            .agg(nw.col("amount").sum())
        )

    aggregate.__name__ = "_tierflow_probe_aggregate"
    join.__name__ = "_tierflow_probe_join"
    for fn in (aggregate, join):
        try:
            transform(fn)
        except ValueError:  # registered by an earlier calibration in this process
            pass


@contextmanager
def _quiet() -> Iterator[None]:
    import logging

    level = logging.getLogger("distributed").level
    logging.getLogger("distributed").setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger("distributed").setLevel(level)


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of y over x (slope >= 0, intercept >= 0)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    slope = max(slope, 0.0)
    return max(my - slope * mx, 0.0), slope


def measure(
    project: Project,
    engine: EngineName,
    place: Place,
    options: EngineOptions,
    work: Path,
    *,
    rows: tuple[int, ...] = (2_000_000, 12_000_000),
    say: Callable[[str], None] = print,
) -> tuple[TierCost, dict[str, Any]]:
    """Run the probes through ``engine`` at ``place``; returns its fitted cost and raw data.

    The single-node tier runs each probe in a fresh process, whose high-water mark is its
    memory (one process's allocator keeps what an earlier probe freed). Dask and Spark run
    in one engine started here (its start-up is measured once); their memory is sampled
    over this process's tree (the LocalCluster's workers, the JVM). Each probe runs once
    at the largest size first, untimed, to warm caches and JITs.
    """
    from tierflow.engines import create_engine

    _register_probes()
    datasets = [(n, _probe_data(work / "data", n)) for n in sorted(rows)]
    with _quiet():
        began = time.perf_counter()
        with PeakMemory() as idle:
            runtime = None if engine == "single" else create_engine(engine, options)
            time.sleep(0.5)  # let the workers settle before reading their memory
        startup = time.perf_counter() - began
        runs: list[dict[str, Any]] = []
        try:
            if runtime is not None:
                options = _with_session(options, runtime)
            largest = datasets[-1][1]
            for job in _probe_jobs(largest, work / "out" / engine):
                _probe(project, job, engine, options)
            for n, data in datasets:
                for job in _probe_jobs(data, work / "out" / engine):
                    # The faster of two runs: a JIT or a cache warming up is not the cost.
                    measured = min(
                        (
                            _probe_in_process(data, job.name, work)
                            if engine == "single"
                            else _probe(project, job, engine, options)
                            for _ in range(2)
                        ),
                        key=lambda m: float(m["seconds"]),
                    )
                    run = {"job": job.name, "rows": n, **measured}
                    runs.append(run)
                    say(f"  {engine}: {job.name} {n:,} rows {run['seconds']:.2f}s, "
                        f"peak {run['peak_bytes'] / 2**20:.0f} MiB")  # fmt: skip
        finally:
            if runtime is not None:
                runtime.close()
    return _fitted(engine, place, startup, idle.peak, runs)


def _fitted(
    engine: EngineName, place: Place, startup: float, idle: int, runs: list[dict[str, Any]]
) -> tuple[TierCost, dict[str, Any]]:
    """The cost fitted to the runs (a fit that comes out flat or negative keeps the default)."""
    default = DEFAULT_COSTS[engine]
    workers = max(1, place.workers)
    fixed, per_byte = _fit([(r["input_bytes"], r["seconds"]) for r in runs])
    core_s_per_gib = per_byte * GiB * max(1, place.cores)
    if core_s_per_gib <= 0:
        core_s_per_gib = default.core_s_per_gib
    if engine == "single":
        # Fresh processes: the intercept is the process itself, the slope what data adds.
        base, mem_per_byte = _fit([(r["input_bytes"], r["peak_bytes"]) for r in runs])
    else:
        # Memory over this process's tree (the JVM, the Dask workers), per worker: an even
        # share of the idle memory and what a worker's share of the input adds.
        base = idle / workers
        _, mem_per_byte = _fit(
            [(r["input_bytes"], max(0, r["peak_bytes"] - r["start_bytes"])) for r in runs]
        )
    per_gib = mem_per_byte * GiB if mem_per_byte > 0 else default.memory_per_gib
    # A remote cluster's workers are not this machine's processes: their memory is not
    # measured from here, and the built-in figures stand in for it.
    cost = TierCost(
        startup_s=round(startup, 3),
        fixed_s=round(fixed, 4),
        core_s_per_gib=round(core_s_per_gib, 3),
        memory_base=default.memory_base if place.address else int(base),
        memory_per_gib=default.memory_per_gib if place.address else round(per_gib, 1),
    )
    return cost, {"startup_s": startup, "idle_bytes": idle, "runs": runs}


def _probe(
    project: Project, job: Any, engine: EngineName, options: EngineOptions
) -> dict[str, Any]:
    """One probe run in this process: its time, input estimate and the process tree's memory."""
    plan = project.plan(job, engine, options)
    with PeakMemory() as memory:
        began = time.perf_counter()
        record = project.run(job, engine=engine, options=options, echo=False)
        seconds = time.perf_counter() - began
    if record.status != "succeeded":
        raise RuntimeError(f"calibration probe {job.name} on {engine}: {record.error}")
    return {"seconds": seconds, "input_bytes": plan.total_in_memory_bytes,
            "peak_bytes": memory.peak, "start_bytes": memory.start}  # fmt: skip


def _probe_in_process(data: Path, job: str, work: Path) -> dict[str, Any]:
    """One single-node probe in a fresh Python process: its time and its high-water mark."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tierflow.jobs.calibration", str(data), str(work / "out"), job],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"calibration probe {job}: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _child(data: str, out: str, name: str) -> int:
    """``python -m tierflow.jobs.calibration DATA OUT JOB``: one probe on the single-node tier."""
    import resource
    import sys

    from tierflow.project import Project

    _register_probes()
    project = Project.load()
    (job,) = [j for j in _probe_jobs(Path(data), Path(out) / "single-child") if j.name == name]
    plan = project.plan(job, "single")
    began = time.perf_counter()
    record = project.run(job, engine="single", echo=False)
    seconds = time.perf_counter() - began
    if record.status != "succeeded":
        raise RuntimeError(record.error)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"seconds": seconds, "input_bytes": plan.total_in_memory_bytes,
              "peak_bytes": peak, "start_bytes": 0}  # fmt: skip
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _with_session(options: EngineOptions, runtime: Any) -> EngineOptions:
    """Options that make later runs reuse the engine just started (its session, its cluster)."""
    from dataclasses import replace

    if runtime.name == "spark":
        return replace(options, spark_session=runtime.spark)
    if runtime.name == "dask" and options.dask_scheduler is None:
        return replace(options, dask_scheduler=runtime.client.scheduler.address)
    return options


def now() -> str:
    """The time of a calibration (UTC, ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    import sys

    sys.exit(_child(*sys.argv[1:4]))
