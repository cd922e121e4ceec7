"""The stream's incremental windows equal the batch computation, whatever the batching.

Pure logic, no Kafka: random events go through the daemon's own steps (late judgement,
tile partials by the Arrow kernel, window state, emission) in random batch sizes, with
state saved and restored in between; the emitted rows, applied the way the online store
applies them, must equal batch values at the stream's grid point.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pyarrow as pa
import pytest

from tierflow.config.features import FeatureViewConfig
from tierflow.engines.polars_engine import PolarsEngine
from tierflow.features.batch import WINDOW_END, feature_rows, values_as_of
from tierflow.io.textdecode import decode_json_messages
from tierflow.stores.base import entity_key
from tierflow.stream.events import TopicSchema, batch_partials, check_messages, event_times_us
from tierflow.stream.state import EntityState, ViewState

HOUR = 3_600_000_000
VIEW = FeatureViewConfig.model_validate(
    {
        "name": "v",
        "entities": ["k"],
        "event_time": "ts",
        "step": "1h",
        "ttl": "1d",
        "allowed_lateness": "30m",
        "source": {
            "format": "delta",
            "path": "t",
            "topic": "t",
            "columns": {
                "k": {"type": "string", "nullable": False},
                "ts": {"type": "timestamp"},
                "x": {"type": "float64"},
                "n": {"type": "int64", "min": 0},
            },
        },
        "filter": "n != 3",
        "derived": {"big": "x > 50"},
        "features": [
            {"name": "rows_1h", "agg": "count"},
            {"name": "x_count_3h", "agg": "count", "column": "x", "window": "3h"},
            {"name": "x_sum_3h", "agg": "sum", "column": "x", "window": "3h"},
            {"name": "x_mean_1h", "agg": "mean", "column": "x"},
            {"name": "x_min_4h", "agg": "min", "column": "x", "window": "4h"},
            {"name": "x_max_2h", "agg": "max", "column": "x", "window": "2h"},
            {"name": "x_last_3h", "agg": "last", "column": "x", "window": "3h"},
            {"name": "x_std_3h", "agg": "stddev", "column": "x", "window": "3h"},
            {"name": "big_rate_2h", "agg": "mean", "column": "big", "window": "2h"},
        ],
    }
)


def events(seed: int, count: int) -> pa.Table:
    """Mostly time-ordered events, some shuffled back by up to 40 minutes; ties on time."""
    rng = random.Random(seed)
    t0 = 1_700_000_000_000_000 // HOUR * HOUR
    rows: list[dict[str, Any]] = []
    clock = t0
    for _ in range(count):
        clock += rng.choice([0, 1, 60_000_000, 600_000_000, 3 * HOUR // 2])
        jitter = rng.choice([0, 0, -rng.randrange(0, 45 * 60_000_000)])
        x = rng.choice([None, float(rng.randrange(0, 100)), rng.randrange(0, 1000) / 8])
        rows.append(
            {
                "k": rng.choice("abcdefghijklmnopqrst"),
                "ts": clock + jitter,
                "x": x,
                "n": rng.randrange(0, 5),
            }
        )
    return pa.table(
        {
            "k": pa.array([r["k"] for r in rows], pa.string()),
            "ts": pa.array([r["ts"] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "x": pa.array([r["x"] for r in rows], pa.float64()),
            "n": pa.array([r["n"] for r in rows], pa.int64()),
        }
    )


Snapshot = tuple[dict[str, Any], int, pa.Table]  # store, grid index, accepted so far


def stream(table: pa.Table, seed: int) -> list[Snapshot]:
    """Run the table through the stream steps; snapshots of the 'store' along the way."""
    rng = random.Random(seed)
    state = ViewState(VIEW)
    store: dict[str, tuple[int, dict[str, Any]]] = {}
    accepted: list[pa.Table] = []
    snapshots: list[Snapshot] = []
    at = batches = 0
    while at < table.num_rows:
        batches += 1
        size = rng.choice([1, 2, 7, 50, 300])
        batch = table.slice(at, size)
        at += size
        late = state.late_flags(event_times_us(batch, "ts"))
        kept = batch.filter(pa.array([not f for f in late]))
        accepted.append(kept)
        state.add(batch_partials(kept, state))
        emission = state.advance()
        for row in emission.rows:
            key = entity_key(row.entity)
            if key not in store or store[key][0] <= row.window_end_us:
                store[key] = (row.window_end_us, dict(row.values))
        if rng.random() < 0.2:
            # A restart: state back from what was persisted, nothing else kept.
            saved = {state.field(e): s.to_json() for e, s in state.entities.items()}
            restored = ViewState(VIEW)
            restored.restore({"max_event_us": {"v": state.max_event_us}}, saved)
            state = restored
        grid = state.grid_index()
        if grid is not None and (batches % 4 == 0 or at >= table.num_rows):
            snapshots.append((dict(store), grid, pa.concat_tables(accepted)))
    return snapshots


def batch_values(table: pa.Table, as_of: int) -> dict[str, tuple[int, dict[str, Any]]]:
    engine = PolarsEngine()
    rows = feature_rows(engine.from_arrow(table), VIEW, engine)
    out = values_as_of(rows, VIEW, as_of).to_native().collect().to_arrow().to_pylist()
    names = [f.name for f in VIEW.features]
    return {
        entity_key([r["k"]]): (
            r[WINDOW_END],
            {n: None if isinstance(r[n], float) and math.isnan(r[n]) else r[n] for n in names},
        )
        for r in out
    }


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b) and type(a) is type(b)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_stream_equals_batch_at_the_watermark(seed: int) -> None:
    table = events(seed, 3000)
    snapshots = stream(table, seed)
    assert len(snapshots) >= 5
    assert snapshots[-1][2].num_rows < table.num_rows  # some events were late, by design
    for store, grid, accepted in snapshots:
        expected = batch_values(accepted, grid * VIEW.step_us)
        assert set(store) == set(expected)
        for key, (end, values) in expected.items():
            got_end, got = store[key]
            assert got_end == end, key
            for name, value in values.items():
                assert same(got[name], value), (key, name, got[name], value)


def test_late_events_are_judged_by_the_watermark() -> None:
    state = ViewState(VIEW)  # step 1h, lateness 30m
    t = 10 * HOUR
    flags = state.late_flags([t + 50 * 60_000_000, t + 10 * 60_000_000, t + 95 * 60_000_000])
    # watermark after the first: t+20m (tile t..t+1h still open) -> the second is on time;
    # the third moves it to t+65m, so tile [t, t+1h) is closed from then on.
    assert flags == [False, False, False]
    assert state.late_flags([t + 59 * 60_000_000, t + 60 * 60_000_000]) == [True, False]
    assert state.watermark_us == t + 65 * 60_000_000


def test_entity_state_round_trips() -> None:
    state = ViewState(VIEW)
    table = events(9, 200)
    state.late_flags(event_times_us(table, "ts"))
    state.add(batch_partials(table, state))
    for entity, value in state.entities.items():
        back = EntityState.from_json(value.to_json())
        assert back.tiles == value.tiles, entity
        assert back.closed == value.closed


def test_messages_are_judged_like_batch_rows() -> None:
    schema = TopicSchema.of("t", [VIEW])
    good = b'{"k":"a","ts":"2024-01-01T10:00:00Z","x":1.5,"n":2,"extra":"ignored"}'
    values = [
        good,
        b'{"k":"a","ts":"2024-01-01T10:00:00Z","x":"high","n":2}',  # wrong type
        b'{"k":"a","ts":"2024-01-01T10:00:00Z","x":1,"n":-1}',  # breaks min
        b'{"k":"a","x":1,"n":1}',  # no event time
        b'{"ts":"2024-01-01T10:00:00Z","x":1,"n":1}',  # no entity
        b"\xff\xfe not utf-8",
        b"[1, 2]",
        b"{" * 5000,
        None,
        b'{"k":"a","ts":"2024-01-01T10:00:00Z","x":1,"n":1}',  # keyed to another entity
    ]
    keys = [b'["a"]'] * 9 + [b'["b"]']
    stamps = [1_704_103_200_000] * 10  # 2024-01-01T10:00:00Z, the events' own time
    checked = check_messages(schema, keys, values, list(range(100, 110)), stamps, max_bytes=4096)
    reasons = dict(checked.poison)
    assert checked.events.column("_tf_offset").to_pylist() == [100]
    assert sorted(reasons) == list(range(1, 10))
    assert reasons[1].startswith("type: x='high'")
    assert reasons[2].startswith("range: n")
    assert reasons[3].startswith("not_null: ts")
    assert "k" in reasons[4] and reasons[4].startswith("not_null")
    assert reasons[5].startswith("parse: not UTF-8")
    assert reasons[6] == "parse: message is a JSON list, not an object"
    assert reasons[7].startswith("parse: message of 5000 bytes")
    assert reasons[8] == "parse: empty message"
    assert reasons[9].startswith("key: message key b'[\"b\"]'")


def test_decoder_never_raises_on_garbage() -> None:
    rng = random.Random(5)
    payloads: list[bytes | None] = [
        bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(300)
    ]
    payloads += [b'{"k": {"deep": [1, 2]}, "ts": 5, "x": [], "n": 1e400}', b"[" * 100_000, b'"s"']
    batch = decode_json_messages(
        payloads,
        {"k": "string", "ts": "timestamp", "x": "float64", "n": "int64"},
        max_bytes=200_000,
    )
    assert batch.num_rows == len(payloads)
    assert all(batch.column("_tf_error").to_pylist()[-2:])


def test_topics_read_by_views_with_other_entities_are_refused() -> None:
    other = VIEW.model_copy(update={"name": "w", "entities": ("n",)})
    with pytest.raises(Exception, match="keyed by one entity"):
        TopicSchema.of("t", [VIEW, other])
