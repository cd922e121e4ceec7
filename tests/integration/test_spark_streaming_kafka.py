"""Spark Structured Streaming reads the real broker (spark-sql-kafka) into a Delta table."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable
from kafka import KafkaProducer
from kafka.serializer import DefaultSerializer, JsonSerializer

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.slow]

N = 2_000


def test_kafka_topic_streams_into_delta(spark, kafka_bootstrap, kafka_topic, tmp_path):
    from pyspark.sql import functions as F

    topic = kafka_topic(partitions=2)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        value_serializer=JsonSerializer(),
        key_serializer=DefaultSerializer(),
    )
    for i in range(N):
        producer.send(topic, key=f"user-{i % 7}", value={"user": f"user-{i % 7}", "amount": i})
    producer.flush()
    producer.close()

    events = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
        .select(
            F.col("partition"),
            F.col("offset"),
            F.from_json(F.col("value").cast("string"), "user string, amount long").alias("e"),
        )
        .select("partition", "offset", "e.user", "e.amount")
    )
    path = str(tmp_path / "events")
    query = (
        events.writeStream.format("delta")
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start(path)
    )
    query.awaitTermination(timeout=180)
    assert query.exception() is None

    table = DeltaTable(path).to_pyarrow_table()
    assert table.num_rows == N
    assert sorted(table["amount"].to_pylist()) == list(range(N))
    per_user = {}
    for user, amount in zip(table["user"].to_pylist(), table["amount"].to_pylist(), strict=True):
        per_user[user] = per_user.get(user, 0) + amount
    assert per_user == {f"user-{u}": sum(i for i in range(N) if i % 7 == u) for u in range(7)}
    assert set(table["partition"].to_pylist()) == {0, 1}
