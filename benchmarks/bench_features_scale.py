"""Feature views at scale: training sets, materialization and online reads.

``make bench-features-scale`` (``EVENTS``, ``LABELS``, ``ENTITIES`` override the sizes;
defaults 100 M events, 10 M labels, 10 M users; ``STAGES`` picks among ``training``,
``materialize``, ``online``; ``RUNNERS`` picks the training stage's runners) generates,
under ``.local/bench-data/``:

- ``events``: a clickstream of ``EVENTS`` rows over 30 days (``uid``, ``ts``,
  ``amount`` in whole currency units, ``purchase`` 0/1); 5% of the events belong to 20
  hot users, the rest are spread evenly over ``ENTITIES`` users;
- ``labels``: ``LABELS`` rows (``uid``, ``ts``), users drawn like the events';

as Delta tables, and

- **training**: builds the training set of four views (one with a 7-day window at a
  1-hour step) with ``tierflow.features.training.build`` on each tier, next to the same
  result written by hand in DuckDB (window SQL: each label's window read by a range
  frame over the user's tiles) and in Polars (rolling aggregates over the tile index).
  Every output is compared with DuckDB's, value by value; each run is a process of its
  own, timed, with the peak memory of its process tree (and the Dask workers');
- **materialize**: loads the ``weekly`` view's values as of the end into Redis and into
  SQLite from a tenth of the events and from all of them (the same users), each run a
  process of its own with its peak memory; a hand-written pipelined redis-py loader
  writes the same rows (only its loading timed, against tierflow's loading); a run
  into SQLite is SIGKILLed halfway, started again and compared with the uninterrupted
  one row by row;
- **online**: reads of 1 and 100 random users from the loaded Redis with
  ``get_online_features`` beside raw redis-py reading the same keys (pipelined HMGET),
  p50 and p99 per round, medians of rounds.

Results: ``benchmarks/results/<date>/features-scale.{json,md}``; a run of some stages
writes ``features-scale-<stages>.{json,md}``, and of some runners
``features-scale-training-<runners>.{json,md}``. A runner that fails, passes its time or
hangs (no CPU used by its processes for 5 minutes) is recorded with the reason.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Results, local_services, run_measured

EVENTS = int(float(os.environ.get("EVENTS", "100e6")))
LABELS = int(float(os.environ.get("LABELS", "10e6")))
ENTITIES = int(float(os.environ.get("ENTITIES", "10e6")))
HOT_USERS, HOT_SHARE = 20, 0.05
DAYS = 30
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR_US = 3_600_000_000
CHUNK = 5_000_000
TIMEOUT_S = float(os.environ.get("RUNNER_TIMEOUT_S", "10800"))  # per runner: 3 h
ALL_RUNNERS = ("tierflow-single", "tierflow-dask", "tierflow-spark", "duckdb", "polars")
#: Which of them run (``RUNNERS``, comma-separated; all by default): at 100 M events the
#: cluster tiers take about half an hour each on two cores.
RUNNERS = tuple(os.environ.get("RUNNERS", ",".join(ALL_RUNNERS)).split(","))
#: What runs: the training set on every runner; materialization of one view into Redis and
#: SQLite at a tenth of the events and at all of them, beside a pipelined redis-py loader,
#: and a SIGKILLed run resumed; online reads of the loaded store beside raw redis-py.
STAGES = tuple(os.environ.get("STAGES", "training,materialize,online").split(","))
MATERIALIZED = "weekly"
AS_OF = datetime(2026, 1, 31, tzinfo=timezone.utc)  # the day after the last events
READ_ROUNDS, READS = 5, 2000

_SOURCE = {
    "format": "delta",
    "path": "events",
    "columns": {
        "uid": {"type": "int64", "nullable": False},
        "ts": {"type": "timestamp"},
        "amount": {"type": "float64"},
        "purchase": {"type": "int64"},
    },
}
VIEWS: dict[str, dict[str, Any]] = {
    "activity": {
        "step": "1h",
        "features": [
            {"name": "events_1h", "agg": "count"},
            {"name": "amount_sum_24h", "agg": "sum", "column": "amount", "window": "24h"},
            {"name": "amount_mean_24h", "agg": "mean", "column": "amount", "window": "24h"},
        ],
    },
    "weekly": {
        "step": "1h",
        "features": [
            {"name": "events_7d", "agg": "count", "window": "7d"},
            {"name": "amount_max_7d", "agg": "max", "column": "amount", "window": "7d"},
            {"name": "amount_mean_7d", "agg": "mean", "column": "amount", "window": "7d"},
        ],
    },
    "recent": {
        "step": "1h",
        "features": [
            {"name": "last_amount", "agg": "last", "column": "amount", "window": "24h"},
            {"name": "amount_min_6h", "agg": "min", "column": "amount", "window": "6h"},
            {"name": "amount_std_24h", "agg": "stddev", "column": "amount", "window": "24h"},
        ],
    },
    "daily": {
        "step": "1d",
        "features": [
            {"name": "events_1d", "agg": "count", "window": "1d"},
            {"name": "purchases_7d", "agg": "sum", "column": "purchase", "window": "7d"},
        ],
    },
}


def view_configs() -> dict[str, Any]:
    from tierflow.config.features import FeatureViewConfig

    return {
        name: FeatureViewConfig.model_validate(
            {
                "name": name,
                "entities": ["uid"],
                "event_time": "ts",
                "ttl": "30d",
                "source": _SOURCE,
                **spec,
            }
        )
        for name, spec in VIEWS.items()
    }


def training_config() -> Any:
    from tierflow.config.features import TrainingSetConfig

    return TrainingSetConfig.model_validate({
        "name": "clicks", "timestamp": "ts", "path": "unused",
        "labels": {"format": "delta", "path": "labels", "columns": {
            "label_id": {"type": "int64"}, "uid": {"type": "int64"}, "ts": {"type": "timestamp"}}},
        "views": [{"view": name} for name in VIEWS],
    })  # fmt: skip


# --- data ---------------------------------------------------------------------------------


def data_root(events: int = EVENTS, labels: int = LABELS) -> Path:
    return ROOT / ".local" / "bench-data" / f"features-scale-{events}-{labels}-{ENTITIES}"


def _users(rng: Any, count: int) -> Any:
    import numpy as np

    hot = rng.random(count) < HOT_SHARE
    users = rng.integers(HOT_USERS, HOT_USERS + ENTITIES, count, dtype=np.int64)
    users[hot] = rng.integers(0, HOT_USERS, int(hot.sum()), dtype=np.int64)
    return users


def generate(root: Path, events: int = EVENTS, labels: int = LABELS) -> None:
    """The events and labels as Delta tables, chunk by chunk (memory: one chunk)."""
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    done = root / "_complete"
    if done.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(17)
    span = DAYS * 24 * HOUR_US
    ts_type = pa.timestamp("us", tz="UTC")
    for table, total in (("events", events), ("labels", labels)):
        written = 0
        while written < total:
            n = min(CHUNK, total - written)
            ts = pa.array(START_US + rng.integers(0, span, n, dtype=np.int64)).cast(ts_type)
            columns: dict[str, Any] = {"uid": _users(rng, n), "ts": ts}
            if table == "events":
                columns["amount"] = rng.integers(1, 500, n).astype(np.float64)
                columns["purchase"] = (rng.random(n) < 0.1).astype(np.int64)
            else:
                columns = {"label_id": np.arange(written, written + n, dtype=np.int64), **columns}
            write_deltalake(str(root / table), pa.table(columns), mode="append")
            written += n
            print(f"  {table}: {written:,} of {total:,}", flush=True)
    done.write_text("ok")


# --- the runs -------------------------------------------------------------------------------


def run_one(runner: str, root: Path, out: Path, scheduler: str | None) -> float:
    """Build the training set with ``runner`` in this process; its seconds."""
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    if runner in ("duckdb", "polars"):
        (by_hand_duckdb if runner == "duckdb" else by_hand_polars)(root, out)
        return time.perf_counter() - began
    from tierflow.engines import create_engine
    from tierflow.engines.base import EngineOptions
    from tierflow.features import training

    tier = runner.removeprefix("tierflow-")
    options = EngineOptions(dask_scheduler=scheduler) if tier == "dask" else EngineOptions()
    engine = create_engine(tier, options)  # type: ignore[arg-type]
    try:
        began = time.perf_counter()
        training.build(training_config(), view_configs(), engine, root, out_path=str(out))
        return time.perf_counter() - began
    finally:
        engine.close()


def by_hand_duckdb(root: Path, out: Path) -> None:
    """The same training set in DuckDB SQL, written as a user would without tierflow.

    Per view: tile aggregates per user and step; each label probes the window ending at
    its grid point with a RANGE frame over the user's tiles (probes carry no values).
    """
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect(str(out.parent / f"{out.name}.duckdb"))
    con.execute(f"SET temp_directory = '{out.parent}'")
    con.execute("SET preserve_insertion_order = false")
    con.register("events_src", DeltaTable(str(root / "events")).to_pyarrow_dataset())
    con.register("labels_src", DeltaTable(str(root / "labels")).to_pyarrow_dataset())
    con.execute(
        "CREATE TABLE labels AS SELECT label_id, uid, ts, epoch_us(ts) AS t FROM labels_src"
    )
    selected = ["l.label_id", "l.uid", "l.ts"]
    joins = []
    for name, spec in VIEWS.items():
        step = HOUR_US * (24 if spec["step"] == "1d" else 1)
        con.execute(f"""
            CREATE TABLE tiles_{name} AS
            SELECT uid, epoch_us(ts) // {step} AS k, count(*) AS n, count(amount) AS c,
                   sum(amount) AS s, sum(amount * amount) AS q, min(amount) AS lo,
                   max(amount) AS hi, arg_max(amount, epoch_us(ts)) AS last_v,
                   max(epoch_us(ts)) AS last_t, sum(purchase) AS p
            FROM events_src GROUP BY ALL""")
        columns = []
        for f in spec["features"]:
            w = _tiles(f.get("window", spec["step"]), step)
            frame = f"(PARTITION BY uid ORDER BY k RANGE BETWEEN {w - 1} PRECEDING AND CURRENT ROW)"
            agg = f["agg"]
            if agg == "count":
                expr = f"coalesce(sum(n) OVER {frame}, 0)"
            elif agg == "sum":
                src = "p" if f["column"] == "purchase" else "s"
                expr = f"CASE WHEN sum(c) OVER {frame} > 0 THEN sum({src}) OVER {frame} END"
            elif agg == "mean":
                expr = f"sum(s) OVER {frame} / nullif(sum(c) OVER {frame}, 0)"
            elif agg == "min":
                expr = f"min(lo) OVER {frame}"
            elif agg == "max":
                expr = f"max(hi) OVER {frame}"
            elif agg == "last":
                expr = f"arg_max(last_v, last_t) OVER {frame}"
            else:  # stddev from the sums, as tierflow defines it
                expr = (f"CASE WHEN sum(c) OVER {frame} > 1 THEN sqrt(greatest(0, "
                        f"(sum(q) OVER {frame} - sum(s) OVER {frame} * sum(s) OVER {frame} "
                        f"/ sum(c) OVER {frame}) / (sum(c) OVER {frame} - 1))) END")  # fmt: skip
            columns.append(f"{expr} AS {name}__{f['name']}")
        con.execute(f"""
            CREATE TABLE values_{name} AS
            WITH probes AS (SELECT DISTINCT uid, t // {step} - 1 AS k FROM labels),
            rows AS (
                SELECT uid, k, n, c, s, q, lo, hi, last_v, last_t, p, false AS probe
                FROM tiles_{name}
                UNION ALL
                SELECT uid, k, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 0, true FROM probes
            )
            SELECT uid, k, {", ".join(columns)} FROM rows QUALIFY probe""")
        joins.append(
            f"LEFT JOIN values_{name} v_{name} ON v_{name}.uid = l.uid "
            f"AND v_{name}.k = l.t // {step} - 1"
        )
        for f in spec["features"]:
            column = f"v_{name}.{name}__{f['name']}"
            selected.append(
                f"coalesce({column}, 0) AS {name}__{f['name']}" if f["agg"] == "count"
                else f"{column} AS {name}__{f['name']}"
            )  # fmt: skip
    con.execute(f"COPY (SELECT {', '.join(selected)} FROM labels l {' '.join(joins)}) "
                f"TO '{out}' (FORMAT parquet)")  # fmt: skip
    con.close()
    (out.parent / f"{out.name}.duckdb").unlink(missing_ok=True)


def by_hand_polars(root: Path, out: Path) -> None:
    """The same training set in Polars, written as a user would without tierflow.

    Per view: tile aggregates per user and step; each label's (user, tile before its grid
    point) is a probe row among the tiles, and rolling aggregates over the tile index
    (per user) are read at the probes, then joined back onto the labels.
    """
    import polars as pl

    events = pl.scan_delta(str(root / "events"))
    labels = pl.scan_delta(str(root / "labels")).with_columns(
        pl.col("ts").dt.epoch("us").alias("t")
    )
    result = labels.select("label_id", "uid", "ts", "t")
    for name, spec in VIEWS.items():
        step = HOUR_US * (24 if spec["step"] == "1d" else 1)
        t = pl.col("ts").dt.epoch("us")
        tiles = events.group_by("uid", (t // step).alias("k")).agg(
            pl.len().alias("n"), pl.col("amount").count().alias("c"),
            pl.col("amount").sum().alias("s"), (pl.col("amount") ** 2).sum().alias("q"),
            pl.col("amount").min().alias("lo"), pl.col("amount").max().alias("hi"),
            pl.col("amount").sort_by(t).last().alias("last_v"), t.max().alias("last_t"),
            pl.col("purchase").sum().alias("p"), pl.lit(False).alias("probe"),
        )  # fmt: skip
        probes = labels.select("uid", (pl.col("t") // step - 1).alias("k")).unique()
        probes = probes.with_columns(pl.lit(True).alias("probe"))
        rows = pl.concat([tiles, probes], how="diagonal_relaxed").sort("uid", "k", "probe")
        columns = []
        for f in spec["features"]:
            w = f"{_tiles(f.get('window', spec['step']), step)}i"

            def roll(column: str, op: str, w: str = w) -> pl.Expr:
                return getattr(pl.col(column), f"rolling_{op}_by")("k", window_size=w).over("uid")

            out_name = f"{name}__{f['name']}"
            agg = f["agg"]
            if agg == "count":
                expr = roll("n", "sum").fill_null(0)
            elif agg == "sum":
                src = "p" if f["column"] == "purchase" else "s"
                expr = pl.when(roll("c", "sum") > 0).then(roll(src, "sum"))
            elif agg == "mean":
                expr = roll("s", "sum") / pl.when(roll("c", "sum") > 0).then(roll("c", "sum"))
            elif agg in ("min", "max"):
                expr = roll("lo" if agg == "min" else "hi", agg)
            elif agg == "last":
                expr = roll("last_t", "max")
                out_name = f"_last_t_{name}"
            else:
                c, s_, q = roll("c", "sum"), roll("s", "sum"), roll("q", "sum")
                variance = ((q - s_ * s_ / c) / (c - 1)).clip(lower_bound=0)
                expr = pl.when(c > 1).then(variance.sqrt())
            columns.append(expr.alias(out_name))
        values = rows.with_columns(columns).filter(pl.col("probe"))
        values = values.select("uid", "k", *[c.meta.output_name() for c in columns])
        for f in spec["features"]:
            if f["agg"] == "last":  # the value of the latest event in the window
                latest = tiles.select("uid", pl.col("last_t").alias(f"_last_t_{name}"),
                                      pl.col("last_v").alias(f"{name}__{f['name']}"))  # fmt: skip
                values = values.join(latest, on=["uid", f"_last_t_{name}"], how="left")
                values = values.drop(f"_last_t_{name}")
        values = values.with_columns(((pl.col("k") + 1) * step).alias("_end")).drop("k")
        result = result.with_columns(((pl.col("t") // step) * step).alias("_end"))
        result = result.join(values, on=["uid", "_end"], how="left").drop("_end")
        counts = [f"{name}__{f['name']}" for f in spec["features"] if f["agg"] == "count"]
        result = result.with_columns(pl.col(counts).fill_null(0))
    result.drop("t").sink_parquet(out, engine="streaming")


def _tiles(window: str, step_us: int) -> int:
    from tierflow.config.features import duration_us

    return duration_us(window) // step_us


def child_main(argv: list[str]) -> int:
    """``python -m benchmarks.bench_features_scale one RUNNER ROOT OUT [SCHEDULER]``."""
    runner, root, out = argv[:3]
    scheduler = argv[3] if len(argv) > 3 else None
    seconds = run_one(runner, Path(root), Path(out), scheduler)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_bytes": peak}), flush=True)
    return 0


# --- materialization and online reads --------------------------------------------------


def source_of(root: Path) -> Any:
    from tierflow.config.jobs import SourceConfig
    from tierflow.jobs.sources import resolve_source

    return resolve_source("events", SourceConfig(format="delta", path=str(root / "events")), root)


def open_store(kind: str, target: str) -> Any:
    if kind == "redis":
        from tierflow.stores.redis_store import RedisOnlineStore

        return RedisOnlineStore(target)
    from tierflow.stores.sqlite_store import SQLiteOnlineStore

    return SQLiteOnlineStore(Path(target))


def materialize_main(kind: str, root: Path, target: str) -> int:
    """``... materialize redis|sqlite ROOT URL|DB``: the planner's (single-node) tier."""
    from tierflow.engines import create_engine
    from tierflow.features.materialize import materialize

    view = view_configs()[MATERIALIZED]
    engine = create_engine("single")
    with open_store(kind, target) as store:
        result = materialize(
            view, source_of(root), engine, store, end=AS_OF, work_dir=root.parent / "mat-work",
            progress=sys.stderr,
        )  # fmt: skip
    engine.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": result.seconds, "load_seconds": result.load_seconds,
                      "rows": result.rows_written, "buckets": result.buckets,
                      "resumed_from": result.resumed_from, "peak_bytes": peak}), flush=True)  # fmt: skip
    return 0


