"""TPC-H at scale through the planner: every tier against the same work written by hand.

``make bench-scale`` generates TPC-H at scale factors 1, 10 and 30 with ``tpchgen-cli``
(cached under ``.local/bench-data/``; the free disk is checked first) and runs six queries
(q1, q3, q5, q6, q9, q18: ``conf/jobs/tpch_*.yaml``) as tierflow jobs on each tier, next
to hand-written Polars, DuckDB, Dask, PySpark and pandas (``benchmarks/tpch_peers.py``).
``make bench-etl`` is the same at scale factors 0.1 and 1 (part of ``make bench``).

- Every output is read back and compared row for row with DuckDB's answer.
- Single-process runners (tierflow's single-node tier, Polars, DuckDB, pandas) each run in
  a fresh process, timed inside it; their peak memory is that process's high-water mark.
  Dask runs (tierflow's tier and the peer) run in a fresh client process against one
  shared LocalCluster (2 workers); their memory is the workers' peak plus the client's.
  Spark runs (tier and peer) share one ``local[*]`` session; their memory is the JVM's
  peak. Engines are started once, untimed; each run's libraries (the peer's, or tierflow's
  own modules) are imported before its clock starts.
- pandas runs only where the inputs fit in memory three times over (it holds whole
  columns); elsewhere it is recorded as unable to hold the data, not run.
- The planner's pick is what ``tierflow plan`` chooses for the job on this machine; its
  time is the measured time of that tier, compared with the fastest runner of all.
- Rounds: ``TIERFLOW_BENCH_ROUNDS`` (default 3, and 1 at scale factors above 10); rounds
  alternate tierflow and the peers; medians are reported.
- A run that is stopped keeps what it finished: each query's measurements at each scale
  factor are added to ``.local/bench-out/<name>-partial.json`` as they complete, with a
  digest of the code (tierflow, the benchmarks, the jobs and settings). Started again with
  the same code and settings, the benchmark continues from there; the results say in how
  many sittings it ran. Changed code starts over. ``tierflow.train`` and the other
  benchmarks are not part of the digest: no run imports them (each run checks, and
  fails if one imported training). To continue a run on
  another machine or checkout, carry the file as ``benchmarks/results/partial/<name>-
  partial.json``; it is read when ``.local`` holds none, and removed when the run ends.
- ``touch .local/bench-out/PAUSE`` holds the benchmark before its next run (to use the
  machine for something else without disturbing a measurement); removing it goes on. Time
  held is not counted in the run's minutes.

Environment: ``TIERFLOW_BENCH_SCALES`` (``1,10,30``), ``TIERFLOW_BENCH_QUERIES`` (all six),
``TIERFLOW_BENCH_RUNNERS`` (all), ``TIERFLOW_BENCH_NAME`` (the results' name, ``scale``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Results, median, run_measured

QUERIES = tuple(os.environ.get("TIERFLOW_BENCH_QUERIES", "q1,q3,q5,q6,q9,q18").split(","))
SCALES = tuple(float(s) for s in os.environ.get("TIERFLOW_BENCH_SCALES", "1,10,30").split(","))
NAME = os.environ.get("TIERFLOW_BENCH_NAME", "scale")
#: In the order of a round: each tier next to its peer.
ALL_RUNNERS = ("tierflow-single", "polars", "duckdb", "tierflow-dask", "dask", "tierflow-spark",
               "pyspark", "pandas")  # fmt: skip
RUNNERS = tuple(os.environ.get("TIERFLOW_BENCH_RUNNERS", ",".join(ALL_RUNNERS)).split(","))
#: Each tier's hand-written counterpart.
NATIVE = {"single": "polars", "dask": "dask", "spark": "pyspark"}
#: A run is stopped after this long (a hung run must not stop the benchmark).
TIMEOUT_S = 2400
#: Code no TPC-H run imports (checked in every run), left out of the code digest.
NOT_MEASURED = "tierflow.train"
#: The benchmark's own modules (the other benchmarks are not in its digest).
MEASURING = ("bench_scale.py", "tpch_peers.py", "harness.py", "__init__.py")
SOURCES = (".py", ".yaml", ".yml", ".sql")
GiB = 1024**3


def rounds(scale: float) -> int:
    """Medians of 3 up to SF 10; one round above (each SF 30 run takes minutes)."""
    if os.environ.get("TIERFLOW_BENCH_ROUNDS"):
        return int(os.environ["TIERFLOW_BENCH_ROUNDS"])
    return 3 if scale <= 10 else 1


def bench_root() -> Path:
    """Where the generated data lives."""
    return ROOT / ".local" / "bench-data"


# --- one run, in a process of its own ---------------------------------------------------


def _tierflow(engine: str, query: str, data: Path, out: Path, options: Any) -> None:
    from tierflow.project import Project

    project = Project.load(data_dir=str(data))
    job = project.load_job(f"tpch_{query}")
    job = job.model_copy(update={"sink": job.sink.model_copy(update={"path": str(out)})})
    record = project.run(job, engine=engine, options=options, echo=False)  # type: ignore[arg-type]
    if record.status != "succeeded":
        raise RuntimeError(record.error)


def run_one(runner: str, query: str, data: Path, out: Path, scheduler: str | None) -> float:
    """Run ``runner`` once in this process; returns its seconds (engine start-up excluded)."""
    from benchmarks import tpch_peers
    from tierflow.engines.base import EngineOptions

    tables = data / "tpch"
    shutil.rmtree(out, ignore_errors=True)
    spark = None
    if runner in ("tierflow-spark", "pyspark"):
        from tierflow.spark import get_spark

        # Spark's own default of 200 shuffle partitions, as a hand-written job has it
        # (tierflow's Spark tier sizes its shuffles per job, and restores the session's).
        spark = get_spark("tierflow-bench-scale", master="local[*]",
                          conf={"spark.sql.shuffle.partitions": "200"})  # fmt: skip
    try:
        began = time.perf_counter()
        if runner == "tierflow-spark":
            _tierflow("spark", query, data, out, EngineOptions(spark_session=spark))
        elif runner == "pyspark":
            tpch_peers.pyspark(query, tables, out, spark)
        elif runner == "tierflow-dask":
            _tierflow("dask", query, data, out, EngineOptions(dask_scheduler=scheduler))
        elif runner == "dask":
            from distributed import Client

            with Client(scheduler) as client:
                tpch_peers.dask(query, tables, out, client)
        elif runner == "tierflow-single":
            _tierflow("single", query, data, out, None)
        else:
            getattr(tpch_peers, runner)(query, tables, out)
        return time.perf_counter() - began
    finally:
        if spark is not None:
            spark.stop()


def _preload(runner: str) -> None:
    """Import the libraries a runner uses before its clock starts: loading pandas, Dask or
    tierflow is not the query's work, for tierflow or for the peer. (Profiled on SF 0.1:
    tierflow's and pydantic's imports were two thirds of a fresh process's first job.)"""
    import importlib

    modules = ["pyarrow", "pyarrow.dataset", "pyarrow.parquet", "pandas", "polars", "deltalake",
               "duckdb", "narwhals"]  # fmt: skip
    if runner.startswith("tierflow-"):
        tier = runner.removeprefix("tierflow-")
        engine = "polars_engine" if tier == "single" else f"{tier}_engine"
        # The job runner, the project's transforms and Narwhals' backend for the tier too:
        # the peers' query code (tpch_peers) and libraries are loaded before their clock.
        backend = {"single": "_polars", "dask": "_dask", "spark": "_spark_like"}[tier]
        modules += ["tierflow.project", "tierflow.io.arrow_sinks", f"tierflow.engines.{engine}",
                    "tierflow.jobs.runner", "narwhals._namespace", f"narwhals.{backend}.dataframe",
                    f"narwhals.{backend}.namespace"]  # fmt: skip
        modules += [f"jobs.transforms.{path.stem}"
                    for path in sorted((ROOT / "jobs" / "transforms").glob("[!_]*.py"))]  # fmt: skip
    if "dask" in runner:
        modules += ["dask.dataframe", "distributed"]
    if "spark" in runner:
        modules += ["pyspark.sql", "delta.tables"]
    for name in modules:
        importlib.import_module(name)


