"""Big-data paths on small data: the TPC-H jobs on every tier against DuckDB, the planner
against the session's real Dask scheduler and Spark master, ``tierflow calibrate``, and
the single-node tier's out-of-core paths (spilled frames, SQL in an on-disk DuckDB).

``make bench-scale`` runs the same code at scale factors 10 and 30.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support import (
    ENGINES,
    assert_same_rows,
    engine_options,
    normalise,
    project_for,
    read_table,
)
from tierflow.engines.base import EngineOptions
from tierflow.examples import tpch

PROJECT = Path(__file__).resolve().parents[2]
QUERIES = tuple(tpch.REFERENCE_SQL)
#: Spark runs the joins of several keys, many tables and a self-join (each Spark query
#: costs seconds even on tiny data); the other tiers run all six.
SPARK_QUERIES = ("q5", "q9", "q18")


@pytest.fixture(scope="module")
def tpch_data(tmp_path_factory) -> Path:
    return tpch.generate(tmp_path_factory.mktemp("tpch"), 0.01, echo=False).root


@pytest.fixture(scope="module")
def duckdb_answers(tpch_data) -> dict[str, list]:
    import duckdb

    answers = {}
    with duckdb.connect() as con:
        tpch.duckdb_views(con, tpch_data / "tpch")
        for query, sql in tpch.REFERENCE_SQL.items():
            result = con.sql(sql).arrow()
            answers[query] = normalise(result.read_all() if hasattr(result, "read_all") else result)
    return answers


@pytest.fixture
def options(request):
    def make(engine: str) -> EngineOptions:
        if engine == "spark":
            return engine_options("spark", spark=request.getfixturevalue("spark"))
        if engine == "dask":
            return engine_options("dask", dask_scheduler=request.getfixturevalue("dask_scheduler"))
        return EngineOptions()

    return make


@pytest.mark.spark
@pytest.mark.dask
@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_tpch_jobs_equal_duckdb_on_every_tier(engine, tpch_data, duckdb_answers, options, tmp_path):
    project = project_for(tpch_data)
    for query in SPARK_QUERIES if engine == "spark" else QUERIES:
        job = project.load_job(f"tpch_{query}")
        out = tmp_path / query
        job = job.model_copy(update={"sink": job.sink.model_copy(update={"path": str(out)})})
        record = project.run(job, engine=engine, options=options(engine), echo=False)
        assert record.status == "succeeded", record.error
        assert record.rows_out == len(duckdb_answers[query])
        assert_same_rows(normalise(read_table(out)), duckdb_answers[query], f"{query} on {engine}")


def test_the_single_node_tier_spills_and_runs_sql_out_of_core(tmp_path):
    """A kept frame above a quarter of the memory budget goes to disk; a SQL step scans
    files in DuckDB itself; the answers are those of the in-memory path."""

    from tierflow.engines.polars_engine import PolarsEngine

    files = []
    for i in range(3):
        table = pa.table({"k": [i * 10 + j for j in range(10)], "v": [float(j) for j in range(10)]})
        pq.write_table(table, tmp_path / f"p{i}.parquet")
        files.append(str(tmp_path / f"p{i}.parquet"))
    roomy, tight = PolarsEngine(), PolarsEngine(EngineOptions(memory_budget=4096))
    try:
        frames = {}
        for name, engine in (("roomy", roomy), ("tight", tight)):
            kept = engine.persist(engine.read_parquet(files), size_hint=10_000)
            frames[name] = kept
            query = "SELECT k % 3 AS g, sum(v) AS s, count(*) AS n FROM t WHERE k > 5 GROUP BY 1"
            result = engine.collect_arrow(
                engine.sql(query, {"t": engine.read_parquet(files, lineage=False)})
            )
            assert sorted(result.to_pylist(), key=lambda r: r["g"]) == [
                {"g": 0, "s": 42.0, "n": 8}, {"g": 1, "s": 40.0, "n": 8}, {"g": 2, "s": 38.0, "n": 8},
            ]  # fmt: skip
        # The tight budget's copy lives in a scratch Parquet file, the roomy one in memory.
        assert "Parquet SCAN" in frames["tight"].to_native().explain()
        assert "Parquet SCAN" not in frames["roomy"].to_native().explain()
        assert_same_rows(
            normalise(roomy.collect_arrow(frames["roomy"])),
            normalise(tight.collect_arrow(frames["tight"])), "spilled vs kept",
        )  # fmt: skip
        spilled = list(tight._scratch.glob("*.parquet")) if tight._scratch else []
        assert spilled, "nothing was spilled"
    finally:
        roomy.close()
        tight.close()
    assert not spilled[0].exists(), "close() leaves no scratch files"


@pytest.mark.dask
@pytest.mark.spark_cluster
def test_the_planner_asks_the_clusters_and_sends_what_this_machine_cannot_hold_there(
    tpch_data, dask_scheduler, spark_cluster, monkeypatch
):
    project = project_for(tpch_data)
    ui = spark_cluster.master_ui
    project = replace(project, config=project.config.model_copy(update={
        "clusters": project.config.clusters.model_copy(update={"spark_master_ui": ui})}))  # fmt: skip
    options = EngineOptions(dask_scheduler=dask_scheduler, spark_master=spark_cluster.master_url)
    resources = project.resources(options)
    dask, spark = resources.places["dask"], resources.places["spark"]
    assert (dask.address, dask.workers, dask.cores) == (dask_scheduler, 1, 2) and dask.memory > 0
    assert (spark.address, spark.workers, spark.cores) == (spark_cluster.master_url, 1, 2)
    assert spark.memory == 2 * 1024**3  # the worker's --memory 2g
    job = project.load_job("tpch_q3")
    assert project.plan(job, options=options).engine == "single"  # tiny: one process is fastest
    # Told that this machine has 8 MiB, the planner cannot keep the job here.
    monkeypatch.setenv("TIERFLOW_MEMORY_GB", str(8 / 1024))
    plan = project.plan(job, options=options)
    by = {e.engine: e for e in plan.estimates}
    assert not by["single"].fits and plan.engine in ("dask", "spark"), plan.explain()
    assert plan.place.address in (dask_scheduler, spark_cluster.master_url)
    assert "cannot hold it" in plan.reason and "TIERFLOW_MEMORY_GB" in plan.explain()
    assert project.engine_options(plan).memory_budget == plan.memory_budget


@pytest.mark.slow
def test_calibrate_measures_this_machine_and_the_plan_uses_it(tpch_data, tmp_path):
    env = os.environ | {"TIERFLOW_CALIBRATION_DIR": str(tmp_path / "cal"),
                        "TIERFLOW_DATA_DIR": str(tpch_data), "TIERFLOW_LOGS_DIR": str(tmp_path / "logs")}  # fmt: skip
    tierflow = [str(Path(sys.executable).parent / "tierflow")]
    done = subprocess.run([*tierflow, "calibrate", "--engines", "single", "--rows", "20000,80000"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (stored,) = (tmp_path / "cal").glob("machine-*.json")
    cost = json.loads(stored.read_text())["costs"]["single"]
    assert cost["core_s_per_gib"] > 0 and cost["memory_base"] > 0
    assert "single: startup" in done.stdout
    plan = subprocess.run([*tierflow, "plan", "tpch_q1", "--json"], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    estimates = {e["engine"]: e for e in json.loads(plan.stdout)["estimates"]}
    assert estimates["single"]["calibrated"] and not estimates["spark"]["calibrated"]
    text = subprocess.run([*tierflow, "plan", "tpch_q1"], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert str(stored) in text and "(built-in costs)" in text


@pytest.mark.dask
def test_the_dask_tier_writes_every_partition_the_optimiser_makes(dask_scheduler, tmp_path):
    """A grouped aggregation over many partitions: dask-expr decides its output partitions
    while optimising (1 before, 4 after here); the write must carry every one of them."""
    import dask.dataframe as dd
    import narwhals as nw
    import numpy as np
    import pandas as pd

    from tierflow.config.jobs import SinkConfig
    from tierflow.engines.dask_engine import DaskEngine

    n = 64_000
    native = dd.from_pandas(pd.DataFrame({"k": np.arange(n), "x": 1.0}), npartitions=32)
    grouped = native.groupby(["k", "x"]).agg(s=("x", "sum")).reset_index()
    assert grouped.npartitions < grouped.optimize().npartitions  # the case at hand
    engine = DaskEngine(EngineOptions(dask_scheduler=dask_scheduler))
    try:
        out = str(tmp_path / "grouped")
        result = engine.write(nw.from_native(grouped), SinkConfig(format="delta", path=out), out)
        assert result.rows == n
        assert sorted(read_table(out)["k"].to_pylist()) == list(range(n))
        assert engine.collect_arrow(nw.from_native(grouped)).num_rows == n
    finally:
        engine.close()
