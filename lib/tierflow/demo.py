"""``make demo``: the local stack end to end on generated events, with embedded defaults.

1. brings up Kafka, Redis, Dask and Ray on loopback (those not already running);
2. produces keyed purchase events to a Kafka topic;
3. Spark Structured Streaming (spark-sql-kafka) lands the topic in a bronze Delta table;
4. delta-rs reads the table back; Dask (on the distributed scheduler) and Ray (remote
   tasks on the head node) each compute revenue per user, and the two must agree;
5. the totals go to Redis as one hash per user, read back and compared;
6. stops the services it started.

Every number printed is computed, and any disagreement exits non-zero.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierflow.config.services import load_services_config
from tierflow.paths import ProjectPaths
from tierflow.services.manager import ServiceManager

N_EVENTS = 20_000
N_USERS = 50


def _step(title: str) -> Callable[[str], None]:
    print(f"\n== {title}", flush=True)
    started = time.monotonic()

    def done(detail: str) -> None:
        print(f"   {detail} ({time.monotonic() - started:.1f}s)", flush=True)

    return done


def _produce(bootstrap: str, topic: str) -> dict[str, int]:
    from kafka import KafkaProducer
    from kafka.serializer import DefaultSerializer, JsonSerializer

    rng = random.Random(7)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        key_serializer=DefaultSerializer(),
        value_serializer=JsonSerializer(),
        acks="all",
        linger_ms=10,
    )
    expected: dict[str, int] = {}
    for i in range(N_EVENTS):
        user = f"user-{rng.randrange(N_USERS):03d}"
        cents = rng.randrange(100, 10_000)
        expected[user] = expected.get(user, 0) + cents
        producer.send(topic, key=user, value={"user": user, "cents": cents, "seq": i})
    producer.flush()
    producer.close()
    return expected


def _stream_to_delta(bootstrap: str, topic: str, table: Path, paths: ProjectPaths) -> None:
    from pyspark.sql import functions as F

    from tierflow.spark import get_spark

    spark = get_spark("tierflow-demo", master="local[2]", paths=paths)
    events = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
        .select(
            "partition",
            "offset",
            F.from_json(F.col("value").cast("string"), "user string, cents long, seq long").alias(
                "e"
            ),
        )
        .select("partition", "offset", "e.*")
    )
    query = (
        events.writeStream.format("delta")
        .option("checkpointLocation", str(table.parent / "_checkpoints" / table.name))
        .trigger(availableNow=True)
        .start(str(table))
    )
    query.awaitTermination()
    spark.stop()


def _dask_totals(scheduler: str, table: Any) -> dict[str, int]:
    import dask.dataframe as dd
    from distributed import Client

    with Client(scheduler, set_as_default=False) as client:  # type: ignore[no-untyped-call]
        frame = dd.from_pandas(table.to_pandas(), npartitions=4)  # type: ignore[no-untyped-call]
        totals = client.compute(frame.groupby("user")["cents"].sum()).result()
    return {str(k): int(v) for k, v in totals.items()}


def _ray_totals(env: dict[str, str], table: Any) -> dict[str, int]:
    os.environ.update(env)
    import ray

    @ray.remote
    def partial(users: list[str], cents: list[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for user, amount in zip(users, cents, strict=True):
            out[user] = out.get(user, 0) + amount
        return out

    ray.init(address=env["RAY_ADDRESS"], logging_level=logging.ERROR, log_to_driver=False)
    try:
        users, cents = table["user"].to_pylist(), table["cents"].to_pylist()
        step = len(users) // 4 + 1
        parts = ray.get(
            [
                partial.remote(users[i : i + step], cents[i : i + step])
                for i in range(0, len(users), step)
            ]
        )
    finally:
        ray.shutdown()
    totals: dict[str, int] = {}
    for part in parts:
        for user, amount in part.items():
            totals[user] = totals.get(user, 0) + amount
    return totals


def main() -> int:
    """Run the demo; returns the exit status."""
    paths = ProjectPaths.discover()
    config = load_services_config(None, paths.conf / "services.yaml")
    manager = ServiceManager(config, paths, progress=lambda m: print(f"   {m}", flush=True))
    wanted = ["kafka", "redis", "dask", "ray"]
    already = {s.name for s in manager.status(wanted, probe=False) if s.state != "stopped"}

    done = _step("Local services (Kafka, Redis, Dask, Ray) on 127.0.0.1")
    manager.up(wanted)
    done("all healthy")
    try:
        return _run(manager, paths)
    finally:
        started = [n for n in wanted if n not in already]
        if started:
            done = _step("Stopping the services this demo started")
            manager.down(started)
            done(", ".join(started))


def _batch(work: Path) -> int:
    from tierflow.examples.retail import generate
    from tierflow.project import Project

    done = _step("Batch jobs on generated retail data (tier chosen by size)")
    project = Project.load(data_dir=str(work / "data"))
    generate(project.data_dir)
    for name in ("orders_clean", "daily_revenue"):
        job = project.load_job(name)
        plan = project.plan(job)
        print(f"   {name}: {plan.engine} ({plan.reason})")
        record = project.run(job, echo=False)
        print(
            f"   {name}: {record.rows_in:,} rows in, {record.rows_quarantined:,} quarantined "
            f"{record.quarantine_by_rule or ''}, {record.rows_out:,} written"
        )
        if record.status != "succeeded":
            return 1
    done("done")
    return 0


def _run(manager: ServiceManager, paths: ProjectPaths) -> int:
    import redis
    from deltalake import DeltaTable

    bootstrap = manager.service("kafka").endpoints()["bootstrap_servers"]
    topic = f"demo-purchases-{int(time.time())}"
    work = Path(tempfile.mkdtemp(prefix="demo-", dir=paths.project / ".local"))
    if _batch(work):
        return 1
    table_path = work / "bronze" / "purchases"

    done = _step(f"Producing {N_EVENTS:,} keyed purchase events to Kafka topic {topic}")
    expected = _produce(bootstrap, topic)
    done(f"{len(expected)} users")

    done = _step("Spark Structured Streaming: Kafka topic -> bronze Delta table")
    _stream_to_delta(bootstrap, topic, table_path, paths)
    table = DeltaTable(str(table_path)).to_pyarrow_table()
    done(f"{table.num_rows:,} rows in {table_path.relative_to(paths.project)}")
    if table.num_rows != N_EVENTS:
        print(f"   MISMATCH: expected {N_EVENTS} rows", file=sys.stderr)
        return 1

    done = _step("Revenue per user on Dask (distributed scheduler) and on Ray (remote tasks)")
    by_dask = _dask_totals(manager.service("dask").endpoints()["scheduler"], table)
    by_ray = _ray_totals(manager.service("ray").client_env(), table)
    agree = by_dask == by_ray == expected
    done(f"Dask and Ray agree with the producer's own count: {agree}")
    if not agree:
        return 1

    done = _step("Totals into Redis, one hash per user, read back")
    client = redis.Redis.from_url(manager.service("redis").endpoints()["url"])
    with client.pipeline(transaction=True) as pipe:
        for user, cents in by_dask.items():
            pipe.hset(f"demo:{topic}:{user}", mapping={"revenue_cents": cents})
        pipe.execute()
    back = {
        user: int(client.hget(f"demo:{topic}:{user}", "revenue_cents") or -1) for user in by_dask
    }
    client.close()
    done(f"{len(back)} users, round trip equal: {back == by_dask}")
    top = sorted(by_dask.items(), key=lambda kv: -kv[1])[:5]
    print("\nTop users by revenue:")
    for user, cents in top:
        print(f"   {user}  {cents / 100:>10,.2f}")
    return 0 if back == by_dask else 1


if __name__ == "__main__":
    sys.exit(main())