def child_main(argv: list[str]) -> int:
    """``python -m benchmarks.bench_scale one RUNNER QUERY DATA OUT [SCHEDULER]``."""
    runner, query, data, out = argv[:4]
    scheduler = argv[4] if len(argv) > 4 else None
    _preload(runner)
    seconds = run_one(runner, query, Path(data), Path(out), scheduler)
    # The code digest leaves training out; a run that used it would be kept under the
    # wrong digest.
    strays = sorted(name for name in sys.modules if name.startswith(NOT_MEASURED))
    if strays:
        raise RuntimeError(f"a TPC-H run imported {strays}, outside the code digest")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_bytes": peak}), flush=True)
    return 0


# --- the whole benchmark ----------------------------------------------------------------


class Bench:
    """The shared Dask cluster, and one run of any runner in a process of its own."""

    def __init__(self, pause: Path) -> None:
        from distributed import Client, LocalCluster

        self.pause, self.held_s = pause, 0.0

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                    dashboard_address=None, processes=True)  # fmt: skip
        self.client = Client(self.cluster)
        self.workers = list(self.client.run(os.getpid).values())

    def close(self) -> None:
        self.client.close()
        self.cluster.close()

    def run(self, runner: str, query: str, data: Path, out: Path) -> dict[str, Any]:
        """One run: ``{"seconds", "peak_bytes"}``, or ``{"error"}``.

        The peak is the run's process tree (with Spark, its JVM) at its highest, plus the
        Dask workers' for a Dask run; sampled every 0.2 s, and never below the process's
        own high-water mark.
        """
        if self.pause.exists():
            print(f"  held: {self.pause} exists", flush=True)
            began = time.monotonic()
            while self.pause.exists():
                time.sleep(2)
            self.held_s += time.monotonic() - began
        argv = [sys.executable, "-m", "benchmarks.bench_scale", "one", runner, query,
                str(data), str(out)]  # fmt: skip
        dask = runner in ("tierflow-dask", "dask")
        if dask:
            argv.append(self.cluster.scheduler_address)
        return run_measured(argv, workers=self.workers if dask else [], timeout_s=TIMEOUT_S)


