"""The feature daemon against hand-written kafka-python loops, on the real broker and stores.

All consume the ``carrier_delays`` view's topic (NYC flights 2013 departures, keyed by
carrier, 4 partitions) in one process.

- **tierflow**: the feature daemon, in process (``FeatureDaemon.poll_once``): contract
  checks, event-time rule, dead letters, window state and offsets committed atomically
  with the values; on Redis and on SQLite (the embedded default).
- **naive loop**: what one writes by hand with kafka-python and redis-py: ``json.loads``
  per message, each carrier's events of the last 25 hours in a list, the features
  recomputed naively from that list for every carrier a batch touched, one pipelined
  HSET + PEXPIRE per carrier, offsets committed after the write. No exactly-once, no
  state that survives a restart, no dead letters.
- **bare loop**: the ceiling of the client: poll and ``json.loads`` each message, nothing
  else (``max_poll_records`` as the daemon's).

Measured, medians of ``ROUNDS`` runs each:

1. **Throughput**: the topic pre-filled; events/s from the first batch to the last write.
2. **Freshness at a fixed input rate**: events produced at ``RATE``/s (by a producer in
   a process of its own) for ``SECONDS`` s while the consumer runs; per event,
   store-write time minus the record's timestamp (its send time); p50 and p99.
3. **The highest sustained rate**: the daemon on Redis at rising input rates
   (``LADDER``, ``STEP_SECONDS`` each, one run per rate): the highest rate it keeps up
   with at a freshness p99 of at most ``P99_LIMIT_MS``.
4. **Scaling out**: one and then two ``tierflow stream`` processes of one consumer group
   on a pre-filled topic (Redis); events/s from the first stored offset to the last.

Run: ``make bench-streaming`` (inside a private network namespace).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Results, local_services, median, percentile

ROUNDS = 3
MONTHS = (1, 2, 3, 4)
RATE = 2000
SECONDS = 12
PARTITIONS = 4
MAX_POLL_RECORDS = 2000  # the daemon's default
LADDER = (500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 10000, 12000, 16000, 20000)
STEP_SECONDS = 6
P99_LIMIT_MS = 100.0
SCALE_MONTHS = tuple(range(1, 13))  # long enough that a rebalance is a small part of it


def carrier_view():
    from tierflow.project import Project

    return Project.load().feature_view("carrier_delays")


def messages(view, months=MONTHS):
    from tierflow.examples.flights import flights_table
    from tierflow.stream.replay import event_messages, ordered

    table, _ = ordered(flights_table(months), view.event_time)
    return [(k, v) for k, v, _ in event_messages(table, view.entities, view.event_time)]


def create_topic(bootstrap: str, prefix: str = "") -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"{prefix or 'bench-' + uuid.uuid4().hex[:8] + '.'}flights.departures"
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


def _paced(bootstrap: str, topic: str, items, rate: float, ready, go) -> None:
    from kafka import KafkaProducer  # noqa: F401 - imported before the start signal

    ready.set()
    go.wait()
    produce(bootstrap, topic, items, rate)


class PacedProducer:
    """A paced producer in a process of its own (a thread would share the consumer's GIL),
    started and warmed up before its clock starts."""

    def __init__(self, bootstrap: str, topic: str, items, rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.go = context.Event(), context.Event()
        self.process = context.Process(
            target=_paced, args=(bootstrap, topic, items, rate, self.ready, self.go), daemon=True
        )
        self.process.start()
        if not self.ready.wait(120):
            raise RuntimeError("the producer process did not start")

    def start(self) -> None:
        self.go.set()

    def stop(self) -> None:
        self.process.join(timeout=120)
        if self.process.is_alive():
            self.process.kill()


# --- the peers ------------------------------------------------------------------------------


class NaiveLoop:
    """The hand-written consumer (see the module doc)."""

    def __init__(self, bootstrap: str, topic: str, store: str, view) -> None:
        import redis
        from kafka import KafkaConsumer

        self.view = view
        self.redis = redis.Redis.from_url(store)
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"naive-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
        )  # fmt: skip
        self.events: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.max_ts = 0
        self.applied = 0
        self.freshness: list[float] = []
        self.step = view.step_us
        self.lateness = 10 * 60 * 1_000_000

    def assigned(self) -> bool:
        return bool(self.consumer.assignment())

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
                stamps.append(m.timestamp)
                if event.get("dep_delay") is None or event.get("dep_at") is None:
                    continue
                ts = int(datetime.fromisoformat(event["dep_at"]).timestamp() * 1_000_000)
                self.events[event["carrier"]].append((ts, float(event["dep_delay"])))
                self.max_ts = max(self.max_ts, ts)
                touched.add(event["carrier"])
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


class BareLoop:
    """The client's ceiling: poll and decode, nothing kept (see the module doc)."""

    def __init__(self, bootstrap: str, topic: str, store: str, view) -> None:
        from kafka import KafkaConsumer

        del store, view  # nothing is kept
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
        )  # fmt: skip
        self.applied = 0
        self.freshness: list[float] = []

    def assigned(self) -> bool:
        return bool(self.consumer.assignment())

    def poll_once(self) -> int:
        records = self.consumer.poll(timeout_ms=100)
        count = 0
        for batch in records.values():
            for m in batch:
                json.loads(m.value)
            count += len(batch)
        self.applied += count
        return count

    def close(self) -> None:
        self.consumer.close()


