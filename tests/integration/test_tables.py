"""Sink modes, schema enforcement and evolution, Delta written by one engine and MERGEd or
read by the other, and time-based splits: on every tier."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from tests.support import ENGINES, engine_options, normalise, project_for, read_table
from tierflow.io.arrow_sinks import SchemaMismatchError

pytestmark = [pytest.mark.spark, pytest.mark.dask, pytest.mark.slow]

UTC = timezone.utc


class Runner:
    """Writes an input Parquet file and a one-source job, runs it on one engine."""

    def __init__(self, root: Path, engine: str, spark, dask_scheduler) -> None:
        self.data = root / "data"
        self.root = root
        self.engine = engine
        self.options = engine_options(engine, spark=spark, dask_scheduler=dask_scheduler)
        self.project = project_for(self.data)
        self.n = 0
        self.spark = spark
        self.dask_scheduler = dask_scheduler

    def run(
        self, rows: list[dict], sink: dict, *, split: dict | None = None, engine: str | None = None
    ):
        self.n += 1
        folder = self.data / "in" / f"batch{self.n}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "part.parquet")
        job = {
            "name": "writes",
            "sources": {"rows": {"format": "parquet", "path": f"in/batch{self.n}"}},
            "sink": sink,
        }
        if split:
            job["split"] = split
        path = self.root / f"job{self.n}.yaml"
        path.write_text(yaml.safe_dump(job))
        engine = engine or self.engine
        options = engine_options(engine, spark=self.spark, dask_scheduler=self.dask_scheduler)
        return self.project.run(
            self.project.load_job(str(path)), engine=engine, options=options, echo=False
        )


@pytest.fixture(params=ENGINES)
def runner(request, tmp_path, spark, dask_scheduler) -> Runner:
    return Runner(tmp_path, request.param, spark, dask_scheduler)


def rows_of(path: Path, fmt: str = "delta", version: int | None = None) -> list[tuple]:
    return normalise(read_table(path, fmt, version))


@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_append_overwrite_and_partition_overwrite(runner, fmt):
    sink = {"format": fmt, "path": "out/t", "partition_by": ["p"]}
    first = [{"k": 1, "p": "x", "v": 1.0}, {"k": 2, "p": "y", "v": 2.0}]
    runner.run(first, sink | {"mode": "overwrite"})
    runner.run([{"k": 3, "p": "x", "v": 3.0}], sink | {"mode": "append"})
    assert [r[0] for r in rows_of(runner.data / "out/t", fmt)] == [1, 2, 3]
    record = runner.run([{"k": 9, "p": "x", "v": 9.0}], sink | {"mode": "overwrite_partitions"})
    assert record.rows_out == 1
    # Partition x was replaced; partition y kept its row.
    assert rows_of(runner.data / "out/t", fmt) == [(2, "y", 2.0), (9, "x", 9.0)]
    runner.run([{"k": 5, "p": "z", "v": 5.0}], sink | {"mode": "overwrite"})
    assert rows_of(runner.data / "out/t", fmt) == [(5, "z", 5.0)]


def test_merge_upserts_on_keys(runner):
    sink = {"format": "delta", "path": "out/m", "mode": "merge", "merge_keys": ["k"]}
    runner.run([{"k": 1, "v": "a"}, {"k": 2, "v": "b"}], sink)  # creates the table
    record = runner.run([{"k": 2, "v": "B"}, {"k": 3, "v": "c"}], sink)
    assert (
        record.output["num_target_rows_updated"],
        record.output["num_target_rows_inserted"],
    ) == (1, 1)
    assert rows_of(runner.data / "out/m") == [(1, "a"), (2, "B"), (3, "c")]
    assert rows_of(runner.data / "out/m", version=0) == [(1, "a"), (2, "b")]


@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_schema_is_enforced_and_evolves_only_when_allowed(runner, fmt):
    sink = {"format": fmt, "path": "out/s", "mode": "append"}
    runner.run([{"k": 1, "v": 1.0}], sink)
    with pytest.raises(SchemaMismatchError):
        runner.run([{"k": 2, "v": 2.0, "extra": "new"}], sink)
    with pytest.raises(SchemaMismatchError):
        runner.run([{"k": 3, "v": "not a float"}], sink | {"schema_evolution": True})
    runner.run([{"k": 4, "v": 4.0, "extra": "new"}], sink | {"schema_evolution": True})
    assert rows_of(runner.data / "out/s", fmt) == [("new", 4, 4.0), (None, 1, 1.0)]
    if fmt == "delta":
        assert (
            DeltaTable(str(runner.data / "out/s")).version() == 1
        )  # failed writes left no version


@pytest.mark.parametrize(
    ("writer", "merger"), [("single", "spark"), ("spark", "single"), ("dask", "spark")]
)
def test_delta_written_by_one_engine_merged_by_another(
    tmp_path, spark, dask_scheduler, writer, merger
):
    runner = Runner(tmp_path, writer, spark, dask_scheduler)
    ts = datetime(2024, 5, 1, 12, tzinfo=UTC)
    runner.run(
        [{"k": i, "v": f"v{i}", "ts": ts} for i in range(5)],
        {"format": "delta", "path": "out/x", "mode": "overwrite"},
    )
    merge = {"format": "delta", "path": "out/x", "mode": "merge", "merge_keys": ["k"]}
    runner.run(
        [{"k": 0, "v": "changed", "ts": ts}, {"k": 7, "v": "new", "ts": ts}], merge, engine=merger
    )
    path = str(runner.data / "out/x")
    latest = rows_of(runner.data / "out/x")
    assert [(k, v) for k, _, v in latest] == [
        (0, "changed"),
        (1, "v1"),
        (2, "v2"),
        (3, "v3"),
        (4, "v4"),
        (7, "new"),
    ]
    assert all(t == ts for _, t, _ in latest)
    # Each library reads the other's versions, time travel included.
    assert DeltaTable(path).version() == 1
    old = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert sorted((r.k, r.v) for r in old.collect()) == [(i, f"v{i}") for i in range(5)]
    now = spark.read.format("delta").load(path)
    assert sorted((r.k, r.v) for r in now.collect()) == [(k, v) for k, _, v in latest]


def test_time_split_is_identical_on_every_engine(tmp_path, spark, dask_scheduler):
    rows = [{"k": i, "at": datetime(2024, 1 + i % 12, 1 + i % 28, tzinfo=UTC)} for i in range(60)]
    split = {
        "method": "time",
        "time_column": "at",
        "valid_from": "2024-09-01T00:00:00Z",
        "test_from": "2024-11-01T00:00:00Z",
    }
    got = {}
    for engine in ENGINES:
        runner = Runner(tmp_path / engine, engine, spark, dask_scheduler)
        runner.run(rows, {"format": "delta", "path": "out/split"}, split=split)
        table = read_table(runner.data / "out/split")
        got[engine] = dict(zip(table["k"].to_pylist(), table["split"].to_pylist(), strict=True))
    assert got["single"] == got["dask"] == got["spark"]
    for row in rows:
        expected = "train" if row["at"].month < 9 else "valid" if row["at"].month < 11 else "test"
        assert got["single"][row["k"]] == expected
