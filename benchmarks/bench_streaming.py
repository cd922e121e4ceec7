"""The feature daemon against a plain kafka-python loop, on the real broker and Redis.

Both consume the ``carrier_delays`` view's topic (NYC flights 2013 departures, keyed by
carrier, 4 partitions) and keep the same seven features per carrier in Redis.

- **tierflow**: the feature daemon, in process (``FeatureDaemon.poll_once``): contract
  checks, dead letters, window state and offsets committed atomically with the values.
- **peer**: what one writes by hand with kafka-python and redis-py: ``json.loads`` per
  message, each carrier's events of the last 25 hours in a list, the features
  recomputed naively from that list for every carrier a batch touched, one pipelined
  HSET + PEXPIRE per carrier, offsets committed after the write. No exactly-once, no
  state that survives a restart, no dead letters.

Measured, median of ``ROUNDS`` runs each:

1. **Throughput**: the topic pre-filled with the events; events/s from the first batch
   to the last write.
2. **Freshness at a fixed input rate**: events produced at ``RATE``/s for
   ``SECONDS`` s while the consumer runs; per event, store-write time minus the record's
   timestamp (its send time); p50 and p99.

Run: ``make bench-streaming`` (inside a private network namespace).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime

from benchmarks.harness import Results, local_services, median, percentile

ROUNDS = 3
MONTHS = (1, 2)
RATE = 2000
SECONDS = 12
PARTITIONS = 4


def carrier_view():
    from tierflow.project import Project

    return Project.load().feature_view("carrier_delays")


def messages(view):
    from tierflow.examples.flights import flights_table
    from tierflow.stream.replay import event_messages, ordered

    table, _ = ordered(flights_table(MONTHS), view.event_time)
    return [(k, v) for k, v, _ in event_messages(table, view.entities, view.event_time)]


def create_topic(bootstrap: str) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"bench-{uuid.uuid4().hex[:8]}.flights.departures"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    admin.close()
    return name


def produce(bootstrap: str, topic: str, items, rate: float | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    began = time.monotonic()
    for i, (key, value) in enumerate(items):
        if rate:
            wait = i / rate - (time.monotonic() - began)
            if wait > 0:
                time.sleep(wait)
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


# --- the peer: a plain kafka-python loop ---------------------------------------------------


class NaiveLoop:
    """The hand-written consumer (see the module doc)."""

    def __init__(self, bootstrap: str, topic: str, redis_url: str, view) -> None:
        import redis
        from kafka import KafkaConsumer

        self.view = view
        self.redis = redis.Redis.from_url(redis_url)
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"naive-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=2000,
        )  # fmt: skip
        self.events: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.max_ts = 0
        self.applied = 0
        self.freshness: list[float] = []
        self.step = view.step_us
        self.lateness = 10 * 60 * 1_000_000

    def values(self, carrier: str, grid: int) -> dict:
        day = 24 * 3_600_000_000
        recent = [(t, d) for t, d in self.events[carrier] if grid - day <= t < grid]
        hour = [d for t, d in recent if t >= grid - self.step]
        delays = [d for _, d in recent]
        n = len(delays)
        mean = sum(delays) / n if n else None
        std = None
        if n > 1:
            std = math.sqrt(max(0.0, (sum(d * d for d in delays) - n * mean * mean) / (n - 1)))
        last = max(recent)[1] if recent else None
        return {
            "dep_delay_mean_1h": sum(hour) / len(hour) if hour else None,
            "dep_delay_mean_24h": mean,
            "departures_24h": n,
            "late_rate_24h": sum(1.0 for d in delays if d > 15) / n if n else None,
            "dep_delay_std_24h": std,
            "dep_delay_max_24h": max(delays) if delays else None,
            "last_dep_delay": last,
        }

    def poll_once(self) -> int:
        from kafka.structs import OffsetAndMetadata

        records = self.consumer.poll(timeout_ms=100)
        touched: set[str] = set()
        stamps: list[int] = []
        offsets = {}
        for tp, batch in records.items():
            for m in batch:
                event = json.loads(m.value)
                if event.get("dep_delay") is None or event.get("dep_at") is None:
                    continue
                ts = int(datetime.fromisoformat(event["dep_at"]).timestamp() * 1_000_000)
                self.events[event["carrier"]].append((ts, float(event["dep_delay"])))
                self.max_ts = max(self.max_ts, ts)
                touched.add(event["carrier"])
                stamps.append(m.timestamp)
            offsets[tp] = OffsetAndMetadata(batch[-1].offset + 1, "", -1)
        if not offsets:
            return 0
        grid = (self.max_ts - self.lateness) // self.step * self.step
        pipe = self.redis.pipeline(transaction=False)
        for carrier in touched:
            key = f"naive:{self.view.name}:{carrier}"
            pipe.hset(key, mapping={"we": grid, "v": json.dumps(self.values(carrier, grid))})
            pipe.pexpire(key, self.view.ttl_us // 1000)
            cutoff = grid - 25 * 3_600_000_000
            self.events[carrier] = [e for e in self.events[carrier] if e[0] >= cutoff]
        pipe.execute()
        now = time.time()
        self.freshness += [now - s / 1000 for s in stamps]
        self.consumer.commit(offsets)
        count = sum(len(b) for b in records.values())
        self.applied += count
        return count

    def close(self) -> None:
        self.consumer.close()
        self.redis.close()


# --- tierflow's daemon, in process ----------------------------------------------------------


class Daemon:
    def __init__(self, bootstrap: str, topic: str, redis_url: str, view) -> None:
        from tierflow.config.streaming import StreamingConfig
        from tierflow.stores.redis_store import RedisOnlineStore
        from tierflow.stream.daemon import FeatureDaemon

        prefix = topic[: -len(view.source.topic)]
        config = StreamingConfig(
            group_id=f"bench-{uuid.uuid4().hex[:6]}", topic_prefix=prefix, metrics_port=0
        )
        self.store = RedisOnlineStore(redis_url)
        self.daemon = FeatureDaemon([view], config, self.store, bootstrap)
        self.daemon.start()

    @property
    def applied(self) -> int:
        return self.daemon.summary.consumed

    @property
    def freshness(self) -> list[float]:
        return list(self.daemon.metrics.freshness_samples)

    def poll_once(self) -> int:
        before = self.daemon.summary.consumed
        self.daemon.poll_once()
        return self.daemon.summary.consumed - before

    def close(self) -> None:
        self.daemon.close()
        self.store.close()


def throughput(make, total: int) -> float:
    consumer = make()
    try:
        began = None
        while consumer.applied < total:
            if consumer.poll_once() and began is None:
                began = time.perf_counter()
        return total / (time.perf_counter() - began)
    finally:
        consumer.close()


def fixed_rate(make, bootstrap: str, topic: str, items) -> tuple[float, float, float]:
    consumer = make()
    try:
        # Join the group first, so the freshness is not the join's.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            consumer.poll_once()
            daemon = getattr(consumer, "daemon", None)
            if daemon.partitions if daemon is not None else consumer.consumer.assignment():
                break
        producer = threading.Thread(target=produce, args=(bootstrap, topic, items, RATE))
        began = time.perf_counter()
        producer.start()
        # A consumer that stalls fails the round instead of hanging the benchmark.
        deadline = time.monotonic() + len(items) / RATE + 120
        while consumer.applied < len(items):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{type(consumer).__name__} applied {consumer.applied:,} of "
                                   f"{len(items):,} events in time")  # fmt: skip
            consumer.poll_once()
        producer.join()
        elapsed = time.perf_counter() - began
        samples = consumer.freshness[-len(items) :]
        return percentile(samples, 50) * 1000, percentile(samples, 99) * 1000, len(items) / elapsed
    finally:
        consumer.close()


def main() -> int:
    view = carrier_view()
    items = messages(view)
    paced = items[: RATE * SECONDS]
    results = Results("streaming")
    results.raw["setup"] = {"events": len(items), "partitions": PARTITIONS, "rate": RATE,
                            "paced_events": len(paced), "view": view.name}  # fmt: skip
    with local_services("kafka", "redis") as manager:
        bootstrap = manager.service("kafka").endpoints()["bootstrap_servers"]
        redis_url = manager.service("redis").endpoints()["url"]
        ours, peer = [], []
        for _ in range(ROUNDS):
            topic = create_topic(bootstrap)
            produce(bootstrap, topic, items)
            ours.append(
                throughput(lambda t=topic: Daemon(bootstrap, t, redis_url, view), len(items))
            )
            peer.append(
                throughput(lambda t=topic: NaiveLoop(bootstrap, t, redis_url, view), len(items))
            )
            print(
                f"  throughput round: tierflow {ours[-1]:,.0f}/s, naive {peer[-1]:,.0f}/s",
                flush=True,
            )
        results.raw["throughput"] = {"tierflow": ours, "peer": peer}
        results.add(benchmark=f"throughput, {len(items):,} events pre-filled", metric="events/s",
                    tierflow=median(ours), peer=median(peer), peer_name="kafka-python loop",
                    ratio=median(ours) / median(peer))  # fmt: skip

        fresh: dict[str, list[tuple[float, float, float]]] = {"tierflow": [], "peer": []}
        for _ in range(ROUNDS):
            for name, make in (("tierflow", Daemon), ("peer", NaiveLoop)):
                topic = create_topic(bootstrap)
                fresh[name].append(
                    fixed_rate(
                        lambda m=make, t=topic: m(bootstrap, t, redis_url, view),
                        bootstrap,
                        topic,
                        paced,
                    )
                )
                print(
                    f"  {name} at {RATE}/s: p50 {fresh[name][-1][0]:.1f} ms, p99 {fresh[name][-1][1]:.1f} ms",
                    flush=True,
                )
        results.raw["freshness"] = fresh
        for index, metric in ((0, "freshness p50 ms"), (1, "freshness p99 ms"), (2, "events/s")):
            a = median([r[index] for r in fresh["tierflow"]])
            b = median([r[index] for r in fresh["peer"]])
            results.add(benchmark=f"fixed input rate {RATE}/s for {SECONDS} s", metric=metric,
                        tierflow=a, peer=b, peer_name="kafka-python loop", ratio=a / b)  # fmt: skip
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
