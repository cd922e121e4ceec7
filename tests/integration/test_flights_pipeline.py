"""The NYC flights pipeline's jobs on every tier, against the reference and each other.

January of the real data goes from the raw CSV drop through ``flights_bronze`` ...
``flight_labels`` on Polars, Dask (the session's scheduler) and Spark. Every tier must
write the same tables and quarantine the same rows, and the silver tables must equal the
independent pyarrow reference of :mod:`tierflow.examples.flights` that the feature tests
use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.support import (
    ENGINES,
    assert_same_rows,
    engine_options,
    normalise,
    project_for,
    read_table,
)
from tierflow.examples.flights import (
    PIPELINE_JOBS,
    flights_table,
    write_labels,
    write_raw,
    write_weather,
)

pytestmark = [pytest.mark.spark, pytest.mark.dask, pytest.mark.slow]

MONTHS = (1,)
TABLES = (
    "bronze/flights",
    "bronze/weather",
    "bronze/planes",
    "silver/flights",
    "silver/weather",
    "silver/labels",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory, spark, dask_scheduler) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for engine in ENGINES:
        data = tmp_path_factory.mktemp(f"flights-{engine}") / "data"
        write_raw(data, months=MONTHS)
        project = project_for(data)
        options = engine_options(engine, spark=spark, dask_scheduler=dask_scheduler)
        records = {
            name: project.run(project.load_job(name), engine=engine, options=options, echo=False)
            for name in PIPELINE_JOBS
        }
        tables = {path: read_table(data / path) for path in TABLES}
        quarantined = read_table(data / "_quarantine" / "flights_silver" / "flights")
        out[engine] = {"records": records, "tables": tables, "quarantine": quarantined}
    return out


def test_every_job_succeeds_and_counts_add_up(results):
    for engine, result in results.items():
        for name, record in result["records"].items():
            assert record.status == "succeeded", (engine, name, record.error)
            assert record.engine.split(" ")[0] == engine
            assert record.rows_in == record.rows_valid + record.rows_quarantined, (engine, name)
        silver = result["records"]["flights_silver"]
        # January's real anomalies: arrivals without a delay, and impossible speeds.
        assert silver.quarantine_by_rule["flights.check arrival_has_a_delay"] > 0, engine
        weather = result["records"]["weather_silver"]
        assert weather.rows_quarantined == 0, engine  # the 1,048 mph gust is in February


def test_tiers_write_the_same_tables(results):
    reference = results["single"]
    for engine in ("dask", "spark"):
        for path in TABLES:
            assert_same_rows(
                normalise(results[engine]["tables"][path]),
                normalise(reference["tables"][path]),
                f"{engine}: {path}",
            )
        by_rule = {e: r["records"]["flights_silver"].quarantine_by_rule for e, r in results.items()}
        assert by_rule[engine] == by_rule["single"]
        ids = {e: sorted(r["quarantine"]["flight_id"].to_pylist()) for e, r in results.items()}
        assert ids[engine] == ids["single"]


def _same_columns(got: pa.Table, want: pa.Table, key: str) -> None:
    got = got.sort_by(key)
    want = want.filter(pc.is_in(want[key], got[key])).sort_by(key)
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        left = got[name].combine_chunks()
        right = want[name].combine_chunks().cast(left.type)
        assert left.equals(right), name


def test_silver_equals_the_reference(results, tmp_path: Path):
    tables = results["single"]["tables"]
    reference = flights_table(MONTHS).drop_columns(["month"])
    _same_columns(tables["silver/flights"].select(reference.column_names), reference, "flight_id")
    write_labels(tmp_path, MONTHS)
    write_weather(tmp_path, MONTHS)
    labels = read_table(tmp_path / "silver" / "labels")
    _same_columns(tables["silver/labels"], labels, "flight_id")
    weather = read_table(tmp_path / "silver" / "weather")
    got = tables["silver/weather"]
    assert got.num_rows == weather.num_rows  # January has no quarantined reading
    key = ["origin", "obs_at"]
    assert (
        got.select(weather.column_names)
        .sort_by([(k, "ascending") for k in key])
        .equals(weather.sort_by([(k, "ascending") for k in key]))
    )


def test_the_profile_with_a_target_runs_on_every_tier(results, tmp_path, spark, dask_scheduler):
    reports = {}
    for engine in ENGINES:
        data = Path(str(results[engine]["records"]["flights_silver"].output["path"])).parents[1]
        project = project_for(data)
        out, plan = project.profile(
            "silver/flights",
            target="arr_delay",
            engine=engine,
            options=engine_options(engine, spark=spark, dask_scheduler=dask_scheduler),
            out=tmp_path / f"{engine}.html",
        )
        assert f"engine: {engine}" in plan
        reports[engine] = out.read_text()
    for engine, page in reports.items():
        # Every tier profiles every column, with the target's mean per carrier.
        assert page.count("<section id='col-") >= 20, engine
        assert "arr_delay" in page and "UA" in page, engine
