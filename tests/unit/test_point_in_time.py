"""A training set's lookup (values computed at the labels' probes) equals reading the
view's window rows as of each label's time, on random events and labels."""

from __future__ import annotations

import math
import random
from typing import Any

import pyarrow as pa

from tests.unit.test_stream_state import HOUR, VIEW, events
from tierflow.config.features import FeatureViewConfig
from tierflow.engines.polars_engine import PolarsEngine
from tierflow.features.batch import (
    WINDOW_END,
    feature_rows,
    latest_values,
    point_in_time,
    values_as_of,
)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def test_probed_values_equal_the_window_rows_as_of_each_label() -> None:
    engine = PolarsEngine()
    table = events(11, 500)
    times = table.column("ts").cast(pa.int64()).to_pylist()
    rng = random.Random(3)
    low, high = min(times) - 3 * HOUR, max(times) + 30 * HOUR
    labels = pa.table(
        {
            "id": pa.array(range(300), pa.int64()),
            "k": [rng.choice("abcdefghijklmnopqrstz") for _ in range(300)],
            "at": pa.array(
                [rng.choice([rng.randrange(low, high)] + [times[rng.randrange(len(times))]
                             + rng.randrange(0, 2 * HOUR)] * 3) for _ in range(300)],
                pa.int64(),
            ).cast(pa.timestamp("us", tz="UTC")),
        }
    )  # fmt: skip
    joined = engine.collect_arrow(
        point_in_time(
            engine.from_arrow(labels), "at", [(VIEW, {}, engine.from_arrow(table))], engine
        )
    )
    rows = engine.collect_arrow(feature_rows(engine.from_arrow(table), VIEW, engine)).to_pylist()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r[WINDOW_END]):
        by_key.setdefault(row["k"], []).append(row)
    compared = 0
    for label in joined.to_pylist():
        t = int(label["at"].timestamp() * 1_000_000)
        grid = t // VIEW.step_us * VIEW.step_us
        before = [r for r in by_key.get(label["k"], []) if r[WINDOW_END] <= grid]
        for f in VIEW.features:
            want = before[-1][f.name] if before else (0 if f.agg == "count" else None)
            if isinstance(want, float) and math.isnan(want):
                want = None
            got = label[VIEW.column_name(f)]
            assert (got is None and want is None) or same(got, want), (label, f.name, got, want)
            compared += 1
    assert compared == 300 * len(VIEW.features)
    # Most labels see events: the comparison is not one of empty windows.
    assert sum(1 for label in joined.to_pylist() if label["v__x_count_3h"]) > 60


STRINGS = FeatureViewConfig.model_validate(
    {
        "name": "s",
        "entities": ["k"],
        "event_time": "ts",
        "step": "1h",
        "ttl": "1d",
        "source": {
            "format": "delta",
            "path": "t",
            "columns": {
                "k": {"type": "string", "nullable": False},
                "ts": {"type": "timestamp"},
                "page": {"type": "string"},
                "x": {"type": "float64"},
            },
        },
        "features": [
            {"name": "page_min_3h", "agg": "min", "column": "page", "window": "3h"},
            {"name": "page_max_2h", "agg": "max", "column": "page", "window": "2h"},
            {"name": "page_last_4h", "agg": "last", "column": "page", "window": "4h"},
            {"name": "x_min_5h", "agg": "min", "column": "x", "window": "5h"},
            {"name": "x_max_1h", "agg": "max", "column": "x"},
        ],
    }
)


def test_windows_of_strings_and_numbers_equal_a_direct_computation() -> None:
    """Against the definition itself: each label's window events, picked one by one."""
    rng = random.Random(5)
    t0 = 1_700_000_000_000_000 // HOUR * HOUR
    rows = [
        {
            "k": rng.choice("ab"),
            "ts": t0 + rng.randrange(-3 * HOUR, 40 * HOUR),
            "page": rng.choice([None, "a", "b", "zz", ""]),
            "x": rng.choice([None, 1.5, -4.0, float(rng.randrange(100))]),
        }
        for _ in range(400)
    ]
    ts = pa.timestamp("us", tz="UTC")
    table = pa.table(
        {
            "k": [r["k"] for r in rows],
            "ts": pa.array([r["ts"] for r in rows], pa.int64()).cast(ts),
            "page": pa.array([r["page"] for r in rows], pa.string()),
            "x": pa.array([r["x"] for r in rows], pa.float64()),
        }
    )
    moments = [t0 + rng.randrange(-5 * HOUR, 48 * HOUR) for _ in range(200)]
    labels = pa.table(
        {
            "id": pa.array(range(200), pa.int64()),
            "k": [rng.choice("abc") for _ in range(200)],
            "at": pa.array(moments, pa.int64()).cast(ts),
        }
    )
    engine = PolarsEngine()
    got = engine.collect_arrow(
        point_in_time(
            engine.from_arrow(labels), "at", [(STRINGS, {}, engine.from_arrow(table))], engine
        )
    ).to_pylist()
    assert len(got) == 200
    filled = 0
    for label in got:
        grid = int(label["at"].timestamp() * 1_000_000) // HOUR * HOUR
        for f in STRINGS.features:
            w = STRINGS.window_tiles(f) * HOUR
            inside = [r for r in rows if r["k"] == label["k"] and grid - w <= r["ts"] < grid]
            present = [r for r in inside if r[f.column] is not None]
            if not present:
                want = None
            elif f.agg == "min":
                want = min(r[f.column] for r in present)
            elif f.agg == "max":
                want = max(r[f.column] for r in present)
            else:
                want = max(present, key=lambda r: (r["ts"], r[f.column]))[f.column]
            assert label[STRINGS.column_name(f)] == want, (label, f.name, want)
            filled += want is not None
    assert filled > 300


def test_latest_values_equal_the_window_rows_read_as_of() -> None:
    """What materialization writes: each entity's values at one time, computed at one
    probe per entity, equal the latest window row at or before that time."""
    engine = PolarsEngine()
    table = events(13, 400)
    times = table.column("ts").cast(pa.int64()).to_pylist()
    rows = feature_rows(engine.from_arrow(table), VIEW, engine)
    names = ["k", WINDOW_END, *[f.name for f in VIEW.features]]

    def keyed(frame: Any) -> dict[str, tuple[Any, ...]]:
        return {r["k"]: tuple(r[n] for n in names) for r in engine.collect_arrow(frame).to_pylist()}

    # Before the first event, inside the events (also mid-step), at the edge where some
    # entities' windows have all emptied, and long after every event.
    moments = [min(times) - HOUR, *sorted(random.Random(7).sample(times, 6)), max(times)]
    moments += [max(times) + 2 * HOUR + 1, max(times) + 40 * HOUR]
    checked = 0
    for as_of in moments:
        want = keyed(values_as_of(rows, VIEW, as_of))
        got = keyed(latest_values(engine.from_arrow(table), VIEW, engine, as_of))
        assert got.keys() == want.keys(), as_of
        for key, row in want.items():
            assert all(
                (
                    (a is None or (isinstance(a, float) and math.isnan(a)))
                    and (b is None or (isinstance(b, float) and math.isnan(b)))
                )
                or same(a, b)
                for a, b in zip(got[key], row, strict=True)
            ), (as_of, key, got[key], row)
            checked += 1
    assert checked > 100