def portable(plan: Any) -> dict[str, Any]:
    """The plan as recorded in the results: source locations relative to the data root,
    so that a results file names no folder of the machine it ran on."""
    doc: dict[str, Any] = plan.as_dict()
    root = str(bench_root()) + "/"
    for source in doc.get("sources", []):
        source["location"] = str(source["location"]).replace(root, "")
    return doc


def pandas_capacity(plan: Any) -> str | None:
    """Why pandas cannot hold the query's inputs here, or None when it can."""
    need = 3 * plan.total_in_memory_bytes
    have = 0.5 * plan.memory_bytes
    if need <= have:
        return None
    return (f"cannot hold the data: ~{need / GiB:.1f} GiB needed (3 x the inputs), "
            f"{have / GiB:.1f} GiB is half of this machine's memory")  # fmt: skip


def read_back(path: Path) -> list[tuple[Any, ...]]:
    """A Delta table's rows, columns by name, sorted."""
    from deltalake import DeltaTable

    table = DeltaTable(str(path)).to_pyarrow_table()
    names = sorted(table.column_names)
    columns = [table[n].to_pylist() for n in names]
    return sorted(zip(*columns, strict=True), key=lambda r: tuple(str(v) for v in r))


def same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    """Equal rows; floats to 1e-9 relative (sums in another order differ in the last bits)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, float) or isinstance(v, float):
                if not math.isclose(float(u), float(v), rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif str(u) != str(v):
                return False
    return True


def code_digest() -> str:
    """A digest of what the measurements depend on: tierflow's code (but training), this
    benchmark's modules, the project's jobs and settings, and the environment settings."""
    import hashlib

    digest = hashlib.sha256()
    skip = ROOT / "lib" / Path(*NOT_MEASURED.split("."))
    paths = [ROOT / "benchmarks" / name for name in MEASURING]
    for folder in ("lib/tierflow", "jobs", "conf"):
        paths += sorted((ROOT / folder).rglob("*"))
    for path in paths:
        if path.is_file() and not path.is_relative_to(skip) and path.suffix in SOURCES:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    settings = [SCALES, QUERIES, RUNNERS, [rounds(s) for s in SCALES], TIMEOUT_S]
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()


class Partial:
    """The finished part of a run, kept on disk as it grows (see the module doc)."""

    def __init__(self, path: Path, carried: Path | None = None) -> None:
        self.path, self.carried, self.code = path, carried, code_digest()
        self.raw: dict[str, Any] = {}
        self.sittings: list[dict[str, Any]] = []
        source = path if path.is_file() or carried is None else carried
        if source.is_file():
            kept = json.loads(source.read_text())
            if kept.get("code") == self.code:
                self.raw, self.sittings = kept["raw"], kept["sittings"]
        self.sittings.append({"began": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "minutes": 0.0})  # fmt: skip
        self._began, self._held_s = time.monotonic(), 0.0

    def add(self, key: str, raw: dict[str, Any], held_s: float = 0.0) -> None:
        """Keep one finished query at one scale factor (``held_s``: paused so far)."""
        self.raw[key] = raw
        self._held_s = held_s
        self.sittings[-1]["minutes"] = self._sitting_minutes()
        doc = {"code": self.code, "raw": self.raw, "sittings": self.sittings}
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(doc, default=str))
        partial.replace(self.path)

    def _sitting_minutes(self) -> float:
        return round((time.monotonic() - self._began - self._held_s) / 60, 1)

    def finish(self) -> None:
        """The run is complete: nothing is left to continue."""
        for path in (self.path, self.carried):
            if path is not None:
                path.unlink(missing_ok=True)

    @property
    def minutes(self) -> float:
        """Minutes in all sittings so far, time held by the pause file left out."""
        self.sittings[-1]["minutes"] = self._sitting_minutes()
        return round(sum(s["minutes"] for s in self.sittings), 1)


def main() -> int:
    from tierflow.examples import tpch
    from tierflow.project import Project

    results = Results(NAME)
    work = ROOT / ".local" / "bench-out"
    work.mkdir(parents=True, exist_ok=True)
    kept = Partial(
        work / f"{NAME}-partial.json",
        carried=ROOT / "benchmarks" / "results" / "partial" / f"{NAME}-partial.json",
    )
    if kept.raw:
        print(f"continuing the run of this code from {kept.sittings[0]['began']}: "
              f"{len(kept.raw)} finished", flush=True)  # fmt: skip
    bench = Bench(work / "PAUSE")
    try:
        for scale in SCALES:
            data = tpch.generate(bench_root() / f"tpch-sf{scale:g}", scale).root
            project = Project.load(data_dir=str(data))
            for query in QUERIES:
                key = f"sf{scale:g}-{query}"
                if key in kept.raw:
                    results.raw[key] = kept.raw[key]
                    _rows(results, scale, query, kept.raw[key])
                    continue
                plan = project.plan(project.load_job(f"tpch_{query}"))
                raw: dict[str, Any] = {"planner": plan.recommended, "plan": portable(plan),
                                       "seconds": {}, "peak_bytes": {}, "errors": {},
                                       "skipped": {}}  # fmt: skip
                runners = [r for r in RUNNERS if not (r == "pandas" and pandas_capacity(plan))]
                if "pandas" in RUNNERS and "pandas" not in runners:
                    raw["skipped"]["pandas"] = pandas_capacity(plan)
                outputs: dict[str, Any] = {}
                for round_ in range(rounds(scale)):
                    for runner in runners:
                        out = work / f"{key}-{runner}"
                        got = bench.run(runner, query, data, out)
                        if "error" in got:
                            raw["errors"][runner] = got["error"]
                            print(f"  SF{scale:g} {query} {runner}: {got['error']}", flush=True)
                            continue
                        raw["seconds"].setdefault(runner, []).append(got["seconds"])
                        raw["peak_bytes"].setdefault(runner, []).append(got["peak_bytes"])
                        if round_ == 0:
                            outputs[runner] = read_back(out)
                        shutil.rmtree(out, ignore_errors=True)
                        print(f"  SF{scale:g} {query} round {round_ + 1} {runner}: "
                              f"{got['seconds']:.2f} s, peak {got['peak_bytes'] / GiB:.2f} GiB",
                              flush=True)  # fmt: skip
                reference = outputs.get("duckdb")
                raw["equal"] = {r: reference is not None and same(o, reference)
                                for r, o in outputs.items()}  # fmt: skip
                raw["rows"] = len(reference) if reference is not None else None
                results.raw[key] = raw
                kept.add(key, raw, held_s=bench.held_s)
                _rows(results, scale, query, raw)
    finally:
        bench.close()
    results.raw["_minutes"] = kept.minutes
    results.raw["_sittings"] = kept.sittings
    out = results.write()
    (out / f"{NAME}.md").write_text(markdown(results))
    (out / f"{NAME}.svg").write_text(chart(results))
    kept.finish()
    print(markdown(results))
    print(f"results in {out}")
    return 0


def _rows(results: Results, scale: float, query: str, raw: dict[str, Any]) -> None:
    """The table's rows for one query at one scale: each tier against its peer, the pick."""
    meds = {r: median(v) for r, v in raw["seconds"].items()}
    peaks = {r: max(v) for r, v in raw["peak_bytes"].items()}
    equal = raw["equal"]
    bench = f"TPC-H SF{scale:g} {query}"
    for tier, native in NATIVE.items():
        ours = f"tierflow-{tier}"
        if ours in meds and native in meds:
            results.add(benchmark=bench, tier=tier, tierflow_s=meds[ours], native=native,
                        native_s=meds[native], ratio=meds[ours] / meds[native],
                        tierflow_peak_gib=peaks[ours] / GiB, native_peak_gib=peaks[native] / GiB,
                        outputs_equal=equal.get(ours, False) and equal.get(native, False))  # fmt: skip
    for name in ("duckdb", "pandas"):
        if name in meds:
            results.add(benchmark=bench, tier="-", tierflow_s=None, native=name,
                        native_s=meds[name], ratio=None, tierflow_peak_gib=None,
                        native_peak_gib=peaks[name] / GiB,
                        outputs_equal=equal.get(name, False))  # fmt: skip
        elif name in raw["skipped"] or name in raw["errors"]:
            results.add(benchmark=bench, tier="-", tierflow_s=None, native=name, native_s=None,
                        ratio=None, tierflow_peak_gib=None, native_peak_gib=None,
                        outputs_equal=None,
                        note=raw["skipped"].get(name) or raw["errors"].get(name))  # fmt: skip
    picked = f"tierflow-{raw['planner']}"
    tiers = {r: t for r, t in meds.items() if r.startswith("tierflow-")}
    if picked in tiers:
        fastest = min(tiers, key=lambda r: tiers[r])
        overall = min(meds, key=lambda r: meds[r])
        results.add(benchmark=bench, tier=f"planner: {raw['planner']}", tierflow_s=meds[picked],
                    native=f"fastest tier: {fastest.removeprefix('tierflow-')}",
                    native_s=meds[fastest], ratio=meds[picked] / meds[fastest],
                    tierflow_peak_gib=peaks[picked] / GiB, native_peak_gib=peaks[fastest] / GiB,
                    outputs_equal=equal.get(picked, False) and equal.get(fastest, False),
                    note=f"fastest of all: {overall} {meds[overall]:.2f} s "
                         f"({meds[picked] / meds[overall]:.2f}x)")  # fmt: skip


