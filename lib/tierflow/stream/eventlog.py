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
from kafka import ConsumerRebalanceListener

from tierflow.config.features import FeatureViewConfig
from tierflow.config.streaming import StreamingConfig
from tierflow.stream.connection import KafkaConnection, kafka_options
from tierflow.stream.events import OFFSET, TopicSchema, check_messages

log = logging.getLogger("tierflow.stream.eventlog")
PARTITION, RECORD_TIME = "_kafka_partition", "_kafka_timestamp"


def app_id(topic: str, partition: int) -> str:
    """The Delta application-transaction id of a partition."""
    return f"tierflow-eventlog/{topic}/{partition}"


class EventLogger:
    """Appends a topic's valid events to a Delta table, exactly once per offset."""

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
        self.bootstrap = bootstrap_servers
        self.stopping = False
        self.pending: list[pa.Table] = []
        self.next_offsets: dict[int, int] = {}  # per partition: the next offset to log
        self.unflushed: set[int] = set()
        self.assigned: set[int] = set()
        self.logged = 0
        self.poison = 0
        self._consumer: Any = None
        self._last_flush = time.monotonic()
        self._to_resume: list[Any] = []  # assigned, not yet sought to the table's offset

    def _versions(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """Each partition's logged offset (its txn version), from one read of the log."""
        from deltalake.exceptions import TableNotFoundError

        from tierflow.storage import delta_table

        try:
            table = delta_table(self.path)
        except TableNotFoundError:
            return dict.fromkeys(partitions)
        return {p: table.transaction_version(app_id(self.topic, p)) for p in partitions}

    def start(self) -> None:
        """Join the group."""
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            **kafka_options(self.bootstrap),
            group_id=f"{self.config.group_id}-eventlog",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.config.max_poll_records,
            session_timeout_ms=self.config.session_timeout_ms,
            max_poll_interval_ms=600_000,
        )
        self._consumer.subscribe([self.topic], listener=_Listener(self))

    def request_stop(self, *_args: object) -> None:
        """Flush and leave at the end of the current batch."""
        self.stopping = True

    def run(self, *, max_seconds: float | None = None) -> int:
        """Consume until stopped; returns how many events were logged."""
        began = time.monotonic()
        try:
            while not self.stopping:
                if max_seconds is not None and time.monotonic() - began > max_seconds:
                    break
                records = self._consumer.poll(timeout_ms=self.config.poll_timeout_ms)
                for tp, messages in records.items():
                    # A partition enters `assigned` once sought to the table's offset.
                    if tp.partition in self.assigned:
                        self._take(tp.partition, messages)
                self._resume_assigned()
                if self._due():
                    self.flush()
                    self._commit_kafka()
            self.flush()
            self._commit_kafka()
        finally:
            self._consumer.close(autocommit=False)
        return self.logged

    def _due(self) -> bool:
        rows = sum(t.num_rows for t in self.pending)
        waited = time.monotonic() - self._last_flush
        return bool(self.unflushed) and (
            rows >= self.config.event_log_batch_records
            or waited >= self.config.event_log_interval_s
        )

    def _take(self, partition: int, messages: Sequence[Any]) -> None:
        floor = self.next_offsets.get(partition)
        fresh = [m for m in messages if floor is None or m.offset >= floor]
        if not fresh:
            return
        checked = check_messages(
            self.schema,
            [m.key for m in fresh],
            [m.value for m in fresh],
            [m.offset for m in fresh],
            max_bytes=self.config.max_event_bytes,
        )
        self.poison += len(checked.poison)
        stamps = {m.offset: m.timestamp for m in fresh}
        events = checked.events
        offsets = events.column(OFFSET).to_pylist()
        events = events.append_column(
            PARTITION, pa.array([partition] * events.num_rows, pa.int32())
        ).append_column(
            RECORD_TIME,
            pa.array([stamps[o] * 1000 for o in offsets], pa.timestamp("us", tz="UTC")),
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

    def _commit_kafka(self) -> None:
        """Tell Kafka how far the table is (it only saves a re-read: the txns decide)."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in self.next_offsets.items()
            if p in self.assigned
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("kafka commit failed", extra={"error": repr(exc)})

    def _resume_assigned(self) -> None:
        """Seek each newly assigned partition to the table's transaction version."""
        if not self._to_resume:
            return
        resuming, self._to_resume = self._to_resume, []
        versions = self._versions([tp.partition for tp in resuming])
        for tp in resuming:
            version = versions[tp.partition]
            if version is None:
                self.next_offsets.pop(tp.partition, None)
                self._consumer.seek_to_beginning(tp)
            else:
                self.next_offsets[tp.partition] = version
                self._consumer.seek(tp, version)
            self.assigned.add(tp.partition)

    def on_assigned(self, assigned: Sequence[Any]) -> None:
        """Note new partitions; they are resumed after the poll returns.

        kafka-python runs rebalance callbacks on its network thread, which also sends
        the heartbeats: reading the table there (a round of requests to an object store)
        could outlast the session and cost the membership. Until the table has been
        read, what is fetched for these partitions is dropped.
        """
        self._to_resume.extend(tp for tp in assigned if tp not in self._to_resume)

    def on_revoked(self, revoked: Sequence[Any]) -> None:
        """Drop what is pending for the revoked partitions; write nothing for them again.

        Their next owner reads them again from the table's transaction versions. Writing
        here instead would block the network thread for a commit to the table, and a
        commit that outlasted the session would land after the next owner had read the
        versions: those events would be logged twice.
        """
        import pyarrow.compute as pc

        gone = {tp.partition for tp in revoked}
        for tp in revoked:
            if tp in self._to_resume:
                self._to_resume.remove(tp)
        lost = pa.array(sorted(gone), pa.int32())
        pending = [t.filter(pc.invert(pc.is_in(t[PARTITION], lost))) for t in self.pending]
        dropped = sum(t.num_rows for t in self.pending) - sum(t.num_rows for t in pending)
        self.pending = pending
        self.assigned -= gone
        self.unflushed -= gone
        for partition in gone:
            self.next_offsets.pop(partition, None)
        if dropped:
            log.info("revoked partitions: pending events left to their next owner",
                     extra={"partitions": sorted(gone), "events": dropped})  # fmt: skip


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, logger: EventLogger) -> None:
        self.logger = logger

    def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
        self.logger.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
        self.logger.on_assigned(assigned)
