"""Online/offline parity: is what the daemons stored what batch computes from the same events?

Each partition of a view's topic has a watermark (the latest event time the daemon saw
there, kept in the store with the partition's offset). The online value of an entity is
its value at the grid point at or before ``watermark - allowed_lateness`` of its
partition; batch computes the same point from the events with
:func:`tierflow.features.batch.values_as_of`. :func:`compare` lists every difference
(floats within a relative 1e-9: summation order differs).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tierflow.config.features import FeatureViewConfig, duration_us
from tierflow.stores.base import OnlineStore, entity_key
from tierflow.stream.connection import KafkaConnection, kafka_options, through_failover

Expected = dict[tuple[Any, ...], tuple[int, dict[str, Any]]]


def checkpoint_name(group: str, topic: str, partition: int) -> str:
    """The store's name for a consumer group's partition checkpoint."""
    return f"{group}/{topic}/{partition}"


def partition_of(entity: tuple[Any, ...], partitions: int) -> int:
    """The partition Kafka's default partitioner gives an entity's key."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(entity_key(entity).encode()) & 0x7FFFFFFF) % partitions


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


def expected_values(
    events: Any,
    view: FeatureViewConfig,
    store: OnlineStore,
    group: str,
    topic: str,
    partitions: int,
) -> Expected:
    """Batch values of each entity at its partition's watermark grid point.

    Args:
        events: The events the topic carried (an Arrow table).
        view: The view.
        store: The online store (for each partition's watermark).
        group: The daemons' consumer group.
        topic: The topic, as the daemons named it (prefix included).
        partitions: The topic's partition count.
    """
    from tierflow.engines.polars_engine import PolarsEngine
    from tierflow.features.batch import WINDOW_END, feature_rows, values_as_of

    engine = PolarsEngine()
    rows = feature_rows(engine.from_arrow(events), view, engine)
    table = rows.to_native().collect().to_arrow()
    out: Expected = {}
    for p in range(partitions):
        meta = json.loads(store.load_partition(checkpoint_name(group, topic, p)).meta or "{}")
        mark = meta.get("max_event_us", {}).get(view.name)
        if mark is None:
            continue
        grid = (mark - duration_us(view.allowed_lateness)) // view.step_us * view.step_us
        picked = values_as_of(engine.from_arrow(table), view, grid)
        for r in picked.to_native().collect().to_arrow().to_pylist():
            entity = tuple(r[e] for e in view.entities)
            if partition_of(entity, partitions) != p:
                continue
            values = {f.name: _clean(r[f.name]) for f in view.features}
            out[entity] = (r[WINDOW_END], values)
    return out


@dataclass(frozen=True)
class ParityResult:
    """The outcome of comparing a view's online values with batch."""

    view: str
    entities: int
    values_compared: int
    mismatches: tuple[Any, ...]
    extra_in_store: int

    @property
    def ok(self) -> bool:
        """No difference at all (and something was compared)."""
        return self.entities > 0 and not self.mismatches and self.extra_in_store == 0


def compare(store: OnlineStore, view: FeatureViewConfig, expected: Expected) -> ParityResult:
    """Every entity's stored window and values against batch's."""
    entities = list(expected)
    got = store.read(view.name, entities) if entities else []
    mismatches: list[Any] = []
    compared = 0
    for entity, stored in zip(entities, got, strict=True):
        end, values = expected[entity]
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
    extra = store.count(view.name) - len(expected)
    return ParityResult(view.name, len(entities), compared, tuple(mismatches), max(0, extra))
