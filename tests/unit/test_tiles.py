"""The stream's Arrow kernel computes exactly the tile partials batch computes.

Random events (two-column entities, nulls, ties on time and on value, strings, events
before the epoch, a filter and a derived column) go through both
:func:`tierflow.features.batch.tile_partials` on Polars and
:func:`tierflow.features.tiles.arrow_tile_partials`; every partial must be equal.
"""

from __future__ import annotations

import math
import random
from typing import Any

import narwhals as nw
import polars as pl
import pyarrow as pa
import pytest

from tierflow.config.features import FeatureViewConfig
from tierflow.engines.polars_engine import PolarsEngine
from tierflow.features.batch import _TILE, prepare_events, tile_partials
from tierflow.features.tiles import arrow_tile_partials, prepare_arrow_events

MINUTE = 60_000_000

VIEW = FeatureViewConfig.model_validate(
    {
        "name": "v",
        "entities": ["region", "user"],
        "event_time": "ts",
        "step": "15m",
        "ttl": "1d",
        "source": {
            "format": "delta",
            "path": "t",
            "columns": {
                "region": {"type": "string", "nullable": False},
                "user": {"type": "int64"},
                "ts": {"type": "timestamp"},
                "x": {"type": "float64"},
                "n": {"type": "int64"},
                "page": {"type": "string"},
            },
        },
        "filter": "n != 3",
        "derived": {"long": "x > 40"},
        "features": [
            {"name": "rows", "agg": "count"},
            {"name": "x_count", "agg": "count", "column": "x", "window": "30m"},
            {"name": "x_std", "agg": "stddev", "column": "x", "window": "45m"},
            {"name": "x_min", "agg": "min", "column": "x"},
            {"name": "x_max", "agg": "max", "column": "x", "window": "30m"},
            {"name": "x_last", "agg": "last", "column": "x", "window": "30m"},
            {"name": "n_sum", "agg": "sum", "column": "n"},
            {"name": "page_last", "agg": "last", "column": "page", "window": "1h"},
            {"name": "page_min", "agg": "min", "column": "page"},
            {"name": "page_max", "agg": "max", "column": "page", "window": "30m"},
            {"name": "long_rate", "agg": "mean", "column": "long", "window": "1h"},
        ],
    }
)

# Only counts: no column partials at all.
COUNTS = VIEW.model_copy(update={"features": [VIEW.features[0]], "filter": None, "derived": None})


def events(seed: int, count: int) -> pa.Table:
    """Events around the epoch (some before it), with many ties and nulls."""
    rng = random.Random(seed)
    base = rng.choice([0, 1_700_000_000_000_000])
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        rows.append(
            {
                "region": rng.choice(["eu", "us", 'q"t', "ü"]),
                "user": rng.choice([None, 1, 2, -7]),
                "ts": rng.choice([None, base + rng.randrange(-90, 90) * MINUTE, base + 7 * MINUTE]),
                "x": rng.choice([None, 1.5, 42.0, float(rng.randrange(-100, 100))]),
                "n": rng.choice([None, 0, 3, rng.randrange(0, 10)]),
                "page": rng.choice([None, "a", "b", "zz", ""]),
            }
        )
    return pa.table(
        {
            "region": pa.array([r["region"] for r in rows], pa.string()),
            "user": pa.array([r["user"] for r in rows], pa.int64()),
            "ts": pa.array([r["ts"] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "x": pa.array([r["x"] for r in rows], pa.float64()),
            "n": pa.array([r["n"] for r in rows], pa.int64()),
            "page": pa.array([r["page"] for r in rows], pa.string()),
        }
    )


def by_group(table: pa.Table, view: FeatureViewConfig) -> dict[tuple[Any, ...], dict[str, Any]]:
    keys = [*view.entities, _TILE]
    out = {}
    for row in table.to_pylist():
        out[tuple(row[k] for k in keys)] = {k: v for k, v in row.items() if k not in keys}
    return out


def plain(kind: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_large_string(kind) else kind


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return bool(a == b) and type(a) is type(b)


def batch_partials(table: pa.Table, view: FeatureViewConfig) -> pa.Table:
    frame = nw.from_native(pl.from_arrow(table).lazy())  # type: ignore[union-attr]
    prepared = prepare_events(frame, view, PolarsEngine(), judge_event_time=False)
    return tile_partials(prepared, view).to_native().collect().to_arrow()


@pytest.mark.parametrize("view", [VIEW, COUNTS], ids=["every-kind", "counts-only"])
@pytest.mark.parametrize(("seed", "count"), [(1, 1), (2, 5), (3, 60), (4, 400), (5, 0)])
def test_arrow_kernel_equals_batch(view: FeatureViewConfig, seed: int, count: int) -> None:
    table = events(seed, count)
    expected = batch_partials(table, view)
    got = arrow_tile_partials(prepare_arrow_events(table, view), view)
    assert sorted(got.column_names) == sorted(expected.column_names)
    for name in expected.column_names:
        # Polars hands strings out as large_string; the values are what must agree.
        assert plain(got.schema.field(name).type) == plain(expected.schema.field(name).type)
    want, have = by_group(expected, view), by_group(got, view)
    assert set(have) == set(want)
    for group, values in want.items():
        for name, value in values.items():
            assert same(have[group][name], value), (group, name, have[group][name], value)


def test_ties_on_time_pick_the_largest_value() -> None:
    """The documented rule for ``last``, checked on hand-made rows."""
    t = 1_700_000_000_000_000
    table = events(0, 0).cast(events(0, 0).schema)
    rows = pa.table(
        {
            "region": ["eu"] * 4,
            "user": [1] * 4,
            "ts": pa.array([t, t, t, t - 1], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "x": [5.0, 9.0, None, 99.0],
            "n": [0, 0, 0, 0],
            "page": ["b", "a", "c", None],
        },
        schema=table.schema,
    )
    got = arrow_tile_partials(prepare_arrow_events(rows, VIEW), VIEW).to_pylist()
    assert len(got) == 1
    assert got[0]["_tf_lval__x"] == 9.0
    assert got[0]["_tf_lval__page"] == "c"
    assert got[0]["_tf_rows__*"] == 4
