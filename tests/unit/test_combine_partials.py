"""Tile partials computed per group of events and merged (what Dask does around its
shuffle) equal the partials of all the events at once, for every kind of partial."""

from __future__ import annotations

import math
import random

import pyarrow as pa

from tests.unit.test_point_in_time import STRINGS
from tests.unit.test_stream_state import HOUR, VIEW
from tierflow.config.features import FeatureViewConfig
from tierflow.engines.polars_engine import PolarsEngine
from tierflow.features.batch import combine_partials, prepare_events, tile_partials


def _events(rng: random.Random, view: FeatureViewConfig, n: int) -> pa.Table:
    t0 = 1_700_000_000_000_000 // HOUR * HOUR
    # Few keys and hours, so that most tiles get events from several groups, and equal
    # times within a tile, so that the last value's tie-break is exercised.
    times = [t0 + rng.randrange(0, 6) * HOUR + rng.choice([0, 5, 5, 90]) * 60_000_000
             for _ in range(n)]  # fmt: skip
    columns = {
        "k": pa.array([rng.choice("abc") for _ in range(n)], pa.string()),
        "ts": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "x": pa.array([rng.choice([None, 2.5, -1.0, float(rng.randrange(60))]) for _ in range(n)]),
    }
    names = view.source.columns
    if "n" in names:
        columns["n"] = pa.array([rng.randrange(0, 6) for _ in range(n)], pa.int64())
    if "page" in names:
        columns["page"] = pa.array([rng.choice([None, "a", "b", "zz", ""]) for _ in range(n)])
    return pa.table(columns)


def _rows(table: pa.Table, view: FeatureViewConfig) -> list[tuple[object, ...]]:
    keys = [*view.entities, "_tf_tile"]
    rows = table.sort_by([(k, "ascending") for k in keys]).to_pylist()
    return [tuple((round(v, 9) if isinstance(v, float) and not math.isnan(v) else v)
                  for v in r.values()) for r in rows]  # fmt: skip


def test_partials_merged_from_groups_equal_the_partials_of_all_events() -> None:
    engine = PolarsEngine()
    rng = random.Random(11)
    for view in (VIEW, STRINGS):
        for _ in range(5):
            table = _events(rng, view, 300)
            events = prepare_events(engine.from_arrow(table), view, engine)
            whole = engine.collect_arrow(tile_partials(events, view))
            # Three groups of events, as three source partitions would hold them.
            group = pa.array([rng.randrange(3) for _ in range(table.num_rows)], pa.int64())
            parts = []
            for g in range(3):
                part = table.filter(pa.compute.equal(group, g))
                prepared = prepare_events(engine.from_arrow(part), view, engine)
                parts.append(engine.collect_arrow(tile_partials(prepared, view)))
            stacked = pa.concat_tables(parts, promote_options="permissive")
            assert stacked.num_rows > whole.num_rows  # tiles split across groups
            merged = engine.collect_arrow(combine_partials(engine.from_arrow(stacked), view))
            assert merged.column_names == whole.column_names
            assert _rows(merged, view) == _rows(whole, view)