# --- tierflow's daemon, in process ----------------------------------------------------------


class Daemon:
    def __init__(self, bootstrap: str, topic: str, store: str, view) -> None:
        from tierflow.config.streaming import StreamingConfig
        from tierflow.stream.daemon import FeatureDaemon

        prefix = topic[: -len(view.source.topic)]
        config = StreamingConfig(
            group_id=f"bench-{uuid.uuid4().hex[:6]}", topic_prefix=prefix, metrics_port=0
        )
        if store.startswith("redis"):
            from tierflow.stores.redis_store import RedisOnlineStore

            self.store: Any = RedisOnlineStore(store)
        else:
            from tierflow.stores.sqlite_store import SQLiteOnlineStore

            self.store = SQLiteOnlineStore(Path(store))
        self.daemon = FeatureDaemon([view], config, self.store, bootstrap)
        self.daemon.start()

    def assigned(self) -> bool:
        return bool(self.daemon.partitions)

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


def fixed_rate(make, bootstrap: str, topic: str, items, rate: float) -> tuple[float, float, float]:
    """p50 and p99 freshness (ms) and the rate consumed while ``items`` arrive at ``rate``/s.

    Raises:
        RuntimeError: the consumer fell so far behind that it did not finish in time.
    """
    consumer = make()
    try:
        producer = PacedProducer(bootstrap, topic, items, rate)
        # Join the group first, so the freshness is not the join's.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not consumer.assigned():
            consumer.poll_once()
        producer.start()
        began = time.perf_counter()
        deadline = time.monotonic() + len(items) / rate + 20
        try:
            while consumer.applied < len(items):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{type(consumer).__name__} applied {consumer.applied:,} "
                                       f"of {len(items):,} events in time")  # fmt: skip
                consumer.poll_once()
        finally:
            producer.stop()
        elapsed = time.perf_counter() - began
        samples = consumer.freshness[-len(items) :]
        return percentile(samples, 50) * 1000, percentile(samples, 99) * 1000, len(items) / elapsed
    finally:
        consumer.close()


