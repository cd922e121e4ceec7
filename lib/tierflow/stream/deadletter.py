"""Dead-letter topics, written exactly once.

Poison messages of ``<topic>`` go to ``<topic><dead_letter_suffix>`` (created with the
topic's partition count; partition ``p`` to partition ``p``), with the original topic,
partition, offset, the error and the consumer group in headers. The daemon waits for
them to be acknowledged before its store commit, and the store remembers how far the
dead-letter partition reached at each commit; on assignment the daemon reads what was
dead-lettered after that (by a run that crashed before its commit) and does not send
those messages again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tierflow.config.streaming import StreamingConfig
from tierflow.stream.connection import KafkaConnection, kafka_options, through_failover
from tierflow.stream.runtime import StreamError

H_TOPIC, H_PARTITION, H_OFFSET, H_ERROR, H_GROUP = (
    "tf.topic",
    "tf.partition",
    "tf.offset",
    "tf.error",
    "tf.group",
)
_MAX_DEAD_LETTER_BYTES = 900_000  # stays under the broker's default message size


class DeadLetters:
    """The dead-letter topics of a consumer group's source topics."""

    def __init__(
        self, config: StreamingConfig, bootstrap: KafkaConnection | str, client_id: str
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.partitions: dict[str, int] = {}  # source topic -> dead-letter partitions
        self.source_partitions: dict[str, int] = {}  # source topic -> its partitions
        self._producer: Any = None
        self._reader: Any = None

    def start(self, topics: Sequence[str]) -> None:
        """Connect, check that the source topics exist, and create the dead-letter topics.

        Raises:
            StreamError: a source topic does not exist.
            KafkaError: Kafka cannot be reached.
        """
        from kafka import KafkaAdminClient, KafkaProducer
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        self._producer = KafkaProducer(
            **kafka_options(self.bootstrap),
            client_id=f"{self.client_id}-dlq",
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=self.config.request_timeout_ms,
            linger_ms=5,
            max_request_size=2_000_000,
        )
        admin = KafkaAdminClient(**kafka_options(self.bootstrap), client_id=self.client_id)
        try:
            deadline = time.monotonic() + 30
            counts: dict[str, int] = {}
            while True:
                existing = admin.describe_topics(list(topics))
                counts = {
                    t["name"]: len(t["partitions"])
                    for t in existing
                    if t.get("error_code", 0) == 0 and t["partitions"]
                }
                if len(counts) == len(topics) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            missing = sorted(set(topics) - set(counts))
            if missing:
                raise StreamError(
                    f"topic(s) {', '.join(missing)} do not exist (create them, or replay "
                    "into them with `tierflow replay`)"
                )
            self.source_partitions = dict(counts)
            for topic, partitions in counts.items():
                name = topic + self.config.dead_letter_suffix
                try:
                    admin.create_topics(
                        [NewTopic(name, partitions, self.config.topic_replication_factor)]
                    )
                except TopicAlreadyExistsError:
                    pass
                described = admin.describe_topics([name])[0]
                self.partitions[topic] = max(1, len(described["partitions"]))
        finally:
            admin.close()

    def send(
        self,
        topic: str,
        partition: int,
        records: Sequence[Any],
        dead: dict[int, list[str]],
        *,
        already: set[int],
        end: int | None,
    ) -> tuple[int | None, int, int]:
        """Send a batch's dead letters and wait for them to be acknowledged.

        Args:
            topic: The source topic.
            partition: The source partition.
            records: The batch's records.
            dead: Index in ``records`` to the reasons it is dead.
            already: Source offsets a crashed run sent already (not sent again).
            end: How far the dead-letter partition reached at the last commit.

        Returns:
            The dead-letter partition's new end, how many were sent, and how many of
            those were late events.
        """
        if not dead:
            return end, 0, 0
        target = partition % self.partitions[topic]
        futures, late = [], 0
        for i in sorted(dead):
            message = records[i]
            if message.offset in already:
                continue  # sent by a run that crashed before committing
            reason = "; ".join(dead[i])
            value = message.value or b""
            headers = [
                (H_TOPIC, topic.encode()),
                (H_PARTITION, str(partition).encode()),
                (H_OFFSET, str(message.offset).encode()),
                (H_ERROR, reason[:2000].encode()),
                (H_GROUP, self.config.group_id.encode()),
            ]
            if len(value) > _MAX_DEAD_LETTER_BYTES:
                headers.append(("tf.truncated_from", str(len(value)).encode()))
                value = value[:_MAX_DEAD_LETTER_BYTES]
            futures.append(
                self._producer.send(
                    topic + self.config.dead_letter_suffix,
                    key=message.key,
                    value=value,
                    headers=headers,
                    partition=target,
                )
            )
            late += reason.split(":", 1)[0] == "late"
        self._producer.flush()
        for future in futures:
            record = future.get(timeout=30)
            end = max(end or 0, record.offset + 1)
        return end, len(futures), late

    def sent_after(
        self, topic: str, partition: int, *, end: int | None, floor: int | None
    ) -> set[int]:
        """Source offsets at or past ``floor`` dead-lettered past ``end``.

        Those were sent by a run that crashed before its store commit.
        """
        from kafka import KafkaConsumer, TopicPartition

        target = TopicPartition(
            topic + self.config.dead_letter_suffix, partition % self.partitions[topic]
        )
        if self._reader is None:
            # One reader for the daemon's life: a client made while a broker is
            # unreachable can spend its whole bootstrap timeout on that broker, and a
            # long-lived one already knows which brokers lead what.
            self._reader = KafkaConsumer(
                **kafka_options(self.bootstrap),
                client_id=f"{self.client_id}-dlq-scan",
                enable_auto_commit=False,
                group_id=None,
                request_timeout_ms=self.config.request_timeout_ms,
            )
        reader = self._reader
        found: set[int] = set()
        reader.assign([target])
        # The end offset, waiting out a leader failover (a broker just lost).
        last = through_failover(lambda: int(reader.end_offsets([target])[target]), str(target))
        begin = end or 0
        if last <= begin:
            return found
        reader.seek(target, begin)
        lowest = floor or 0
        while reader.position(target) < last:
            for messages in reader.poll(timeout_ms=1000).values():
                for m in messages:
                    headers = dict(m.headers or [])
                    if (
                        headers.get(H_TOPIC) == topic.encode()
                        and headers.get(H_PARTITION) == str(partition).encode()
                        and headers.get(H_GROUP) == self.config.group_id.encode()
                    ):
                        offset = int(headers[H_OFFSET])
                        if offset >= lowest:
                            found.add(offset)
        return found

    def close(self) -> None:
        """Flush and release the clients."""
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
            self._producer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
