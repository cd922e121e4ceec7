"""The real broker: keyed messages in order per partition, committed group offsets."""

from __future__ import annotations

from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import DefaultSerializer, JsonSerializer

pytestmark = [pytest.mark.kafka]

N_MESSAGES = 10_000
N_KEYS = 100


def consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        value_deserializer=JsonSerializer(),
        key_deserializer=DefaultSerializer(),
        max_poll_records=500,
    )


def consume(c: KafkaConsumer, limit: int, timeout_s: float = 60.0) -> list:
    """Poll until ``limit`` messages are processed; commit exactly what was processed."""
    processed = []
    deadline_polls = int(timeout_s / 0.5)
    for _ in range(deadline_polls):
        for tp, records in c.poll(timeout_ms=500).items():
            for rec in records:
                if len(processed) == limit:
                    break
                processed.append((tp.partition, rec.offset, rec.key, rec.value["seq"]))
        if len(processed) >= limit:
            break
    last = {}
    for partition, offset, _, _ in processed:
        last[partition] = max(offset, last.get(partition, -1))
    topic = next(iter(c.subscription()))
    c.commit({TopicPartition(topic, p): _offset_meta(o + 1) for p, o in last.items()})
    return processed


def _offset_meta(offset: int):
    from kafka.structs import OffsetAndMetadata

    return OffsetAndMetadata(offset, "", -1)


def test_keyed_messages_in_order_and_group_resumes(kafka_bootstrap, kafka_topic, unique_name):
    topic = kafka_topic(partitions=3)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        key_serializer=DefaultSerializer(),
        value_serializer=JsonSerializer(),
        acks="all",
        linger_ms=5,
    )
    for seq in range(N_MESSAGES):
        producer.send(topic, key=f"k{seq % N_KEYS}", value={"seq": seq})
    producer.flush()
    producer.close()

    group = unique_name("group")
    first = consumer(kafka_bootstrap, topic, group)
    got_first = consume(first, limit=6_000)
    committed = {p: first.committed(TopicPartition(topic, p)) for p in range(3)}
    first.close()
    assert len(got_first) == 6_000
    # Exactly the processed messages were committed (a partition not reached has none).
    assert sum(o or 0 for o in committed.values()) == 6_000

    second = consumer(kafka_bootstrap, topic, group)
    got_second = consume(second, limit=N_MESSAGES - 6_000)
    second.close()

    # The second consumer started exactly where the first one committed.
    first_seen = defaultdict(list)
    for partition, offset, _, _ in got_second:
        first_seen[partition].append(offset)
    for partition, offsets in first_seen.items():
        assert min(offsets) == (committed[partition] or 0)

    everything = got_first + got_second
    assert sorted(seq for *_, seq in everything) == list(range(N_MESSAGES))

    by_partition = defaultdict(list)
    by_key = defaultdict(list)
    for partition, offset, key, seq in everything:
        by_partition[partition].append(offset)
        by_key[key].append((partition, seq))
    assert len(by_partition) == 3, "keys should spread over all partitions"
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets))), "offsets contiguous and in order"
    for key, seen in by_key.items():
        assert len({p for p, _ in seen}) == 1, f"key {key} landed on several partitions"
        seqs = [s for _, s in seen]
        assert seqs == sorted(seqs), f"key {key} out of order"
        assert len(seqs) == N_MESSAGES // N_KEYS