def scale_out(bootstrap: str, redis_url: str, topic: str, total: int, processes: int) -> float:
    """Events/s of ``processes`` daemon processes of one new group on pre-filled ``topic``.

    Counted from the moment every process holds partitions (a member joining later
    would otherwise be measured by its head start) to the last stored offset.
    """
    from kafka import KafkaAdminClient

    from tierflow.stores.redis_store import RedisOnlineStore
    from tierflow.stream.parity import stored_offsets

    view_topic = "flights.departures"
    prefix = topic[: -len(view_topic)]
    group = f"bench-scale-{uuid.uuid4().hex[:6]}"
    env = os.environ | {
        "TIERFLOW_ONLINE_STORE": "redis", "TIERFLOW_REDIS_URL": redis_url,
        "TIERFLOW_STREAM_BOOTSTRAP_SERVERS": bootstrap, "TIERFLOW_STREAM_TOPIC_PREFIX": prefix,
        "TIERFLOW_STREAM_GROUP_ID": group, "TIERFLOW_STREAM_METRICS_PORT": "0",
    }  # fmt: skip
    tierflow = str(Path(sys.executable).parent / "tierflow")
    logs = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    daemons = [
        subprocess.Popen([tierflow, "stream", "--view", "carrier_delays"], env=env, cwd=ROOT,
                         stdout=(logs / f"{i}.log").open("wb"), stderr=subprocess.STDOUT)
        for i in range(processes)
    ]  # fmt: skip
    store = RedisOnlineStore(redis_url)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        began = first = None
        deadline = time.monotonic() + 300
        while True:
            for i, d in enumerate(daemons):
                if d.poll() is not None:
                    raise RuntimeError((logs / f"{i}.log").read_text()[-2000:])
            done = sum(stored_offsets(store, group, topic, PARTITIONS).values())
            if began is None:
                group_info = admin.describe_groups([group]).get(group, {})
                members = group_info.get("members") or []
                state = group_info.get("group_state") or group_info.get("state")
                if state == "Stable" and len(members) == processes:
                    began, first = time.perf_counter(), done
            if done >= total:
                if began is None or total - first < total // 2:
                    raise RuntimeError("the group settled too late to measure")
                return (total - first) / (time.perf_counter() - began)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{processes} daemons stored {done:,} of {total:,} in time")
            time.sleep(0.05)
    finally:
        admin.close()
        for d in daemons:
            d.terminate()
        for d in daemons:
            d.wait(timeout=60)
        store.close()


def climb(bootstrap: str, store: str, items, view) -> tuple[list[dict[str, Any]], Any]:
    """The daemon at each rate of ``LADDER`` until its p99 passes the limit or it falls
    behind; every step's figures, and the highest rate kept (with its p99)."""
    ladder: list[dict[str, Any]] = []
    best = None
    for rate in LADDER:
        topic = create_topic(bootstrap)
        burst = items[: int(rate * STEP_SECONDS)]
        try:
            p50, p99, got = fixed_rate(
                lambda t=topic: Daemon(bootstrap, t, store, view), bootstrap, topic, burst, rate
            )
        except RuntimeError as exc:
            ladder.append({"rate": rate, "error": str(exc)})
            break
        ladder.append({"rate": rate, "p50_ms": p50, "p99_ms": p99, "consumed_per_s": got})
        print(f"  ladder {rate}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {got:,.0f}/s", flush=True)
        if p99 > P99_LIMIT_MS or got < 0.95 * rate:
            break
        best = (rate, p99)
    return ladder, best


