"""Online/offline parity: is what the daemons stored what batch computes from the same events?

Each partition of a view's topic has a watermark: the latest event time seen there, each
event's capped at its record's Kafka timestamp
(:func:`tierflow.features.eventtime.watermark_time`). The online value of an entity is
its value at the grid point at or before ``watermark - allowed_lateness`` of its
partition. Parity derives every partition's watermark **from the events alone**
(:func:`event_watermarks`; the store's own is only compared with it, never used), has
batch compute each entity's values at that point with
:func:`tierflow.features.batch.values_as_of`, and :func:`compare` lists every
difference: values (floats within a relative 1e-9: summation order differs), and each
partition's watermark lag, the derived watermark minus the daemon's. A daemon whose
watermark ran away, or lags behind what it applied, fails.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tierflow.config.features import FeatureViewConfig, duration_us
from tierflow.stores.base import OnlineStore
from tierflow.stream.connection import KafkaConnection, kafka_options, through_failover

Expected = dict[tuple[Any, ...], tuple[int, dict[str, Any]]]
PARTITION, RECORD_TIME = "_kafka_partition", "_kafka_timestamp"  # the event log's columns


@dataclass(frozen=True)
class Expectation:
    """What the store must hold: the values per entity, and the watermark per partition."""

    values: Expected
    watermarks: dict[int, int]  # partition -> watermark time (µs, before the lateness)
    partitions: int


def checkpoint_name(group: str, topic: str, partition: int) -> str:
    """The store's name for a consumer group's partition checkpoint."""
    return f"{group}/{topic}/{partition}"


def partition_of(entity: tuple[Any, ...], partitions: int, key_format: str = "json-list") -> int:
    """The partition Kafka's default partitioner gives an entity's key.

    Raises:
        ValueError: the key format carries no entity (``from-value``) and there is more
            than one partition: only the events' own ``_kafka_partition`` can say.
    """
    from kafka.partitioner.default import murmur2

    from tierflow.stream.events import message_key

    key = message_key(entity, key_format)
    if key is None:
        if partitions == 1:
            return 0
        raise ValueError("from-value topics of several partitions need _kafka_partition")
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def end_offsets(bootstrap: KafkaConnection | str, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic``.

    Asked again while a lost broker's partitions fail over: right after a broker host is
    cut off, a bootstrap that tries it first can spend its whole timeout there.
    """
    from kafka import KafkaConsumer, TopicPartition

    def ask() -> dict[int, int]:
        consumer = KafkaConsumer(**kafka_options(bootstrap))
        try:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
        finally:
            consumer.close()

    return through_failover(ask, f"the end offsets of {topic}")


