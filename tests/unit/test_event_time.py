"""Event times that cannot run away: the rule, in the stream and in batch, and its property.

Pure logic, no Kafka: records go through :func:`tierflow.stream.fold.fold`, the decisions
the daemon makes for a poll, with the Kafka timestamps the records carry.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pytest

from tierflow.config.features import FeatureViewConfig
from tierflow.engines.polars_engine import PolarsEngine
from tierflow.features.batch import prepare_events
from tierflow.features.eventtime import EventTimeRule, iso, watermark_time
from tierflow.stores.base import entity_key
from tierflow.stream.events import TopicSchema
from tierflow.stream.fold import Outcome, fold
from tierflow.stream.state import ViewState

HOUR_MS = 3_600_000
T0_MS = 1_357_000_000_000 // HOUR_MS * HOUR_MS  # early January 2013, like the flights


def view(**extra: Any) -> FeatureViewConfig:
    return FeatureViewConfig.model_validate(
        {
            "name": "departures",
            "entities": ["carrier"],
            "event_time": "ts",
            "step": "1h",
            "ttl": "1d",
            "allowed_lateness": "10m",
            "source": {
                "format": "delta",
                "path": "t",
                "topic": "t",
                "columns": {
                    "carrier": {"type": "string", "nullable": False},
                    "ts": {"type": "timestamp"},
                    "delay": {"type": "float64"},
                },
            },
            "features": [
                {"name": "n_1h", "agg": "count"},
                {"name": "delay_sum_3h", "agg": "sum", "column": "delay", "window": "3h"},
                {"name": "delay_last_3h", "agg": "last", "column": "delay", "window": "3h"},
            ],
            **extra,
        }
    )


VIEW = view()
SCHEMA = TopicSchema.of("t", [VIEW])


@dataclass(frozen=True)
class Rec:
    """A Kafka record as fold reads it."""

    key: bytes | None
    value: bytes | None
    offset: int
    timestamp: int | None


def departure(carrier: str, ts: str, delay: float, offset: int, record_ms: int | None) -> Rec:
    value = json.dumps({"carrier": carrier, "ts": ts, "delay": delay}).encode()
    return Rec(entity_key([carrier]).encode(), value, offset, record_ms)


def ms_iso(ms: int) -> str:
    return iso(ms * 1000)


def run(records: list[Rec], sizes: list[int] | None = None) -> tuple[ViewState, list[Outcome]]:
    """Fold records in batches (of ``sizes``, cycled); the state and every outcome."""
    state = ViewState(VIEW)
    outcomes = []
    at, i = 0, 0
    while at < len(records):
        size = (sizes or [len(records)])[i % len(sizes or [1])]
        batch = records[at : at + size]
        outcomes += fold(
            SCHEMA, [VIEW], [({VIEW.name: state}, batch)], max_bytes=4096, late_policy="drop"
        )
        at, i = at + size, i + 1
    return state, outcomes


def reasons(outcomes: list[Outcome]) -> list[str]:
    return [r for o in outcomes for rs in o.dead.values() for r in rs]


def test_the_far_future_departure_is_dead_lettered_and_moves_no_watermark() -> None:
    """The issue's case: year 9999 between two halves of valid departures."""
    first = [
        departure("UA", ms_iso(T0_MS + i * 60_000), 1.0, i, T0_MS + i * 60_000) for i in range(50)
    ]
    bad = departure("UA", "9999-12-31T23:59:59Z", 5.0, 50, T0_MS + 50 * 60_000)
    second = [
        departure("UA", ms_iso(T0_MS + i * 60_000), 2.0, i + 1, T0_MS + i * 60_000)
        for i in range(50, 100)
    ]
    state, outcomes = run([*first, bad, *second])
    assert len(reasons(outcomes)) == 1
    reason = reasons(outcomes)[0]
    assert reason.startswith("event_time: ts 9999-12-31T23:59:59Z is ")
    assert "ahead of the record's timestamp 2013-01-" in reason
    assert "max_event_time_skew 1h" in reason
    assert sum(o.late.get(VIEW.name, 0) for o in outcomes) == 0
    assert state.max_event_us == (T0_MS + 99 * 60_000) * 1000
    assert sum(o.applied for o in outcomes) == 100


