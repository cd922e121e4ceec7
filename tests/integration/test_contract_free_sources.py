"""Sources without a contract are read lazily, counted exactly, and never quarantined; a
Delta source that declares only some of its columns judges the rest by its policy."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from tests.support import ENGINES, engine_options, project_for, read_table

pytestmark = [pytest.mark.spark, pytest.mark.dask, pytest.mark.slow]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "raw" / "sales").mkdir(parents=True)
    for part in range(3):  # three files: the count comes from every footer
        ids = list(range(part * 1000, part * 1000 + 1000))
        pq.write_table(
            pa.table(
                {
                    "id": ids,
                    "amount": [float(i % 7) for i in ids],
                    "shop": [f"s{i % 3}" for i in ids],
                }
            ),
            folder / "raw" / "sales" / f"part-{part}.parquet",
        )
    write_deltalake(
        str(folder / "bronze" / "shops"),
        pa.table({"shop": ["s0", "s1", "s2"], "city": ["a", None, "c"], "size": [1, 2, 3]}),
    )
    return folder


def write_job(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def run(data: Path, job: Path, engine_name: str, spark, dask_scheduler):
    project = project_for(data)
    options = engine_options(engine_name, spark=spark, dask_scheduler=dask_scheduler)
    return project.run(project.load_job(str(job)), engine=engine_name, options=options, echo=False)


def test_a_contract_free_parquet_source_is_counted_and_transformed(
    data: Path, engine_name: str, spark, dask_scheduler
):
    job = write_job(
        data,
        "plain",
        """
name: plain
sources:
  sales: {format: parquet, path: raw/sales/*.parquet}
sql: SELECT shop, sum(amount) AS total, count(*) AS n FROM sales GROUP BY shop
sink: {format: delta, path: gold/by_shop, mode: overwrite}
""",
    )
    record = run(data, job, engine_name, spark, dask_scheduler)
    assert record.status == "succeeded", record.error
    assert (record.rows_in, record.rows_quarantined, record.rows_out) == (3000, 0, 3)
    rows = sorted(read_table(data / "gold" / "by_shop").to_pylist(), key=lambda r: r["shop"])
    assert [r["n"] for r in rows] == [1000, 1000, 1000]
    assert sum(r["total"] for r in rows) == sum(float(i % 7) for i in range(3000))


def test_undeclared_delta_columns_follow_the_extra_columns_policy(
    data: Path, engine_name: str, spark, dask_scheduler
):
    job = write_job(
        data,
        "partial",
        """
name: partial
sources:
  shops:
    format: delta
    path: bronze/shops
    columns: {shop: {type: string, nullable: false}}
sink: {format: delta, path: silver/shops, mode: overwrite}
quarantine: {max_bad_fraction: 1.0}
""",
    )
    record = run(data, job, engine_name, spark, dask_scheduler)
    assert record.status == "succeeded", record.error
    # city and size are not declared: every row has a value in one of them.
    assert record.rows_quarantined == 3
    assert record.quarantine_by_rule == {"shops.extra column": 3}


@pytest.fixture(params=ENGINES)
def engine_name(request) -> str:
    return str(request.param)