def main() -> int:
    view = carrier_view()
    items = messages(view)
    paced = items[: RATE * SECONDS]
    results = Results("streaming")
    results.raw["setup"] = {"events": len(items), "partitions": PARTITIONS, "rate": RATE,
                            "paced_events": len(paced), "view": view.name,
                            "max_poll_records": MAX_POLL_RECORDS}  # fmt: skip
    with local_services("kafka", "redis") as manager, tempfile.TemporaryDirectory() as tmp:
        bootstrap = manager.service("kafka").endpoints()["bootstrap_servers"]
        redis_url = manager.service("redis").endpoints()["url"]
        stores = {"redis": redis_url, "sqlite": str(Path(tmp) / "online.db")}
        runners = {
            "tierflow (Redis)": (Daemon, stores["redis"]),
            "tierflow (SQLite)": (Daemon, stores["sqlite"]),
            "naive loop": (NaiveLoop, stores["redis"]),
            "bare loop": (BareLoop, stores["redis"]),
        }
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(ROUNDS):
            topic = create_topic(bootstrap)
            produce(bootstrap, topic, items)
            for name, (make, store) in runners.items():
                rates[name].append(
                    throughput(
                        lambda m=make, t=topic, s=store: m(bootstrap, t, s, view), len(items)
                    )
                )
            print("  throughput round: " + ", ".join(f"{n} {r[-1]:,.0f}/s" for n, r in rates.items()),
                  flush=True)  # fmt: skip
        results.raw["throughput"] = rates
        label = f"throughput, {len(items):,} events pre-filled"
        for name in ("tierflow (Redis)", "tierflow (SQLite)"):
            for peer in ("naive loop", "bare loop"):
                results.add(benchmark=label, metric="events/s", tierflow=median(rates[name]),
                            tierflow_runner=name, peer=median(rates[peer]), peer_name=peer,
                            ratio=median(rates[name]) / median(rates[peer]))  # fmt: skip

        fresh: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(ROUNDS):
            for name in ("tierflow (Redis)", "tierflow (SQLite)", "naive loop"):
                make, store = runners[name]
                topic = create_topic(bootstrap)
                fresh.setdefault(name, []).append(
                    fixed_rate(lambda m=make, t=topic, s=store: m(bootstrap, t, s, view),
                               bootstrap, topic, paced, RATE)
                )  # fmt: skip
                p50, p99, _ = fresh[name][-1]
                print(f"  {name} at {RATE}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        results.raw["freshness"] = fresh
        peer = fresh["naive loop"]
        for name in ("tierflow (Redis)", "tierflow (SQLite)"):
            for index, metric in (
                (0, "freshness p50 ms"),
                (1, "freshness p99 ms"),
                (2, "events/s"),
            ):
                a = median([r[index] for r in fresh[name]])
                b = median([r[index] for r in peer])
                results.add(benchmark=f"fixed input rate {RATE}/s for {SECONDS} s", metric=metric,
                            tierflow=a, tierflow_runner=name, peer=b, peer_name="naive loop",
                            ratio=a / b)  # fmt: skip

        ladder, best = climb(bootstrap, stores["redis"], items, view)
        results.raw["ladder"] = ladder
        results.add(benchmark=f"highest input rate kept at freshness p99 <= {P99_LIMIT_MS:.0f} ms "
                              f"(Redis; {STEP_SECONDS} s a rate, one run)",
                    metric="events/s", tierflow=None if best is None else float(best[0]),
                    tierflow_runner="tierflow (Redis)", peer=None, peer_name="-",
                    ratio=None)  # fmt: skip

        scaling: dict[int, list[float]] = {1: [], 2: []}
        year = messages(view, SCALE_MONTHS)
        for _ in range(ROUNDS):
            topic = create_topic(bootstrap)
            produce(bootstrap, topic, year)
            for processes in (1, 2):
                scaling[processes].append(
                    scale_out(bootstrap, redis_url, topic, len(year), processes)
                )
            print(f"  scale-out: 1 process {scaling[1][-1]:,.0f}/s, 2 processes "
                  f"{scaling[2][-1]:,.0f}/s", flush=True)  # fmt: skip
        results.raw["scaling"] = scaling
        results.add(benchmark=f"scale-out, {len(year):,} events pre-filled, 2 daemon processes "
                              "of one group vs 1 (Redis)",
                    metric="events/s", tierflow=median(scaling[2]), tierflow_runner="2 processes",
                    peer=median(scaling[1]), peer_name="1 process",
                    ratio=median(scaling[2]) / median(scaling[1]))  # fmt: skip
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