@pytest.mark.parametrize(
    ("ts", "record_ms", "expected"),
    [
        # Within the skew of the record: accepted.
        (ms_iso(T0_MS + HOUR_MS), T0_MS, None),
        # Just past it, by one microsecond.
        (iso((T0_MS + HOUR_MS) * 1000 + 1), T0_MS, "event_time: ts"),
        # The last representable second of the decoder: far ahead, poison.
        ("9999-12-31T23:59:59.999999Z", T0_MS, "event_time: ts 9999-12-31T23:59:59.999999Z"),
        # Past the decoder's years, and epoch numbers (too big for any timestamp): type.
        ("+10000-01-01T00:00:00Z", T0_MS, "type: ts="),
        (1e30, T0_MS, "type: ts="),
        (253_402_300_800_000_000_000, T0_MS, "type: ts="),
        (-(2**63), T0_MS, "type: ts="),
        # The first second of year 1: behind everything, so not poison (it is late, below).
        ("0001-01-01T00:00:00Z", T0_MS, None),
        # Records without a timestamp, or one at the end of Kafka's long: judged safely.
        (ms_iso(T0_MS), -1, "event_time: the record has no Kafka timestamp"),
        (ms_iso(T0_MS), None, "event_time: the record has no Kafka timestamp"),
        (ms_iso(T0_MS), 2**63 - 1, None),
        ("9999-12-31T23:59:59Z", 2**63 - 1, None),
        (ms_iso(T0_MS), 0, "event_time: ts 2013-"),
    ],
)
def test_event_time_edges(ts: Any, record_ms: int | None, expected: str | None) -> None:
    value = json.dumps({"carrier": "AA", "ts": ts, "delay": 1.0}).encode()
    _state, outcomes = run([Rec(b'["AA"]', value, 7, record_ms)])
    found = reasons(outcomes)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(expected), found


def test_a_year_one_event_is_late_not_a_new_watermark() -> None:
    records = [departure("AA", ms_iso(T0_MS), 1.0, 0, T0_MS)]
    records.append(departure("AA", "0001-01-01T00:00:00Z", 1.0, 1, T0_MS))
    state, outcomes = run(records)
    assert reasons(outcomes) == [] and outcomes[0].late == {VIEW.name: 1}
    assert state.max_event_us == T0_MS * 1000


