"""Feature views on real data (NYC flights, January 2013), on every tier.

Batch values are checked against DuckDB SQL written independently (a range join of every
hourly grid point with the raw events); point-in-time joins are pinned at the window
edges; training-set snapshots are rebuilt from their recorded recipe.
"""

from __future__ import annotations

import bisect
import math
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.support import ENGINES, assert_same_rows, engine_options, normalise, project_for
from tierflow.config.features import FeatureViewConfig
from tierflow.engines import create_engine
from tierflow.examples.flights import write_flights, write_labels, write_weather
from tierflow.features import training
from tierflow.features.batch import WINDOW_END, feature_rows, point_in_time
from tierflow.jobs.runner import read_source

pytestmark = [pytest.mark.spark, pytest.mark.dask, pytest.mark.slow]
UTC = timezone.utc
HOUR = 3_600_000_000


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    data = tmp_path_factory.mktemp("flights") / "data"
    write_flights(data, months=(1,))
    write_labels(data, months=(1,))
    write_weather(data, months=(1,))
    return data


def session_engine(name, spark, dask_scheduler):
    """An engine of tier ``name`` on the session's Spark and Dask."""
    return create_engine(name, engine_options(name, spark=spark, dask_scheduler=dask_scheduler))


@pytest.fixture
def engine_for(spark, dask_scheduler):
    made = []

    def make(name):
        engine = session_engine(name, spark, dask_scheduler)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.fixture(scope="module")
def snapshots(flights, tmp_path_factory, spark, dask_scheduler):
    """The training set built once on each tier, before any test changes the sources
    (a Spark build costs half a minute here: the tests share these)."""
    project = project_for(flights)
    views = project.feature_views()
    config = project.training_set("flight_delays")
    folder = tmp_path_factory.mktemp("snapshots")
    built = {"flights_version": DeltaTable(str(flights / "silver" / "flights")).version()}
    for name in ENGINES:
        engine = session_engine(name, spark, dask_scheduler)
        try:
            built[name] = training.build(
                config, views, engine, flights, out_path=str(folder / name)
            )
        finally:
            engine.close()
    return built


DUCKDB_CARRIER = """
WITH ev AS (
    SELECT carrier, epoch_us(dep_at) AS t, dep_delay AS d,
           CASE WHEN dep_delay > 15 THEN 1.0 ELSE 0.0 END AS late
    FROM flights WHERE dep_delay IS NOT NULL AND dep_at IS NOT NULL
),
grid AS (
    SELECT c.carrier, g.range AS e
    FROM (SELECT DISTINCT carrier FROM ev) c, range({start}, {end}, {hour}) g
),
win AS (
    SELECT grid.carrier, grid.e, ev.t, ev.d, ev.late
    FROM grid LEFT JOIN ev ON ev.carrier = grid.carrier AND ev.t >= grid.e - 24 * {hour} AND ev.t < grid.e
),
latest AS (SELECT carrier, e, max(t) AS tmax FROM win GROUP BY carrier, e)
SELECT win.carrier, win.e,
       avg(d) FILTER (WHERE t >= win.e - {hour}) AS dep_delay_mean_1h,
       avg(d) AS dep_delay_mean_24h,
       count(t) AS departures_24h,
       avg(late) AS late_rate_24h,
       stddev_samp(d) AS dep_delay_std_24h,
       max(d) AS dep_delay_max_24h,
       max(d) FILTER (WHERE t = latest.tmax) AS last_dep_delay
FROM win JOIN latest ON latest.carrier = win.carrier AND latest.e = win.e
GROUP BY win.carrier, win.e
"""

DUCKDB_ROUTE = """
WITH ev AS (
    SELECT origin, dest, epoch_us(arr_at) AS t, arr_delay AS d
    FROM flights WHERE arr_delay IS NOT NULL AND arr_at IS NOT NULL
),
grid AS (
    SELECT r.origin, r.dest, g.range AS e
    FROM (SELECT DISTINCT origin, dest FROM ev) r, range({start}, {end}, {day}) g
)
SELECT grid.origin, grid.dest, grid.e,
       count(ev.t) AS arrivals_7d, avg(ev.d) AS arr_delay_mean_7d, min(ev.d) AS arr_delay_min_7d
FROM grid LEFT JOIN ev ON ev.origin = grid.origin AND ev.dest = grid.dest
    AND ev.t >= grid.e - 7 * {day} AND ev.t < grid.e
GROUP BY grid.origin, grid.dest, grid.e
"""