def markdown(results: Results) -> str:
    """The results table, then per scale and query every runner's time and memory."""
    from benchmarks.harness import machine

    m = machine()
    lines = [results.markdown(), "",
             f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB; "
             f"{results.raw.get('_minutes')} min in all{_sittings(results)}.", "",
             "| run | " + " | ".join(RUNNERS) + " | planner's pick | outputs equal to DuckDB |",
             "|---|" + "---|" * (len(RUNNERS) + 2)]  # fmt: skip
    for key, raw in results.raw.items():
        if key.startswith("_"):
            continue
        cells = []
        for r in RUNNERS:
            if r in raw["seconds"]:
                cells.append(f"{median(raw['seconds'][r]):.2f} s / "
                             f"{max(raw['peak_bytes'][r]) / GiB:.1f} GiB")  # fmt: skip
            elif r in raw["skipped"]:
                cells.append("cannot hold the data")
            elif r in raw["errors"]:
                cells.append("failed: " + raw["errors"][r][:60])
            else:
                cells.append("-")
        equal = all(raw["equal"].values()) and bool(raw["equal"])
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {raw['planner']} | "
                     f"{'yes' if equal else 'NO: ' + ', '.join(k for k, v in raw['equal'].items() if not v)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _sittings(results: Results) -> str:
    """How the run was split, when it was stopped and continued with the same code."""
    sittings = results.raw.get("_sittings") or []
    if len(sittings) < 2:
        return ""
    parts = ", ".join(f"{s['began']} ({s['minutes']} min)" for s in sittings)
    return f", in {len(sittings)} sittings of the same code: {parts}"


