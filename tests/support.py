"""Helpers shared by the tests: reading tables back and comparing them across engines."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable

from tierflow.engines.base import EngineOptions
from tierflow.io.arrow_sinks import unified_parquet_schema
from tierflow.project import Project

ENGINES = ("single", "dask", "spark")


def read_table(path: str | Path, fmt: str = "delta", version: int | None = None) -> pa.Table:
    """A Delta or Parquet table as one Arrow table (partition columns included)."""
    if fmt == "delta":
        return pa.table(DeltaTable(str(path), version=version).to_pyarrow_table())
    files = [str(p) for p in Path(path).rglob("*.parquet")]
    data_schema = unified_parquet_schema(files)
    partitions = pads.dataset(str(path), format="parquet", partitioning="hive").schema
    extra = [f for f in partitions if f.name not in data_schema.names]
    schema = pa.schema(list(data_schema) + extra)
    return pads.dataset(str(path), format="parquet", partitioning="hive", schema=schema).to_table()


def normalise(table: pa.Table, drop: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows sorted, columns in name order, types unified (ints -> int64, floats -> float64,
    partition dictionaries -> plain values), so engines' outputs compare equal."""
    names = sorted(n for n in table.column_names if n not in drop)
    columns = []
    for name in names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_integer(col.type):
            col = col.cast(pa.int64())
        elif pa.types.is_floating(col.type):
            col = col.cast(pa.float64())
        elif pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
            col = col.cast(pa.string())
        elif pa.types.is_timestamp(col.type):
            col = pc.cast(col, pa.timestamp("us", tz="UTC"))
        columns.append(col.to_pylist())
    rows = list(zip(*columns, strict=True)) if columns else []
    return sorted(rows, key=lambda r: tuple((v is None, str(v)) for v in r))


def assert_same_rows(left: list[tuple[Any, ...]], right: list[tuple[Any, ...]], what: str) -> None:
    """Equal row lists, floats equal to 1e-9 relative (engines sum in different orders)."""
    assert len(left) == len(right), f"{what}: {len(left)} rows vs {len(right)}"
    for a, b in zip(left, right, strict=True):
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), f"{what}: {a} != {b}"
            else:
                assert x == y, f"{what}: {a} != {b}"


def copy_data(source: Path, target: Path) -> Path:
    """A private copy of a data folder (jobs mutate their tables)."""
    shutil.copytree(source, target)
    return target


def engine_options(
    engine: str, *, spark: Any = None, dask_scheduler: str | None = None
) -> EngineOptions:
    """Options that point the engine at the session's services."""
    if engine == "spark":
        return EngineOptions(spark_session=spark)
    if engine == "dask":
        return EngineOptions(dask_scheduler=dask_scheduler)
    return EngineOptions()


def project_for(data_dir: Path) -> Project:
    """The real project (its conf/ and transforms) on a private data folder and log folder."""
    project = Project.load(data_dir=str(data_dir))
    return dataclasses.replace(project, logs_dir=data_dir / "_logs")
