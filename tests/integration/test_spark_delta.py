"""Spark and delta-rs read each other's Delta tables, time travel included."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def rows(table: pa.Table, *cols: str) -> list[tuple]:
    data = table.select(list(cols)).to_pylist()
    return sorted(tuple(r[c] for c in cols) for r in data)


def test_spark_writes_delta_that_deltalake_reads(spark, tmp_path):
    path = str(tmp_path / "from_spark")
    first = spark.createDataFrame(
        [(i, f"name-{i}", i * 1.5) for i in range(100)], "id long, name string, score double"
    )
    first.write.format("delta").save(path)
    spark.createDataFrame([(100, "late", 0.0)], first.schema).write.format("delta").mode(
        "append"
    ).save(path)

    table = DeltaTable(path)
    assert table.version() == 1
    latest = table.to_pyarrow_table()
    expected = sorted([(i, f"name-{i}", i * 1.5) for i in range(100)] + [(100, "late", 0.0)])
    assert rows(latest, "id", "name", "score") == expected
    assert latest.schema.field("id").type == pa.int64()

    DeltaTable(path, version=0)
    assert (
        rows(DeltaTable(path, version=0).to_pyarrow_table(), "id", "name", "score") == expected[:-1]
    )


def test_spark_reads_what_deltalake_wrote_with_time_travel(spark, tmp_path):
    path = str(tmp_path / "from_rust")
    v0 = pa.table({"id": list(range(50)), "city": [f"c{i % 5}" for i in range(50)]})
    v1 = pa.table({"id": [1000, 1001], "city": ["x", "y"]})
    write_deltalake(path, v0)
    write_deltalake(path, v1, mode="overwrite")

    latest = spark.read.format("delta").load(path)
    assert sorted(tuple(r) for r in latest.collect()) == [(1000, "x"), (1001, "y")]

    old = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert sorted(tuple(r) for r in old.collect()) == sorted(
        zip(v0["id"].to_pylist(), v0["city"].to_pylist(), strict=True)
    )
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select("version").collect()
    assert sorted(r.version for r in history) == [0, 1]