def chart(results: Results, width: int = 860, height: int = 420) -> str:
    """Time against scale factor per runner (log-log), the planner's pick circled."""
    import html

    series: dict[str, dict[float, float]] = {}
    picks: list[tuple[float, float]] = []
    for key, raw in results.raw.items():
        if key.startswith("_"):
            continue
        scale = float(key.split("-")[0].removeprefix("sf"))
        for runner, values in raw["seconds"].items():
            bucket = series.setdefault(runner, {})
            bucket[scale] = bucket.get(scale, 0.0) + median(values)  # all queries summed
        picked = f"tierflow-{raw['planner']}"
        if picked in raw["seconds"]:
            picks.append((scale, median(raw["seconds"][picked])))
    pick_sums: dict[float, float] = {}
    for scale, seconds in picks:
        pick_sums[scale] = pick_sums.get(scale, 0.0) + seconds
    points = [v for s in series.values() for v in s.values()] + list(pick_sums.values())
    scales = sorted({s for v in series.values() for s in v})
    if not points or not scales:
        return "<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>"
    left, right, top, bottom = 70, 190, 40, 50
    lo_t, hi_t = math.log10(min(points) * 0.8), math.log10(max(points) * 1.25)
    lo_s, hi_s = math.log10(min(scales)), math.log10(max(scales))

    def x(scale: float) -> float:
        span = (hi_s - lo_s) or 1.0
        return left + (width - left - right) * (math.log10(scale) - lo_s) / span

    def y(seconds: float) -> float:
        return top + (height - top - bottom) * (1 - (math.log10(seconds) - lo_t) / (hi_t - lo_t))

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
              "#7f7f7f"]  # fmt: skip
    parts = ["<text x='10' y='22' font-size='14' font-weight='bold'>TPC-H q1, q3, q5, q6, q9, "
             "q18 summed: seconds by scale factor (log-log); the planner's pick circled</text>"]  # fmt: skip
    for exponent in range(math.floor(lo_t), math.ceil(hi_t) + 1):
        value = 10.0**exponent
        if lo_t <= exponent <= hi_t:
            parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y(value):.1f}' "
                         f"y2='{y(value):.1f}' stroke='#ddd'/><text x='{left - 6}' "
                         f"y='{y(value) + 4:.1f}' font-size='11' text-anchor='end'>{value:g} s</text>")  # fmt: skip
    for scale in scales:
        parts.append(f"<text x='{x(scale):.1f}' y='{height - bottom + 18}' font-size='11' "
                     f"text-anchor='middle'>SF {scale:g}</text>")  # fmt: skip
    for i, (runner, values) in enumerate(sorted(series.items())):
        color = colors[i % len(colors)]
        coords = " ".join(f"{x(s):.1f},{y(t):.1f}" for s, t in sorted(values.items()))
        dash = "" if runner.startswith("tierflow") else " stroke-dasharray='5 3'"
        parts.append(
            f"<polyline points='{coords}' fill='none' stroke='{color}' stroke-width='2'{dash}/>"
        )
        for s, t in values.items():
            parts.append(f"<circle cx='{x(s):.1f}' cy='{y(t):.1f}' r='3' fill='{color}'/>")
        parts.append(f"<text x='{width - right + 10}' y='{top + 16 * i + 10}' font-size='12' "
                     f"fill='{color}'>{html.escape(runner)}</text>")  # fmt: skip
    for scale, seconds in pick_sums.items():
        parts.append(f"<circle cx='{x(scale):.1f}' cy='{y(seconds):.1f}' r='8' fill='none' "
                     f"stroke='black' stroke-width='2'/>")  # fmt: skip
    parts.append(f"<text x='{width - right + 10}' y='{top + 16 * len(series) + 14}' "
                 "font-size='12'>o planner's pick</text>")  # fmt: skip
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
            f"<rect width='100%' height='100%' fill='white'/>{''.join(parts)}</svg>")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main())
