"""A training set's lookup (values computed at the labels' probes) equals reading the
view's window rows as of each label's time, on random events and labels."""

from __future__ import annotations

import math
import random
from typing import Any

import pyarrow as pa

from tests.unit.test_stream_state import HOUR, VIEW, events
from tierflow.engines.polars_engine import PolarsEngine
from tierflow.features.batch import WINDOW_END, feature_rows, point_in_time


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