def as_of_lookup(rows: pa.Table, view: FeatureViewConfig):
    """Our semantics at any grid point: the latest row at or before it, else empty."""
    by_entity: dict[tuple, list[dict]] = {}
    for row in sorted(rows.to_pylist(), key=lambda r: r[WINDOW_END]):
        by_entity.setdefault(tuple(row[e] for e in view.entities), []).append(row)
    ends = {k: [r[WINDOW_END] for r in v] for k, v in by_entity.items()}

    def lookup(entity: tuple, e: int) -> dict:
        at = bisect.bisect_right(ends.get(entity, []), e) - 1
        if at < 0:
            return {f.name: 0 if f.agg == "count" else None for f in view.features}
        return by_entity[entity][at]

    return lookup


def close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("engine_name", ENGINES)
def test_batch_values_equal_an_independent_duckdb_computation(flights, engine_for, engine_name):
    project = project_for(flights)
    views = project.feature_views()
    engine = engine_for(engine_name)
    con = duckdb.connect()
    con.register("flights", DeltaTable(str(flights / "silver" / "flights")).to_pyarrow_table())
    start = int(datetime(2013, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    end = int(datetime(2013, 2, 3, tzinfo=UTC).timestamp() * 1e6)
    checks = [
        ("carrier_delays", DUCKDB_CARRIER.format(start=start, end=end, hour=HOUR)),
        ("route_history", DUCKDB_ROUTE.format(start=start, end=end, day=24 * HOUR)),
    ]
    for name, sql in checks:
        view = views[name]
        rows = engine.collect_arrow(
            feature_rows(read_source(engine, project.view_source(view)), view, engine)
        )
        lookup = as_of_lookup(rows, view)
        expected = con.sql(sql).arrow()
        expected = expected.read_all() if hasattr(expected, "read_all") else expected
        compared = 0
        for row in expected.to_pylist():
            entity = tuple(row[e] for e in view.entities)
            ours = lookup(entity, row["e"])
            for feature in view.features:
                assert close(ours[feature.name], row[feature.name]), (
                    name, engine_name, entity, datetime.fromtimestamp(row["e"] / 1e6, UTC), feature.name,
                    ours[feature.name], row[feature.name],
                )  # fmt: skip
                compared += 1
        assert compared > 10_000, compared


PIT_VIEW = FeatureViewConfig.model_validate({
    "name": "pit", "entities": ["k"], "event_time": "ts", "step": "1h", "ttl": "1d",
    "source": {"format": "parquet", "path": "unused", "columns": {
        "k": {"type": "string"}, "ts": {"type": "timestamp"}, "x": {"type": "float64"}}},
    "features": [
        {"name": "n", "agg": "count", "window": "2h"},
        {"name": "total", "agg": "sum", "column": "x", "window": "2h"},
    ],
})  # fmt: skip
GRID = datetime(2024, 1, 1, 12, tzinfo=UTC)  # a grid point
US = timedelta(microseconds=1)
EVENTS = [  # (entity, time, value)
    ("a", GRID - US, 1.0),  # inside [10:00, 12:00): counts at 12:00
    ("a", GRID, 10.0),  # at the window's end: belongs to the next window
    ("a", GRID + US, 10_000.0),  # one microsecond after label 1's time
    ("a", GRID - timedelta(hours=2), 100.0),  # exactly at the start: inside
    ("a", GRID - timedelta(hours=2) - US, 1000.0),  # just before the start: outside
    ("b", GRID + timedelta(minutes=10), 5.0),  # after the last closed window of 12:30
    ("b", GRID + timedelta(minutes=30) + US, 7.0),  # one microsecond after the label
]
LABELS = [  # (id, entity, time) -> expected (n, total)
    (1, "a", GRID, (2, 101.0)),
    (2, "a", GRID - US, (2, 1100.0)),  # window ending 11:00: [9:00, 11:00)
    (3, "b", GRID + timedelta(minutes=30), (0, None)),  # 12:00 window is empty for b
    (4, "b", GRID + timedelta(hours=1), (2, 12.0)),  # [11:00, 13:00) holds 12:10 and 12:30+1us
    (5, "c", GRID, (0, None)),  # an entity with no events at all
]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_point_in_time_never_leaks_and_pins_window_edges(engine_name, engine_for):
    engine = engine_for(engine_name)
    ts = pa.timestamp("us", tz="UTC")
    events = pa.table({
        "k": [e[0] for e in EVENTS], "ts": pa.array([e[1] for e in EVENTS], ts), "x": [e[2] for e in EVENTS],
    })  # fmt: skip
    labels = pa.table({
        "id": pa.array([label[0] for label in LABELS], pa.int64()), "k": [label[1] for label in LABELS],
        "at": pa.array([label[2] for label in LABELS], ts),
    })  # fmt: skip
    joined = engine.collect_arrow(
        point_in_time(
            engine.from_arrow(labels), "at", [(PIT_VIEW, {}, engine.from_arrow(events))], engine
        )
    )
    got = {r["id"]: (r["pit__n"], r["pit__total"]) for r in joined.to_pylist()}
    assert got == {label[0]: label[3] for label in LABELS}


@pytest.mark.parametrize("engine_name", ["single", "spark"])
def test_training_set_rebuilds_identically_from_its_recipe(
    flights, snapshots, tmp_path, engine_for, engine_name
):
    first = snapshots[engine_name]
    assert first.rows == DeltaTable(str(flights / "silver" / "labels")).to_pyarrow_table().num_rows
    recipe = training.read_recipe(first.path, first.version)
    assert recipe["inputs"]["carrier_delays"]["version"] == snapshots["flights_version"]
    assert set(recipe["views"]) == {
        "carrier_delays",
        "origin_delays",
        "route_history",
        "origin_weather",
    }

    # New data arrives after the build; the rebuild must still use the recorded versions.
    source = flights / "silver" / "flights"
    extra = DeltaTable(str(source)).to_pyarrow_table().slice(0, 500)
    write_deltalake(str(source), extra, mode="append")
    try:
        again = training.rebuild(
            first.path,
            engine_for(engine_name),
            flights,
            out_path=str(tmp_path / "rebuilt"),
            version=first.version,
        )
    finally:
        DeltaTable(str(source)).restore(recipe["inputs"]["carrier_delays"]["version"])
    original = normalise(pa.table(DeltaTable(first.path).to_pyarrow_table()))
    rebuilt = normalise(pa.table(DeltaTable(str(tmp_path / "rebuilt")).to_pyarrow_table()))
    assert_same_rows(rebuilt, original, f"rebuilt snapshot on {engine_name}")
    assert again.recipe["inputs"] == recipe["inputs"]


@pytest.mark.minio
def test_a_training_set_on_object_storage_equals_the_local_one(
    flights, tmp_path, engine_for, object_store
):
    """Built into MinIO, its recipe read back from there and rebuilt into MinIO: the
    same rows as the build into a local folder."""
    from tierflow import storage

    project = project_for(flights)
    views = project.feature_views()
    config = project.training_set("flight_delays")
    engine = engine_for("single")
    local = training.build(config, views, engine, flights, out_path=str(tmp_path / "snapshot"))
    remote_path = f"{object_store}/gold/training"
    remote = training.build(config, views, engine, flights, out_path=remote_path)
    assert remote.rows == local.rows > 0
    recipe = training.read_recipe(remote_path, remote.version)
    assert recipe["inputs"] == local.recipe["inputs"]
    rebuilt = training.rebuild(
        remote_path, engine, flights, out_path=f"{object_store}/gold/rebuilt",
        version=remote.version,
    )  # fmt: skip
    expected = normalise(pa.table(DeltaTable(str(tmp_path / "snapshot")).to_pyarrow_table()))
    for path in (remote_path, rebuilt.path):
        got = normalise(pa.table(storage.delta_table(path).to_pyarrow_table()))
        assert_same_rows(got, expected, path)


def test_training_sets_agree_across_engines(snapshots):
    outputs = {
        name: normalise(pa.table(DeltaTable(snapshots[name].path).to_pyarrow_table()))
        for name in ENGINES
    }
    assert outputs["single"]
    assert_same_rows(outputs["dask"], outputs["single"], "training set on dask")
    assert_same_rows(outputs["spark"], outputs["single"], "training set on spark")


def test_dask_merges_partials_of_entities_spread_over_partitions(dask_scheduler):
    """Every entity's events spread over four Dask partitions (so its tiles' partials are
    computed in several, moved and merged): the window rows equal the single-node tier's."""
    import random

    import dask.dataframe as dd
    import narwhals as nw
    import pandas as pd

    from tests.unit.test_stream_state import VIEW

    rng = random.Random(23)
    t0 = 1_700_000_000_000_000 // HOUR * HOUR
    n = 4_000
    table = pa.table({
        "k": pa.array([rng.choice("abcdefg") for _ in range(n)], pa.string()),
        "ts": pa.array([t0 + rng.randrange(0, 30 * HOUR) for _ in range(n)], pa.int64())
              .cast(pa.timestamp("us", tz="UTC")),
        "x": pa.array([rng.choice([None, 1.5, float(rng.randrange(90))]) for _ in range(n)]),
        "n": pa.array([rng.randrange(0, 6) for _ in range(n)], pa.int64()),
    })  # fmt: skip
    single = create_engine("single", engine_options("single"))
    dask = create_engine("dask", engine_options("dask", dask_scheduler=dask_scheduler))
    try:
        want = single.collect_arrow(feature_rows(single.from_arrow(table), VIEW, single))
        spread = nw.from_native(
            dd.from_pandas(table.to_pandas(types_mapper=pd.ArrowDtype), npartitions=4, sort=False)
        )
        got = dask.collect_arrow(feature_rows(spread, VIEW, dask))
    finally:
        dask.close()
        single.close()
    assert want.num_rows > 100
    assert_same_rows(normalise(got), normalise(want), "window rows on dask")
