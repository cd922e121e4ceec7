"""The Dask plan Narwhals builds, tightened: the same rows, with the scan reading only the
columns the transform uses and the predicates as plain values (no cluster: dask's
synchronous scheduler on small files)."""

from __future__ import annotations

from datetime import date

import dask
import dask.dataframe as dd
import narwhals as nw
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tierflow.engines.dask_plan import literal_value, tighten


@pytest.fixture
def table(tmp_path):
    data = pa.table({
        "k": [None, 2, 3, 4, 5, 6],
        "d": [date(2020, 1, i) for i in range(1, 7)],
        "x": [1.5, 2.5, 3.5, 4.5, None, 6.5],
        "flag": [True, True, None, True, True, True],
        "wide": ["unused " * 20] * 6,
    })  # fmt: skip
    pq.write_table(data.slice(0, 3), tmp_path / "a.parquet")
    pq.write_table(data.slice(3), tmp_path / "b.parquet")
    return tmp_path


def frame(path):
    return nw.from_native(
        dd.read_parquet(
            str(path), dtype_backend="pyarrow", arrow_to_pandas={"types_mapper": pd.ArrowDtype}
        )
    )


def transform(f):
    return (
        f.filter((nw.col("d") > date(2020, 1, 2)) & nw.col("flag"))
        .select("k", (nw.col("x") * (1 - nw.col("x") / 10)).alias("y"))
        .filter(nw.col("k") != 4)
    )


def rows(native):
    with dask.config.set(scheduler="sync"):
        out = native.compute()
    return sorted(out.astype(object).where(out.notna(), None).itertuples(index=False, name=None),
                  key=repr)  # fmt: skip


def scans(native):
    return [
        n
        for n in native.optimize(fuse=False).expr.walk()
        if type(n).__name__.startswith("ReadParquet")
    ]


def test_tightened_plan_gives_the_same_rows_nulls_included(table):
    built = transform(frame(table)).to_native()
    tight = tighten(built)
    # A null predicate (flag on day 3) drops the row, a null value (x on day 5) stays null.
    assert rows(tight) == rows(built) == [(5, None), (6, pytest.approx(6.5 * 0.35))]


def test_tightened_plan_reads_only_the_used_columns_and_folds_literals(table):
    built = transform(frame(table)).to_native()
    tight = tighten(built)
    # As Narwhals builds it, every literal is a one-row Dask Series...
    literals = {literal_value(n) for n in built.expr.walk()}
    assert {date(2020, 1, 2), 1, 10, 4} <= literals
    assert not {date(2020, 1, 2), 1, 10, 4} & {literal_value(n) for n in tight.expr.walk()}
    # ...and the scan cannot be narrowed; tightened, it reads what the transform uses.
    assert all(n.operand("columns") is None for n in scans(built))
    assert not any(type(n).__name__ == "FromPandas" for n in tight.expr.walk())
    assert {tuple(n.operand("columns")) for n in scans(tight)} == {("k", "d", "x", "flag")}


def test_an_unknown_plan_is_left_as_it_is():
    plain = dd.from_pandas(pd.DataFrame({"a": [1, 2]}), npartitions=1)
    assert tighten(plain).expr._name == plain.expr._name