def test_an_event_ahead_of_its_record_moves_the_watermark_only_to_the_record() -> None:
    state, outcomes = run([departure("AA", ms_iso(T0_MS + HOUR_MS // 2), 1.0, 0, T0_MS)])
    assert reasons(outcomes) == [] and outcomes[0].applied == 1
    assert state.max_event_us == T0_MS * 1000
    assert watermark_time(5, 3) == 3 and watermark_time(2, 3) == 2 and watermark_time(4, None) == 4


def test_bounds_refuse_in_the_stream_and_in_batch_alike() -> None:
    bounded = view(event_time_bounds=["2013-01-01T00:00:00Z", "2013-01-31T00:00:00"])
    schema = TopicSchema.of("t", [bounded])
    times = ["2012-12-31T23:59:59Z", "2013-01-01T00:00:00Z", "2013-01-31T00:00:00Z",
             "2013-01-31T00:00:01Z"]  # fmt: skip
    records = [
        Rec(b'["AA"]', json.dumps({"carrier": "AA", "ts": t, "delay": 1.0}).encode(), i, 2**42)
        for i, t in enumerate(times)
    ]
    state = ViewState(bounded)
    (outcome,) = fold(schema, [bounded], [({bounded.name: state}, records)], max_bytes=4096,
                      late_policy="drop")  # fmt: skip
    assert sorted(outcome.dead) == [0, 3]
    assert "before view departures's bound 2013-01-01T00:00:00Z" in outcome.dead[0][0]
    assert "after view departures's bound 2013-01-31T00:00:00Z" in outcome.dead[3][0]
    table = pa.table(
        {
            "carrier": ["AA"] * 4,
            "ts": pa.array([datetime.fromisoformat(t) for t in times], pa.timestamp("us", "UTC")),
            "delay": [1.0] * 4,
        }
    )
    engine = PolarsEngine()
    kept = prepare_events(engine.from_arrow(table), bounded, engine).to_native().collect()
    assert kept["_tf_ts_us"].to_list() == [
        int(datetime.fromisoformat(t).timestamp()) * 1_000_000 for t in times[1:3]
    ]


def test_batch_with_an_ingestion_column_refuses_exactly_what_the_stream_refuses() -> None:
    """The event log keeps each record's Kafka timestamp: batch over it judges alike."""
    logged = view(source={**VIEW.source.model_dump(), "ingestion_time": "_kafka_timestamp"})
    rng = random.Random(3)
    records, rows = [], []
    for i in range(400):
        record_ms = T0_MS + i * 60_000
        ahead_ms = rng.choice([0, -HOUR_MS, HOUR_MS, HOUR_MS + 1, 10 * HOUR_MS, HOUR_MS - 1])
        ts_us = (record_ms + ahead_ms) * 1000 + rng.choice([0, 1, -1])
        records.append(departure("AA", iso(ts_us), float(i), i, record_ms))  # delay: the id
        rows.append((ts_us, record_ms * 1000))
    (outcome,) = fold(SCHEMA, [VIEW], [({VIEW.name: ViewState(VIEW)}, records)],
                      max_bytes=4096, late_policy="drop")  # fmt: skip
    table = pa.table(
        {
            "carrier": ["AA"] * len(rows),
            "ts": pa.array([r[0] for r in rows], pa.timestamp("us", "UTC")),
            "delay": [float(i) for i in range(len(rows))],
            "_kafka_timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", "UTC")),
        }
    )
    engine = PolarsEngine()
    kept = prepare_events(engine.from_arrow(table), logged, engine).to_native().collect()
    refused = set(outcome.dead)
    assert 50 < len(refused) < 350
    assert {int(d) for d in kept["delay"].to_list()} == set(range(len(rows))) - refused
    # Without the column batch can only apply the bounds (here none): it keeps them all.
    everything = prepare_events(engine.from_arrow(table), VIEW, engine).to_native().collect()
    assert everything.height == len(rows)


def test_rule_accepts_nothing_to_check_as_none() -> None:
    rule = EventTimeRule.of(VIEW)
    assert rule.accepts(5, None) is None
    assert rule.reason(10**18, 0) is not None and rule.reason(0, 0) is None


# --- the property: no single message changes another entity's online value ----------------

CARRIERS = ["AA", "B6", "DL", "EV", "UA", "WN"]


def honest_stream(rng: random.Random, count: int, back_ms: int = 40 * 60_000) -> list[Rec]:
    """Departures whose records are stamped with their event times (a replay that keeps
    them), mostly in order, some shuffled back by up to ``back_ms`` (the lateness is 10
    minutes: by default some are late)."""
    clock = T0_MS
    out = []
    for i in range(count):
        clock += rng.choice([0, 1000, 60_000, 600_000, 3 * HOUR_MS // 2])
        ts = clock - rng.choice([0, 0, 0, rng.randrange(0, back_ms)])
        delay = rng.choice([None, float(rng.randrange(-20, 200))])
        out.append(departure(rng.choice(CARRIERS), ms_iso(ts), delay, i, ts))  # type: ignore[arg-type]
    return out


def nasty(rng: random.Random, offset: int, record_ms: int) -> Rec:
    """One message of any kind a bad producer could send, stamped when it was sent.

    The record's timestamp is honest (or missing): a producer that also forges a
    far-future CreateTime is outside the property, as docs/streaming.md says (LogAppendTime).
    """
    carrier = rng.choice([*CARRIERS, "ZZ"])
    moment_ms = record_ms + rng.choice([
        -10**12, -HOUR_MS, -1, 0, 1, HOUR_MS // 2, HOUR_MS, HOUR_MS + 1, 365 * 24 * HOUR_MS,
        10**14,
    ])  # fmt: skip
    ts: Any = rng.choice([
        ms_iso(max(moment_ms, -62_135_596_800_000)), "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z", 10**30, "not a time", None,
    ])  # fmt: skip
    value: dict[str, Any] = {"carrier": carrier, "ts": ts, "delay": rng.choice([1.0, "x", None])}
    payload = rng.choice([json.dumps(value).encode(), b"{", b"", b"[1]", None])
    key = rng.choice([entity_key([carrier]).encode(), entity_key(["UA"]).encode(), None, b"x"])
    stamp = rng.choice([record_ms, record_ms, -1])
    return Rec(key, payload, offset, stamp)


def online(records: list[Rec], sizes: list[int]) -> dict[str, tuple[int, dict[str, Any]]]:
    """The online values after the stream, applied as the store applies emitted rows."""
    state = ViewState(VIEW)
    store: dict[str, tuple[int, dict[str, Any]]] = {}
    at, i = 0, 0
    while at < len(records):
        batch = records[at : at + sizes[i % len(sizes)]]
        (outcome,) = fold(SCHEMA, [VIEW], [({VIEW.name: state}, batch)], max_bytes=4096,
                          late_policy="drop")  # fmt: skip
        for _view, row, _ttl in outcome.rows:
            key = entity_key(row.entity)
            if key not in store or store[key][0] <= row.window_end_us:
                store[key] = (row.window_end_us, dict(row.values))
        at, i = at + len(batch), i + 1
    return store


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def eq(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12)
        return bool(x == y)

    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


@pytest.mark.parametrize("seed", range(6))
def test_no_single_message_changes_another_entitys_online_value(seed: int) -> None:
    rng = random.Random(seed)
    base = honest_stream(rng, 300)
    sizes = [rng.choice([1, 5, 40, 300]) for _ in range(8)]
    expected = online(base, sizes)
    assert len(expected) == len(CARRIERS)
    for _ in range(8):
        at = rng.randrange(1, len(base))
        message = nasty(rng, at, base[at - 1].timestamp or 0)
        shifted = [Rec(r.key, r.value, r.offset + 1, r.timestamp) for r in base[at:]]
        got = online([*base[:at], message, *shifted], sizes)
        for key, (end, values) in expected.items():
            if key.encode() == message.key:
                continue  # its own entity's value may change: the message is its event
            assert key in got, (key, message)
            assert got[key][0] == end and _same(got[key][1], values), (key, message)


# --- parity judges the daemon's watermark against the events' --------------------------


def _store_run(
    store: Any, records: list[Rec], *, shift_mark_us: int = 0, runaway_at: int = -1
) -> None:
    """What the daemon does for a partition (fold, then one commit), optionally wrong:
    its watermark moved by ``shift_mark_us`` at the end, or run away to year 9999 after
    record ``runaway_at`` (as the daemon did before the event-time rule)."""
    from tierflow.stores.base import PartitionCommit
    from tierflow.stream.parity import checkpoint_name

    state = ViewState(VIEW)
    offset: int | None = None
    for at in range(0, len(records), 50):
        batch = records[at : at + 50]
        (outcome,) = fold(SCHEMA, [VIEW], [({VIEW.name: state}, batch)], max_bytes=4096,
                          late_policy="drop")  # fmt: skip
        if at <= runaway_at < at + 50:
            state.max_event_us = 253_402_300_799_000_000
        if at + 50 >= len(records):
            state.max_event_us = (state.max_event_us or 0) + shift_mark_us
        meta = json.dumps({"max_event_us": {VIEW.name: state.max_event_us}})
        store.commit_partition(
            PartitionCommit(
                state=checkpoint_name("g", "t", 0), expected_offset=offset,
                offset=batch[-1].offset + 1, meta=meta, rows=outcome.rows, put=outcome.put,
                delete=outcome.delete,
            )
        )  # fmt: skip
        offset = batch[-1].offset + 1


def _events(records: list[Rec]) -> pa.Table:
    rows = [json.loads(r.value or b"{}") for r in records]
    return pa.table(
        {
            "carrier": [r["carrier"] for r in rows],
            "ts": pa.array(
                [datetime.fromisoformat(r["ts"]) for r in rows], pa.timestamp("us", "UTC")
            ),
            "delay": pa.array([r["delay"] for r in rows], pa.float64()),
            "_kafka_partition": [0] * len(rows),
            "_kafka_timestamp": pa.array(
                [r.timestamp * 1000 for r in records], pa.timestamp("us", "UTC")
            ),  # type: ignore[operator]
        }
    )


@pytest.mark.parametrize(
    ("wrong", "values_differ"),
    [({}, False), ({"shift_mark_us": 60_000_000}, False), ({"runaway_at": 150}, True)],
)
def test_parity_fails_a_daemon_whose_watermark_is_wrong(
    tmp_path: Any, wrong: dict[str, int], values_differ: bool
) -> None:
    from tierflow.stores.sqlite_store import SQLiteOnlineStore
    from tierflow.stream.parity import compare, expected_values

    # Nothing late (batch has no lateness: parity compares streams without late events).
    records = honest_stream(random.Random(11), 300, back_ms=5 * 60_000)
    store = SQLiteOnlineStore(tmp_path / "online.db")
    try:
        _store_run(store, records, **wrong)
        expected = expected_values(_events(records), VIEW, 1)
        result = compare(store, VIEW, expected, group="g", topic="t")
    finally:
        store.close()
    if not wrong:
        assert result.ok and result.watermark_lag_us == {0: 0}, result
        return
    # A minute off within one step leaves every value alone: only the lag catches it.
    assert not result.ok and result.watermark_lag_us[0] != 0, result
    assert bool(result.mismatches) is values_differ, result.mismatches[:3]
    assert result.values_compared > 0 or values_differ


def test_a_topic_has_one_event_time_rule_and_a_sane_skew() -> None:
    from pydantic import ValidationError

    from tierflow.errors import ConfigError

    other = view(max_event_time_skew="2h").model_copy(update={"name": "other"})
    with pytest.raises(ConfigError, match="different event-time rules"):
        TopicSchema.of("t", [VIEW, other])
    with pytest.raises(ValidationError, match="over 100 years"):
        view(max_event_time_skew="40000d")
    with pytest.raises(ValidationError, match="is after"):
        view(event_time_bounds=["2014-01-01T00:00:00Z", "2013-01-01T00:00:00Z"])


def test_the_store_retry_backs_off_and_gives_up() -> None:
    from tierflow.stores.base import StoreError
    from tierflow.stream.runtime import Backoff

    backoff = Backoff(limit=6)
    waits = [backoff.failed("down") for _ in range(6)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    with pytest.raises(StoreError, match=r"failed 7 times in a row.*down"):
        backoff.failed("down")
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.failed("again") == 0.5


def test_a_poll_is_sized_by_time_as_well_as_count() -> None:
    from tierflow.config.streaming import StreamingConfig
    from tierflow.stream.runtime import ConsumerRuntime

    config = StreamingConfig(max_poll_records=5000, poll_budget_ms=50)
    runtime = ConsumerRuntime(None, [], config, "127.0.0.1:1", group_id="g", client_id="c")  # type: ignore[arg-type]
    assert runtime.max_records == 5000
    runtime._size_poll(0.5, 50)  # too small a poll to say anything
    assert runtime.max_records == 5000
    runtime._size_poll(0.1, 1000)  # 100 µs a record: 500 fit in 50 ms
    assert runtime.max_records == 500
    for _ in range(40):
        runtime._size_poll(0.001, 1000)  # 1 µs a record: back to the count
    assert runtime.max_records == 5000
    runtime._size_poll(100.0, 100)  # never below 100
    assert runtime.max_records == 100
