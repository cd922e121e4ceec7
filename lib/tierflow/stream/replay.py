"""``tierflow replay``: a table's rows to a Kafka topic, in event-time order, keyed by entity.

Each row becomes one JSON object (timestamps ISO 8601 in UTC, NaN as null), keyed by
its entity in the key format of the views reading the topic
(:func:`tierflow.stream.events.message_key`), so every event of an entity lands in
one partition (``from-value`` topics get no key). Rows without an event time cannot
be placed in time and are left out (and counted). ``rate`` caps messages per second;
``speedup`` paces by event time (``3600``: one hour of events per second). Record
timestamps are the send time, which is what the daemons' freshness is measured from.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from tierflow.progress import Progress
from tierflow.stream.connection import KafkaConnection, kafka_options, through_failover

_CHUNK = 10_000


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent."""

    topic: str
    sent: int
    skipped_no_time: int
    seconds: float

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.sent / self.seconds if self.seconds else 0.0


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def ordered(table: pa.Table, time_column: str) -> tuple[pa.Table, int]:
    """Rows with an event time, sorted by it (stable); and how many had none."""
    has_time = pc.is_valid(table.column(time_column))
    kept = table.filter(has_time)
    return kept.sort_by([(time_column, "ascending")]), table.num_rows - kept.num_rows


def event_messages(
    table: pa.Table, keys: Sequence[str], time_column: str, key_format: str = "json-list"
) -> Iterator[tuple[bytes | None, bytes, int]]:
    """(key, JSON value, event time in µs) for each row of an ordered table.

    Keys are written in ``key_format`` (none for ``from-value``).
    """
    from tierflow.stream.events import message_key

    names = table.column_names
    for batch in table.to_batches(max_chunksize=_CHUNK):
        columns = [batch.column(n).to_pylist() for n in names]
        times = pc.cast(batch.column(time_column), pa.int64()).to_pylist()
        key_index = [names.index(k) for k in keys]
        for i in range(batch.num_rows):
            row = {n: _json_value(c[i]) for n, c in zip(names, columns, strict=True)}
            key = message_key([columns[k][i] for k in key_index], key_format)
            value = json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode()
            yield key, value, times[i]


def _producer(bootstrap_servers: KafkaConnection | str) -> Any:
    """An idempotent producer; its bootstrap is tried again while brokers fail over.

    Right after a broker host is lost, one bootstrap attempt can spend its whole timeout
    on that host and on brokers still electing new leaders; a later one reaches a live one.
    """
    from kafka import KafkaProducer

    return through_failover(
        lambda: KafkaProducer(
            **kafka_options(bootstrap_servers),
            acks="all",
            # A retried batch (a broker lost mid-send) is written once, not twice.
            enable_idempotence=True,
            linger_ms=20,
            batch_size=256 * 1024,
            compression_type=None,
            request_timeout_ms=15_000,
        ),
        "a bootstrap",
        pause_s=2.0,
    )


def replay(
    table: pa.Table,
    topic: str,
    bootstrap_servers: KafkaConnection | str,
    *,
    keys: Sequence[str],
    time_column: str,
    key_format: str = "json-list",
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    progress: TextIO | None = None,
) -> ReplayResult:
    """Produce ``table``'s rows to ``topic`` in event-time order (see the module doc).

    ``progress``: where the count of events sent goes (a
    :class:`~tierflow.progress.Progress`), if anywhere.
    """
    missing = [c for c in [*keys, time_column] if c not in table.column_names]
    if missing:
        raise ValueError(
            f"the table has no column(s) {', '.join(missing)} "
            f"(it has {', '.join(table.column_names)})"
        )
    rows, skipped = ordered(table, time_column)
    if limit is not None:
        rows = rows.slice(0, limit)
    producer = _producer(bootstrap_servers)
    # The first send would otherwise wait for the topic's metadata after its slot in the
    # schedule had started, and the next messages would go early to catch up.
    producer.partitions_for(topic)
    bar = (
        Progress(f"{topic}: sent", rows.num_rows, "events", stream=progress)
        if progress is not None
        else None
    )
    began = time.monotonic()
    # The schedule starts at the first message, not before the first chunk is encoded:
    # otherwise the encoding time is "caught up" by sending the next messages early.
    schedule_start = began
    first_event: int | None = None
    sent = 0
    try:
        for key, value, ts in event_messages(rows, keys, time_column, key_format):
            if first_event is None:
                first_event, schedule_start = ts, time.monotonic()
            due = 0.0
            if rate:
                due = sent / rate
            if speedup:
                due = max(due, (ts - first_event) / 1e6 / speedup)
            wait = due - (time.monotonic() - schedule_start)
            if wait > 0:
                time.sleep(wait)
            producer.send(topic, key=key, value=value)
            sent += 1
            if bar is not None and sent % 1000 == 0:
                bar.update(sent)
        producer.flush()
    finally:
        producer.close()
        if bar is not None:
            bar.close()
    return ReplayResult(topic, sent, skipped, time.monotonic() - began)
