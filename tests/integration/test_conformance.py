"""One conformance suite: every example job and every transform on all three tiers.

Each engine runs the example jobs in order on its own copy of the same generated data
(Dask on the session's distributed scheduler, Spark on the session's local Spark); the
outputs, the quarantine tables and the run counts must be equal, rows sorted and types
normalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import narwhals as nw
import pyarrow as pa
import pytest

from tests.support import (
    ENGINES,
    assert_same_rows,
    copy_data,
    engine_options,
    normalise,
    project_for,
    read_table,
)
from tierflow.examples.retail import generate
from tierflow.jobs.registry import get_transform, load_transforms

pytestmark = [pytest.mark.spark, pytest.mark.dask, pytest.mark.slow]

JOBS = ("orders_clean", "daily_revenue", "category_revenue", "customers_upsert")
OUTPUTS = {
    "silver/orders": "delta",
    "gold/daily_revenue": "delta",
    "gold/category_revenue": "parquet",
    "silver/customers": "delta",
}


def relative_files(table: pa.Table, data: Path) -> pa.Table:
    """Quarantine rows name their source file; compare the path inside the data folder."""
    files = [f.removeprefix(f"{data}/") for f in table["_tf_file"].to_pylist()]
    return table.set_column(table.schema.get_field_index("_tf_file"), "_tf_file", pa.array(files))


@pytest.fixture(scope="module")
def example_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("examples") / "data", orders=6_000, files=3)


@pytest.fixture(scope="module")
def results(example_data, tmp_path_factory, spark, dask_scheduler) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for engine in ENGINES:
        data = copy_data(example_data, tmp_path_factory.mktemp(engine) / "data")
        project = project_for(data)
        options = engine_options(engine, spark=spark, dask_scheduler=dask_scheduler)
        records = {}
        for name in JOBS:
            records[name] = project.run(
                project.load_job(name), engine=engine, options=options, echo=False
            )
        tables = {path: read_table(data / path, fmt) for path, fmt in OUTPUTS.items()}
        quarantine = {
            src: relative_files(read_table(data / "_quarantine" / "orders_clean" / src), data)
            for src in ("orders", "customers")
        }
        history = read_table(data / "silver" / "customers", version=0)
        out[engine] = {
            "records": records,
            "tables": tables,
            "quarantine": quarantine,
            "customers_v0": history,
        }
    return out


def test_every_run_succeeded_on_its_engine(results):
    for engine, result in results.items():
        for name, record in result["records"].items():
            assert record.status == "succeeded", (engine, name, record.error)
            assert record.engine.startswith(engine if engine != "single" else "single")


@pytest.mark.parametrize("path", OUTPUTS)
@pytest.mark.parametrize("engine", ["dask", "spark"])
def test_outputs_equal_across_engines(results, path, engine):
    expected = normalise(results["single"]["tables"][path])
    assert expected, f"{path} is empty"
    assert_same_rows(normalise(results[engine]["tables"][path]), expected, f"{path} on {engine}")


@pytest.mark.parametrize("engine", ["dask", "spark"])
def test_quarantine_equal_across_engines(results, engine):
    for source in ("orders", "customers"):
        drop = ("_tf_run_id",)
        left = normalise(results[engine]["quarantine"][source], drop)
        right = normalise(results["single"]["quarantine"][source], drop)
        assert_same_rows(left, right, f"quarantine {source} on {engine}")


def test_counts_add_up_and_agree(results):
    seen = {}
    for engine, result in results.items():
        record = result["records"]["orders_clean"]
        assert record.rows_valid + record.rows_quarantined == record.rows_in
        seen[engine] = (
            record.rows_in,
            record.rows_quarantined,
            record.rows_out,
            record.quarantine_by_rule,
        )
    assert seen["single"] == seen["dask"] == seen["spark"]
    rows_in, bad, out, by_rule = seen["single"]
    assert (rows_in, bad, out) == (6_001 + 302, 10, 5_994)
    assert by_rule == {
        "orders.parse": 1, "orders.type": 1, "orders.not_null": 1, "orders.range": 1,
        "orders.allowed": 1, "orders.unique": 2, "customers.parse": 1, "customers.unique": 2,
    }  # fmt: skip


def test_merge_updated_and_inserted_the_same_rows(results):
    for engine, result in results.items():
        output = result["records"]["customers_upsert"].output
        assert output["version"] == 1, engine
        assert (output["num_target_rows_updated"], output["num_target_rows_inserted"]) == (
            40,
            20,
        ), engine
        # Time travel: version 0 is the table as generated, before the merge.
        assert result["customers_v0"].num_rows == 300


def test_split_is_identical_across_engines_and_seeded(results):
    splits = {}
    for engine, result in results.items():
        table = result["tables"]["silver/orders"]
        splits[engine] = dict(
            zip(table["order_id"].to_pylist(), table["split"].to_pylist(), strict=True)
        )
    assert splits["single"] == splits["dask"] == splits["spark"]
    counts = {s: list(splits["single"].values()).count(s) for s in ("train", "valid", "test")}
    assert abs(counts["train"] / len(splits["single"]) - 0.8) < 0.03
    assert counts["valid"] > 0 and counts["test"] > 0


# --- every transform on every tier, on in-memory frames ------------------------------------

ORDERS = pa.table({
    "order_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
    "customer_id": pa.array([10, 10, 11, 12, 99], pa.int64()),
    "product_id": ["P1", "P2", "P1", "P3", "P2"],
    "quantity": pa.array([1, 2, 3, 1, 5], pa.int64()),
    "unit_price": [9.99, 5.5, 9.99, 100.0, 5.5],
    "status": ["placed", "returned", "shipped", "delivered", "placed"],
    "ordered_at": pa.array([1704103200, 1704106800, 1704189600, 1704196800, 1704200000], pa.timestamp("s", tz="UTC")).cast(pa.timestamp("us", tz="UTC")),
})  # fmt: skip
CUSTOMERS = pa.table({
    "customer_id": pa.array([10, 11, 12], pa.int64()),
    "name": ["a", "b", "c"],
    "country": ["DE", "FR", "DE"],
    "segment": ["consumer", "business", "consumer"],
    "signup_date": pa.array([19000, 19001, 19002], pa.date32()),
})  # fmt: skip


def engine_frame(table: pa.Table, engine: str, spark: Any) -> nw.LazyFrame[Any]:
    if engine == "single":
        import polars as pl

        return nw.from_native(pl.from_arrow(table).lazy())
    if engine == "dask":
        import dask.dataframe as dd
        import pandas as pd

        return nw.from_native(
            dd.from_pandas(table.to_pandas(types_mapper=pd.ArrowDtype), npartitions=2)
        )
    from pyspark.sql.pandas.types import from_arrow_schema

    return nw.from_native(spark.createDataFrame(table.to_pylist(), from_arrow_schema(table.schema)))


def collect(frame: nw.LazyFrame[Any]) -> pa.Table:
    table = frame.collect().to_arrow()
    table = table if isinstance(table, pa.Table) else pa.table(table)
    # Dask partitions carry a pandas index; it is not part of the result.
    return table.drop_columns([c for c in table.column_names if c.startswith("__index_level")])


@pytest.mark.parametrize(
    ("name", "inputs", "params"),
    [
        ("enrich_orders", {"orders": ORDERS, "customers": CUSTOMERS}, {}),
        ("daily_revenue", {"orders": None}, {"exclude_status": "returned"}),
    ],
)
def test_every_transform_agrees_on_every_engine(name, inputs, params, spark, project_paths):
    load_transforms(("jobs.transforms",), project_paths.project)
    fn = get_transform(name)
    if inputs.get("orders") is None:
        # daily_revenue reads enrich_orders' output: compute it once on Polars.
        inputs = {"orders": collect(get_transform("enrich_orders")(
            orders=engine_frame(ORDERS, "single", spark), customers=engine_frame(CUSTOMERS, "single", spark)
        ))}  # fmt: skip
    outputs = {
        engine: normalise(
            collect(fn(**{k: engine_frame(v, engine, spark) for k, v in inputs.items()}, **params))
        )
        for engine in ENGINES
    }
    assert outputs["single"], name
    for engine in ("dask", "spark"):
        assert_same_rows(outputs[engine], outputs["single"], f"{name} on {engine}")


def test_map_arrow_runs_a_batch_function_alike_on_every_engine(spark, dask_scheduler):
    from tierflow.engines import create_engine

    class Doubled:
        """A batch function that travels to the workers, as a model's scorer does (defined
        here, so it is pickled by value: the workers need not import the tests)."""

        def __call__(self, table: pa.Table) -> pa.Table:
            import pyarrow.compute as pc

            return table.append_column("score", pc.multiply(table["x"], 2.0))

    table = pa.table({"id": pa.array(range(500), pa.int64()),
                      "x": pa.array([i / 7 for i in range(500)], pa.float64())})  # fmt: skip
    outputs = {}
    for name in ENGINES:
        engine = create_engine(
            name, engine_options(name, spark=spark, dask_scheduler=dask_scheduler)
        )
        try:
            outputs[name] = normalise(
                collect(engine.map_arrow(engine_frame(table, name, spark), Doubled()))
            )
        finally:
            engine.close()
    expected = Doubled()(table)
    assert len(outputs["single"]) == 500
    assert_same_rows(outputs["single"], normalise(expected), "map_arrow on single")
    for name in ("dask", "spark"):
        assert_same_rows(outputs[name], outputs["single"], f"map_arrow on {name}")