def stored_offsets(store: OnlineStore, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The next offset the store has applied, per partition that has one."""
    out = {}
    for p in range(partitions):
        offset = store.load_partition(checkpoint_name(group, topic, p)).offset
        if offset is not None:
            out[p] = offset
    return out


def wait_caught_up(
    store: OnlineStore,
    group: str,
    topic: str,
    ends: Mapping[int, int],
    timeout: float,
    alive: Callable[[], None] = lambda: None,
) -> float:
    """Wait until the store has applied every partition up to ``ends``; returns the time.

    Raises:
        TimeoutError: not caught up within ``timeout`` seconds (with both offsets).
    """
    began = time.monotonic()
    want = {p: e for p, e in ends.items() if e}
    while time.monotonic() - began < timeout:
        alive()
        if stored_offsets(store, group, topic, len(ends)) == want:
            return time.monotonic() - began
        time.sleep(0.2)
    got = stored_offsets(store, group, topic, len(ends))
    raise TimeoutError(f"{topic}: not caught up in {timeout} s: stored {got}, topic ends {want}")


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _entities(events: Any, view: FeatureViewConfig) -> list[tuple[Any, ...]]:
    return list(zip(*(events.column(e).to_pylist() for e in view.entities), strict=True))


def _partitions(
    events: Any, view: FeatureViewConfig, partitions: int
) -> dict[tuple[Any, ...], int]:
    """Each entity's partition: the events' ``_kafka_partition``, else its key's."""
    entities = _entities(events, view)
    if PARTITION in events.column_names:
        return dict(zip(entities, events.column(PARTITION).to_pylist(), strict=True))
    return {e: partition_of(e, partitions, view.source.key_format) for e in set(entities)}


def event_watermarks(events: Any, view: FeatureViewConfig, partitions: int) -> dict[int, int]:
    """Each partition's watermark time after its events, from the events alone.

    Args:
        events: The valid events the topic carried (an Arrow table). Where it has the
            event log's ``_kafka_timestamp`` each event's contribution is capped at it,
            and checked against the view's skew, as the daemon did; where it has
            ``_kafka_partition`` that is the partition, else the entity's key decides.
        view: The view.
        partitions: The topic's partition count.
    """
    import pyarrow.compute as pc

    from tierflow.features.eventtime import EventTimeRule, watermark_time

    times = pc.cast(events.column(view.event_time), "int64").to_pylist()
    records = (
        pc.cast(events.column(RECORD_TIME), "int64").to_pylist()
        if RECORD_TIME in events.column_names
        else [None] * len(times)
    )
    partition = _partitions(events, view, partitions)
    owners = [partition[e] for e in _entities(events, view)]
    rule = EventTimeRule.of(view)
    marks: dict[int, int] = {}
    for ts, record, p in zip(times, records, owners, strict=True):
        if ts is None or rule.reason(ts, record) is not None:
            continue  # poison: the daemon dead-letters it, and it moves nothing
        mark = watermark_time(ts, record)
        if p not in marks or mark > marks[p]:
            marks[p] = mark
    return marks


def expected_values(events: Any, view: FeatureViewConfig, partitions: int) -> Expectation:
    """Batch values of each entity at its partition's watermark grid point.

    Args:
        events: The events the topic carried (an Arrow table; see :func:`event_watermarks`).
        view: The view.
        partitions: The topic's partition count.
    """
    from tierflow.engines.polars_engine import PolarsEngine
    from tierflow.features.batch import WINDOW_END, feature_rows, values_as_of

    marks = event_watermarks(events, view, partitions)
    engine = PolarsEngine()
    rows = feature_rows(engine.from_arrow(events), view, engine)
    table = rows.to_native().collect().to_arrow()
    out: Expected = {}
    owner = _partitions(events, view, partitions)
    for p, mark in sorted(marks.items()):
        grid = (mark - duration_us(view.allowed_lateness)) // view.step_us * view.step_us
        picked = values_as_of(engine.from_arrow(table), view, grid)
        for r in picked.to_native().collect().to_arrow().to_pylist():
            entity = tuple(r[e] for e in view.entities)
            if owner.get(entity) != p:
                continue
            values = {f.name: _clean(r[f.name]) for f in view.features}
            out[entity] = (r[WINDOW_END], values)
    return Expectation(out, marks, partitions)


@dataclass(frozen=True)
class ParityResult:
    """The outcome of comparing a view's online values with batch."""

    view: str
    entities: int
    values_compared: int
    mismatches: tuple[Any, ...]
    extra_in_store: int
    # Per partition with a watermark: the one derived from the events minus the daemon's
    # (µs); None where only one of them exists.
    watermark_lag_us: dict[int, int | None]

    @property
    def ok(self) -> bool:
        """No difference at all (and something was compared)."""
        return (
            self.entities > 0
            and not self.mismatches
            and self.extra_in_store == 0
            and all(lag == 0 for lag in self.watermark_lag_us.values())
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for reports): counts, and the first three differences."""
        return {
            "view": self.view,
            "ok": self.ok,
            "entities": self.entities,
            "values": self.values_compared,
            "mismatches": len(self.mismatches),
            "extra": self.extra_in_store,
            "watermark_lag_us": {str(p): lag for p, lag in self.watermark_lag_us.items()},
            "first": [str(m) for m in self.mismatches[:3]],
        }


def compare(
    store: OnlineStore, view: FeatureViewConfig, expected: Expectation, *, group: str, topic: str
) -> ParityResult:
    """Every entity's stored values and every partition's watermark against the events'.

    The watermark lag of a partition is None where only one side has a watermark.
    """
    entities = list(expected.values)
    got = store.read(view.name, entities) if entities else []
    mismatches: list[Any] = []
    compared = 0
    for entity, stored in zip(entities, got, strict=True):
        end, values = expected.values[entity]
        if stored is None or stored.window_end_us != end:
            mismatches.append((entity, "window_end_us", end, stored and stored.window_end_us))
            continue
        for name, value in values.items():
            other = stored.values[name]
            compared += 1
            if isinstance(value, float) and isinstance(other, float):
                ok = math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-9)
            else:
                ok = value == other
            if not ok:
                mismatches.append((entity, name, value, other))
    lag: dict[int, int | None] = {}
    for p in range(expected.partitions):
        derived = expected.watermarks.get(p)
        meta = json.loads(store.load_partition(checkpoint_name(group, topic, p)).meta or "{}")
        mark = meta.get("max_event_us", {}).get(view.name)
        if derived is not None or mark is not None:
            lag[p] = None if derived is None or mark is None else derived - int(mark)
    extra = store.count(view.name) - len(expected.values)
    return ParityResult(view.name, len(entities), compared, tuple(mismatches), max(0, extra), lag)