def raw_load_main(root: Path, url: str) -> int:
    """``... rawload ROOT URL``: the same rows loaded by a hand-written pipelined redis-py
    loader (HSET + PEXPIRE per key); only the loading is timed."""
    import pyarrow.dataset as ds
    import redis

    from tierflow.engines import create_engine
    from tierflow.features.batch import WINDOW_END, latest_values
    from tierflow.jobs.runner import read_source

    view = view_configs()[MATERIALIZED]
    engine = create_engine("single")
    values = root.parent / "mat-raw-values.parquet"
    as_of = int(AS_OF.timestamp() * 1_000_000)
    frame = read_source(engine, source_of(root), lineage=False)
    latest_values(frame, view, engine, as_of).to_native().sink_parquet(values)
    engine.close()
    client = redis.Redis.from_url(url)
    names = [f.name for f in view.features]
    ttl_ms = view.ttl_us // 1000
    rows = 0
    began = time.perf_counter()
    for batch in ds.dataset(str(values)).to_batches(batch_size=2_000):
        pipe = client.pipeline(transaction=False)
        for row in batch.to_pylist():
            key = f"raw:{view.name}:[{row['uid']}]"
            payload = json.dumps({n: row[n] for n in names})
            pipe.hset(key, mapping={"we": row[WINDOW_END], "v": payload})
            pipe.pexpire(key, ttl_ms)
        pipe.execute()
        rows += batch.num_rows
    seconds = time.perf_counter() - began
    values.unlink()
    print(json.dumps({"load_seconds": seconds, "rows": rows}), flush=True)
    return 0


