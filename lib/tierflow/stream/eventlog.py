"""The event log: a topic's events appended to a Delta table, each exactly once.

A consumer group of its own (``<group_id>-eventlog``) reads the topic, judges every
message as the feature daemons do, and appends the valid events, with their Kafka
partition, offset and record time, in batches through ``deltalake``. Each Delta commit
carries, per partition it covers, an application transaction (``txn``:
``tierflow-eventlog/<topic>/<partition>`` = the next offset), the mechanism Delta's own
streaming writers use for idempotence. On assignment the logger resumes from the
table's transaction versions, not from Kafka's offsets, so a crash between the Delta
commit and the Kafka commit neither loses nor doubles events. Poison messages are not
logged: the feature daemons dead-letter them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from tierflow.config.features import FeatureViewConfig
from tierflow.config.streaming import StreamingConfig
from tierflow.stream.connection import KafkaConnection
from tierflow.stream.events import OFFSET, RECORD_US, TopicSchema, check_messages
from tierflow.stream.fold import timestamp_ms
from tierflow.stream.runtime import ConsumerRuntime, Poll, Written

log = logging.getLogger("tierflow.stream.eventlog")
PARTITION, RECORD_TIME = "_kafka_partition", "_kafka_timestamp"


def app_id(topic: str, partition: int) -> str:
    """The Delta application-transaction id of a partition."""
    return f"tierflow-eventlog/{topic}/{partition}"


class EventLogger:
    """Appends a topic's valid events to a Delta table, exactly once per offset.

    It is the Delta sink of a :class:`ConsumerRuntime`.
    """

    def __init__(
        self,
        topic: str,
        views: Sequence[FeatureViewConfig],
        path: str,
        config: StreamingConfig,
        bootstrap_servers: KafkaConnection | str,
    ) -> None:
        self.topic = topic
        self.schema = TopicSchema.of(topic, views)
        self.path = path
        self.config = config
        self.pending: list[pa.Table] = []
        self.next_offsets: dict[int, int] = {}  # per partition: the next offset to log
        self.unflushed: set[int] = set()
        self.logged = 0
        self.poison = 0
        self._last_flush = time.monotonic()
        self.runtime = ConsumerRuntime(
            self,
            [topic],
            config,
            bootstrap_servers,
            group_id=f"{config.group_id}-eventlog",
            client_id="tierflow-eventlog",
            consumer_options={"max_poll_interval_ms": 600_000},
        )

    def start(self) -> None:
        """Join the group."""
        self.runtime.start()

    def request_stop(self, *_args: object) -> None:
        """Flush and leave at the end of the current batch."""
        self.runtime.request_stop()

    def run(self, *, max_seconds: float | None = None) -> int:
        """Consume until stopped; returns how many events were logged."""
        self.runtime.run(max_seconds=max_seconds)
        return self.logged

    # --- the sink -------------------------------------------------------------------------

    def resume(self, partitions: Sequence[Any]) -> dict[Any, int | None]:
        """Each partition resumes at the table's transaction version (the next offset)."""
        versions = self._versions([tp.partition for tp in partitions])
        out: dict[Any, int | None] = {}
        for tp in partitions:
            version = versions[tp.partition]
            if version is None:
                self.next_offsets.pop(tp.partition, None)
            else:
                self.next_offsets[tp.partition] = version
            out[tp] = version
        return out

    def write(self, poll: Poll) -> Written:
        """Judge and keep each partition's records until the next flush."""
        written = Written()
        for tp, records in poll.batches:
            self._take(tp.partition, records)
            written.positions[tp] = self.next_offsets[tp.partition]
        return written

    def durable(self, *, final: bool) -> dict[Any, int]:
        """Flush when due (always when final); the partitions' next offsets after a flush."""
        from kafka.structs import TopicPartition

        if not (final or self._due()):
            return {}
        self.flush()
        return {TopicPartition(self.topic, p): o for p, o in self.next_offsets.items()}

    def _versions(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """Each partition's logged offset (its txn version), from one read of the log."""
        from deltalake.exceptions import TableNotFoundError

        from tierflow.storage import delta_table

        try:
            table = delta_table(self.path)
        except TableNotFoundError:
            return dict.fromkeys(partitions)
        return {p: table.transaction_version(app_id(self.topic, p)) for p in partitions}

    def _due(self) -> bool:
        rows = sum(t.num_rows for t in self.pending)
        waited = time.monotonic() - self._last_flush
        return bool(self.unflushed) and (
            rows >= self.config.event_log_batch_records
            or waited >= self.config.event_log_interval_s
        )

    def _take(self, partition: int, fresh: Sequence[Any]) -> None:
        checked = check_messages(
            self.schema,
            [m.key for m in fresh],
            [m.value for m in fresh],
            [m.offset for m in fresh],
            [timestamp_ms(m) for m in fresh],
            max_bytes=self.config.max_event_bytes,
        )
        self.poison += len(checked.poison)
        events = checked.events
        record = events.column(RECORD_US).cast(pa.timestamp("us", tz="UTC"))
        events = (
            events.drop_columns([RECORD_US])
            .append_column(PARTITION, pa.array([partition] * events.num_rows, pa.int32()))
            .append_column(RECORD_TIME, record)
        )
        self.pending.append(events)
        self.next_offsets[partition] = fresh[-1].offset + 1
        self.unflushed.add(partition)

    def flush(self) -> None:
        """One Delta commit with the pending events and every partition's next offset."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        from tierflow.storage import delta_path, storage_options

        if not self.unflushed:
            return
        table = pa.concat_tables(self.pending)
        done = {p: self.next_offsets[p] for p in self.unflushed}
        txns = [Transaction(app_id(self.topic, p), o) for p, o in done.items()]
        # Even a batch of poison only is committed: its txn versions move on.
        write_deltalake(
            delta_path(self.path),
            table.rename_columns(
                ["_kafka_offset" if c == OFFSET else c for c in table.column_names]
            ),
            mode="append",
            commit_properties=CommitProperties(app_transactions=txns),
            storage_options=storage_options(self.path),
        )
        self.logged += table.num_rows
        self.pending = []
        self.unflushed.clear()
        self._last_flush = time.monotonic()
        log.info("event log commit", extra={"rows": table.num_rows, "total": self.logged})

    def revoke(self, partitions: Sequence[Any]) -> None:
        """Drop what is pending for the revoked partitions; write nothing for them again.

        Their next owner reads them again from the table's transaction versions. Writing
        here instead would block the network thread for a commit to the table, and a
        commit that outlasted the session would land after the next owner had read the
        versions: those events would be logged twice.
        """
        import pyarrow.compute as pc

        gone = {tp.partition for tp in partitions}
        lost = pa.array(sorted(gone), pa.int32())
        pending = [t.filter(pc.invert(pc.is_in(t[PARTITION], lost))) for t in self.pending]
        dropped = sum(t.num_rows for t in self.pending) - sum(t.num_rows for t in pending)
        self.pending = pending
        self.unflushed -= gone
        for partition in gone:
            self.next_offsets.pop(partition, None)
        if dropped:
            log.info("revoked partitions: pending events left to their next owner",
                     extra={"partitions": sorted(gone), "events": dropped})  # fmt: skip