def child(argv: list[str], roots: list[int] | None = None,
          kill_at: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Run ``python -m benchmarks.bench_features_scale ARGV`` timed with its memory;
    with ``kill_at``, SIGKILL it when a progress line holds that text."""
    from tierflow.jobs.calibration import PeakMemory

    argv = [sys.executable, "-m", "benchmarks.bench_features_scale", *argv]
    began = time.perf_counter()
    # Every bucket's line, to kill at one of them (not redrawn, not thinned out).
    env = os.environ | {"TIERFLOW_PROGRESS": "lines"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)  # fmt: skip
    with PeakMemory(lambda: [proc.pid, *(roots or [])], every=0.2) as tree:
        if kill_at is not None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if kill_at in line:
                    proc.kill()
                    break
            proc.wait()
            return {"killed": proc.returncode == -9}
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[3:]} exit {proc.returncode}: {stderr.strip()[-1500:]}")
    run: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    run["wall_seconds"] = time.perf_counter() - began
    run["peak_bytes"] = max(run.get("peak_bytes", 0), tree.peak)
    return run


def sqlite_difference(a: Path, b: Path) -> int:
    """Rows of one store that the other lacks, both ways (entity, window end, values)."""
    import sqlite3

    with sqlite3.connect(a) as db:
        db.execute(f"ATTACH '{b}' AS other")
        columns = "view, entity, window_end, payload"
        return int(
            db.execute(f"""SELECT
            (SELECT count(*) FROM (SELECT {columns} FROM online_features
                                   EXCEPT SELECT {columns} FROM other.online_features))
          + (SELECT count(*) FROM (SELECT {columns} FROM other.online_features
                                   EXCEPT SELECT {columns} FROM online_features))""").fetchone()[0]
        )


def materialize_stage(results: Results, url: str) -> None:
    """10x the events, the same entities: time, load rate and peak memory per store."""
    import redis

    # Emptying millions of keys takes Redis a while: flushes are asynchronous (freed in the
    # background) and the client waits long enough for them.
    client = redis.Redis.from_url(url, socket_timeout=600)
    out = ROOT / ".local" / "bench-data" / "features-scale-stores"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    runs: dict[str, Any] = {}
    for events in (EVENTS // 10, EVENTS):
        root = data_root(events, 1000)
        generate(root, events, 1000)
        for kind in ("sqlite", "redis"):
            client.flushdb(asynchronous=True)
            target = url if kind == "redis" else str(out / f"{events}.db")
            run = child(["materialize", kind, str(root), target])
            runs[f"{kind}-{events}"] = run
            print(f"  materialize {events:,} events -> {kind}: {run['rows']:,} entities, "
                  f"{run['seconds']:.0f} s (loading {run['load_seconds']:.0f} s), "
                  f"peak {run['peak_bytes'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
    root = data_root(EVENTS, 1000)
    client.flushdb(asynchronous=True)
    peer = child(["rawload", str(root), url])
    runs["redis-py"] = peer
    print(f"  redis-py loader: {peer['rows']:,} rows in {peer['load_seconds']:.0f} s", flush=True)
    # Killed halfway into SQLite, started again: equal to the uninterrupted run.
    killed = out / "killed.db"
    big = runs[f"sqlite-{EVENTS}"]
    halfway = f"{big['buckets'] // 2}/{big['buckets']} buckets"
    runs["killed"] = child(["materialize", "sqlite", str(root), str(killed)], kill_at=halfway)
    runs["resumed"] = child(["materialize", "sqlite", str(root), str(killed)])
    runs["resumed"]["difference"] = sqlite_difference(killed, out / f"{EVENTS}.db")
    print(f"  killed at {halfway} resumed from bucket {runs['resumed']['resumed_from']}: "
          f"{runs['resumed']['difference']} rows differ", flush=True)  # fmt: skip
    results.raw["materialize"] = runs
    for kind in ("redis", "sqlite"):
        small, large = runs[f"{kind}-{EVENTS // 10}"], runs[f"{kind}-{EVENTS}"]
        results.add(benchmark=f"materialize {MATERIALIZED} into {kind}, {EVENTS // 10:,} events",
                    metric="peak GiB", tierflow=small["peak_bytes"] / 2**30, peer=None,
                    peer_name="-", ratio=None)  # fmt: skip
        results.add(benchmark=f"materialize {MATERIALIZED} into {kind}, {EVENTS:,} events",
                    metric="peak GiB", tierflow=large["peak_bytes"] / 2**30,
                    peer=small["peak_bytes"] / 2**30, peer_name=f"{EVENTS // 10:,} events",
                    ratio=large["peak_bytes"] / small["peak_bytes"])  # fmt: skip
        results.add(benchmark=f"materialize {MATERIALIZED} into {kind}, {EVENTS:,} events",
                    metric="s", tierflow=large["seconds"], peer=None, peer_name="-", ratio=None)  # fmt: skip
    ours = runs[f"redis-{EVENTS}"]["rows"] / runs[f"redis-{EVENTS}"]["load_seconds"]
    theirs = peer["rows"] / peer["load_seconds"]
    results.add(benchmark=f"load {peer['rows']:,} entities into Redis", metric="rows/s",
                tierflow=ours, peer=theirs, peer_name="pipelined redis-py", ratio=ours / theirs)  # fmt: skip
    results.add(benchmark="SIGKILL halfway, resumed: rows differing from one run", metric="rows",
                tierflow=runs["resumed"]["difference"], peer=0, peer_name="exact", ratio=None)  # fmt: skip


def raw_read(client: Any, view: str, ids: list[int]) -> list[Any]:
    """The same keys read by hand: pipelined HMGET, JSON decoded."""
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(f"tf:{view}:[{i}]", "we", "v")
    return [None if v is None else (int(we), json.loads(v)) for we, v in pipe.execute()]


def online_stage(results: Results, url: str) -> None:
    """Reads of 1 and 100 random entities of the loaded store, beside raw redis-py."""
    import random

    from benchmarks.harness import median, percentile
    from tierflow.features.online import get_online_features
    from tierflow.stores.redis_store import RedisOnlineStore

    store = RedisOnlineStore(url)
    view = view_configs()[MATERIALIZED]
    held = int(store.client.dbsize()) - 1  # the view's keys and one checkpoint
    views = {view.name: view}
    rng = random.Random(3)
    users = HOT_USERS + ENTITIES
    for size in (1, 100):
        rounds: dict[str, list[float]] = {"ours_p50": [], "ours_p99": [], "peer_p50": [],
                                          "peer_p99": []}  # fmt: skip
        for _ in range(READ_ROUNDS):
            ours, peer = [], []
            for _ in range(READS):
                ids = [rng.randrange(users) for _ in range(size)]
                began = time.perf_counter()
                get_online_features(store, views, [view.name], [{"uid": i} for i in ids])
                ours.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                raw_read(store.client, view.name, ids)
                peer.append((time.perf_counter() - began) * 1000)
            for name, values in (("ours", ours), ("peer", peer)):
                rounds[f"{name}_p50"].append(percentile(values, 50))
                rounds[f"{name}_p99"].append(percentile(values, 99))
        results.raw[f"online_read_{size}"] = rounds | {"entities_held": held}
        for q in ("p50", "p99"):
            a, b = median(rounds[f"ours_{q}"]), median(rounds[f"peer_{q}"])
            results.add(benchmark=f"online read, {size} entities of {held:,}", metric=f"{q} ms",
                        tierflow=a, peer=b, peer_name="redis-py HMGET", ratio=a / b)  # fmt: skip
    store.close()


# --- comparison ---------------------------------------------------------------------------


def read_output(path: Path) -> Any:
    """The output as one Arrow table sorted by label, whatever wrote it."""
    import pyarrow.dataset as ds

    if (path / "_delta_log").exists():
        from deltalake import DeltaTable

        table = DeltaTable(str(path)).to_pyarrow_table()
    else:
        table = ds.dataset(str(path), format="parquet").to_table()
    return table.sort_by("label_id")


def compare(a: Any, b: Any) -> str | None:
    """None when equal (floats within 1e-9 relative); else the first difference."""
    import numpy as np
    import pyarrow.compute as pc

    if a.num_rows != b.num_rows:
        return f"{a.num_rows} rows vs {b.num_rows}"
    names = [n for n in b.column_names if n not in ("ts",)]
    for name in names:
        if name not in a.column_names:
            return f"no column {name}"
        x, y = a.column(name), b.column(name)
        if pc.any(pc.not_equal(pc.is_null(x), pc.is_null(y))).as_py():
            return f"{name}: nulls differ"
        xv = pc.fill_null(pc.cast(x, "float64"), 0).to_numpy()
        yv = pc.fill_null(pc.cast(y, "float64"), 0).to_numpy()
        close = np.isclose(xv, yv, rtol=1e-9, atol=1e-9)
        if not close.all():
            i = int(np.flatnonzero(~close)[0])
            return f"{name}: row {i} {xv[i]} vs {yv[i]}"
    return None


def main() -> int:
    unknown = sorted(set(RUNNERS) - set(ALL_RUNNERS))
    if unknown:
        raise SystemExit(f"RUNNERS: unknown {', '.join(unknown)} (known: {', '.join(ALL_RUNNERS)})")
    # A run of some stages only writes a results file of its own (both are kept).
    every = ("training", "materialize", "online")
    name = "features-scale" if set(STAGES) == set(every) else "features-scale-" + "-".join(STAGES)
    if "training" in STAGES and set(RUNNERS) != set(ALL_RUNNERS):  # named by what ran
        name += "-" + "-".join(r.removeprefix("tierflow-") for r in RUNNERS)
    results = Results(name)
    results.raw["setup"] = {"events": EVENTS, "labels": LABELS, "users": ENTITIES,
                            "hot_users": HOT_USERS, "hot_share": HOT_SHARE, "days": DAYS,
                            "views": VIEWS, "stages": STAGES, "materialized": MATERIALIZED,
                            "as_of": AS_OF.isoformat()}  # fmt: skip
    if "training" in STAGES:
        training_stage(results)
    if "materialize" in STAGES or "online" in STAGES:
        from tierflow.config.services import SERVICES_CONF_ENV

        # 10 M entities need more than the default Redis memory limit (1 GB).
        services = ROOT / ".local" / "bench-features-scale-services.yaml"
        conf = (ROOT / "conf" / "services.yaml").read_text()
        services.write_text(conf.replace("redis:\n", "redis:\n  maxmemory: 12gb\n", 1))
        os.environ[SERVICES_CONF_ENV] = str(services)
        with local_services("redis") as running:
            url = running.service("redis").endpoints()["url"]
            if "materialize" in STAGES:
                materialize_stage(results, url)
            else:  # reads need the store loaded
                child(["materialize", "redis", str(data_root(EVENTS, 1000)), url])
            if "online" in STAGES:
                online_stage(results, url)
    return results.finish()


def planner_pick(root: Path) -> tuple[str, str]:
    """The tier ``tierflow training-set build`` would pick for these inputs, and why."""
    from tierflow.config.jobs import SourceConfig
    from tierflow.jobs.sources import resolve_source
    from tierflow.project import Project

    labels = SourceConfig(format="delta", path=str(root / "labels"))
    sources = [source_of(root), resolve_source("labels", labels, root)]
    plan = Project.load().plan_inputs("features-scale", sources)
    return plan.engine, plan.reason


def task_sizes(root: Path, tasks: int = 200) -> dict[str, Any]:
    """Rows per task of the window step if users are hashed into ``tasks`` tasks (Spark's
    default shuffle partitions): what reaches that step per user is its tiles and its
    labels' probes, at most one row per step of the 30 days each, not its events."""
    import polars as pl

    events = pl.scan_delta(str(root / "events"))
    labels = pl.scan_delta(str(root / "labels"))
    out: dict[str, Any] = {}
    for name in sorted({spec["step"] for spec in VIEWS.values()}):
        step = HOUR_US * (24 if name == "1d" else 1)
        tiles = events.select("uid", (pl.col("ts").dt.epoch("us") // step).alias("k")).unique()
        probes = labels.select("uid", (pl.col("ts").dt.epoch("us") // step).alias("k")).unique()
        per_user = pl.concat([tiles, probes]).group_by("uid").agg(pl.len().alias("rows"))
        per_task = (
            per_user.group_by((pl.col("uid").hash(seed=0) % tasks).alias("task"))
            .agg(pl.col("rows").sum())
            .collect(engine="streaming")["rows"]
        )
        hottest = events.group_by("uid").agg(pl.len().alias("events")).sort("events").last()
        hot = hottest.join(per_user, on="uid").collect(engine="streaming").row(0, named=True)
        out[name] = {"tasks": tasks, "task_rows_max": int(per_task.max()),  # type: ignore[arg-type]
                     "task_rows_median": float(per_task.median()),  # type: ignore[arg-type]
                     "hottest_user_events": hot["events"], "hottest_user_rows": hot["rows"]}  # fmt: skip
    return out


@contextmanager
def _dask_cluster() -> Iterator[tuple[str, list[int]]]:
    """A two-worker LocalCluster on loopback: its address and its workers' PIDs."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None, processes=True)  # fmt: skip
    client = Client(cluster)
    try:
        yield cluster.scheduler_address, list(client.run(os.getpid).values())
    finally:
        client.close()
        cluster.close()


def _run_measured(
    runner: str, root: Path, out: Path, cluster: tuple[str, list[int]] | None
) -> dict[str, Any]:
    """One runner in a process of its own; its time, and the peak of its process tree
    (with the Dask workers' for Dask)."""
    argv = [sys.executable, "-m", "benchmarks.bench_features_scale", "one", runner,
            str(root), str(out)]  # fmt: skip
    if cluster is not None:
        argv.append(cluster[0])
    return run_measured(argv, workers=cluster[1] if cluster else [], timeout_s=TIMEOUT_S)


def training_stage(results: Results) -> None:
    """The training set on every runner, each checked equal to DuckDB's."""

    root = data_root()
    print(f"[features-scale] {EVENTS:,} events, {LABELS:,} labels, {ENTITIES:,} users -> {root}",
          flush=True)  # fmt: skip
    began = time.perf_counter()
    generate(root)
    print(f"  data ready ({time.perf_counter() - began:.0f} s)", flush=True)
    runs: dict[str, dict[str, Any]] = {}
    outputs = root.parent / "features-scale-out"
    for runner in RUNNERS:
        # Dask's workers exist for its run only: idle, they still hold its data and
        # take CPU from whatever runs next.
        with _dask_cluster() if runner == "tierflow-dask" else nullcontext(None) as cluster:
            runs[runner] = _run_measured(runner, root, outputs / runner, cluster)
        if "error" in runs[runner]:
            print(f"  {runner}: {runs[runner]['error']}", flush=True)
        else:
            run = runs[runner]
            print(f"  {runner}: {run['seconds']:.1f} s, peak {run['peak_bytes'] / 2**30:.2f} GiB",
                  flush=True)  # fmt: skip
    # DuckDB's output is the reference; a sitting without DuckDB uses the one an earlier
    # sitting wrote from the same data (named in ``duckdb.root``).
    marker = outputs / "duckdb.root"
    if "seconds" in runs.get("duckdb", {}):
        marker.write_text(str(root))
    elif "duckdb" in runs:
        marker.unlink(missing_ok=True)
    same_data = marker.exists() and marker.read_text() == str(root)
    reference = read_output(outputs / "duckdb") if same_data else None
    results.raw["reference"] = (
        "duckdb, this sitting"
        if "seconds" in runs.get("duckdb", {})
        else ("duckdb, an earlier sitting on the same data" if same_data else None)
    )
    fastest = min((r["seconds"] for r in runs.values() if "seconds" in r), default=math.nan)
    for runner, run in runs.items():
        if "seconds" in run and reference is not None and runner != "duckdb":
            run["difference"] = compare(read_output(outputs / runner), reference)
        results.add(
            benchmark=f"training set, {EVENTS:,} events x 4 views, {LABELS:,} labels",
            metric="s", tierflow=run.get("seconds"), tierflow_runner=runner,
            peer=fastest, peer_name="fastest of all", ratio=(run["seconds"] / fastest)
            if "seconds" in run else None,
        )  # fmt: skip
    results.raw["runs"] = runs
    picked, reason = planner_pick(root)
    results.raw["planner"] = {"engine": picked, "reason": reason}
    chosen = runs.get(f"tierflow-{picked}", {})
    results.add(benchmark=f"training set, {EVENTS:,} events x 4 views, {LABELS:,} labels",
                metric="s", tierflow=chosen.get("seconds"), tierflow_runner=f"planner: {picked}",
                peer=fastest, peer_name="fastest of all",
                ratio=chosen["seconds"] / fastest if "seconds" in chosen else None)  # fmt: skip
    sizes = task_sizes(root)
    results.raw["task_sizes"] = sizes
    for name, size in sizes.items():
        results.add(benchmark=f"{name} steps: rows per window task ({size['tasks']} tasks)",
                    metric="rows", tierflow=size["task_rows_max"], tierflow_runner="largest task",
                    peer=size["task_rows_median"], peer_name="median task",
                    ratio=size["task_rows_max"] / size["task_rows_median"])  # fmt: skip
        results.add(benchmark=f"{name} steps: the hottest user", metric="rows",
                    tierflow=size["hottest_user_rows"], tierflow_runner="its rows at the window step",
                    peer=size["hottest_user_events"], peer_name="its events", ratio=None)  # fmt: skip


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "one":
        sys.exit(child_main(sys.argv[2:]))
    if command == "materialize":
        sys.exit(materialize_main(sys.argv[2], Path(sys.argv[3]), sys.argv[4]))
    if command == "rawload":
        sys.exit(raw_load_main(Path(sys.argv[2]), sys.argv[3]))
    sys.exit(main())
