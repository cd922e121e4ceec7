"""Materialization throughput and online read latency: tierflow against raw redis-py.

- **Loading rows into Redis.** The same precomputed feature rows written by tierflow's
  Redis store (one Lua script per batch: window guard, values, TTL, checkpoint, all
  atomic) and by a plain pipelined redis-py loader (HSET + PEXPIRE per key, no guard).
- **End-to-end materialization.** ``materialize`` of a synthetic view (compute on the
  single-node tier + load), rows per second.
- **Online reads.** ``get_online_features`` for 1, 10 and 100 entities against raw
  redis-py doing the same reads (pipelined HMGET + JSON decode), p50 and p99 over many
  requests, median of several rounds.

Run: ``make bench-features`` (inside a private network namespace, Redis on loopback).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.harness import Results, local_services, median, percentile

ENTITIES = 100_000
ROUNDS = 5
READS = 400


def view_config():
    from tierflow.config.features import FeatureViewConfig

    return FeatureViewConfig.model_validate({
        "name": "bench_users", "entities": ["user"], "event_time": "ts", "step": "1h", "ttl": "1d",
        "source": {"format": "parquet", "path": "unused", "columns": {
            "user": {"type": "int64"}, "ts": {"type": "timestamp"}, "amount": {"type": "float64"}}},
        "features": [
            {"name": "n_24h", "agg": "count", "window": "24h"},
            {"name": "amount_mean_24h", "agg": "mean", "column": "amount", "window": "24h"},
            {"name": "amount_max_24h", "agg": "max", "column": "amount", "window": "24h"},
            {"name": "amount_sum_1h", "agg": "sum", "column": "amount"},
        ],
    })  # fmt: skip


def make_rows(n: int, seed: int):
    from tierflow.stores.base import OnlineRow

    rng = random.Random(seed)
    end = 1_704_067_200_000_000
    return [
        OnlineRow((i,), {"n_24h": rng.randrange(50), "amount_mean_24h": rng.random() * 100,
                         "amount_max_24h": rng.random() * 500, "amount_sum_1h": rng.random() * 50}, end)
        for i in range(n)
    ]  # fmt: skip


def raw_load(client, view: str, rows, ttl_ms: int, batch: int) -> None:
    from tierflow.stores.base import encode_values, entity_key

    for start in range(0, len(rows), batch):
        pipe = client.pipeline(transaction=False)
        for r in rows[start : start + batch]:
            key = f"raw:{view}:{entity_key(r.entity)}"
            pipe.hset(key, mapping={"we": r.window_end_us, "v": encode_values(r.values)})
            pipe.pexpire(key, ttl_ms)
        pipe.execute()


def raw_read(client, view: str, ids: list[int]) -> list:
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(f"raw:{view}:[{i}]", "we", "v")
    return [None if v is None else json.loads(v) for _, v in pipe.execute()]


def main() -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tierflow.config.jobs import SourceConfig
    from tierflow.engines import create_engine
    from tierflow.features.materialize import materialize
    from tierflow.features.online import get_online_features
    from tierflow.jobs.sources import resolve_source
    from tierflow.stores.redis_store import RedisOnlineStore

    results = Results("features")
    view = view_config()
    with local_services("redis") as services:
        url = services.service("redis").endpoints()["url"]
        store = RedisOnlineStore(url)
        client = store.client
        rows = make_rows(ENTITIES, 1)
        batch = 2_000

        print(f"loading {ENTITIES:,} rows, {ROUNDS} rounds", flush=True)
        ours, peer = [], []
        for _ in range(ROUNDS):
            client.flushdb()
            began = time.perf_counter()
            for start in range(0, len(rows), batch):
                store.write(
                    view.name,
                    rows[start : start + batch],
                    ttl_us=view.ttl_us,
                    checkpoint=("bench", str(start)),
                )
            ours.append(ENTITIES / (time.perf_counter() - began))
            client.flushdb()
            began = time.perf_counter()
            raw_load(client, view.name, rows, view.ttl_us // 1000, batch)
            peer.append(ENTITIES / (time.perf_counter() - began))
        results.raw["load_rows_per_s"] = {"tierflow": ours, "redis-py": peer}
        results.add(benchmark="load rows into Redis", metric="rows/s", tierflow=median(ours),
                    peer=median(peer), peer_name="pipelined redis-py", ratio=median(peer) / median(ours))  # fmt: skip

        # End-to-end: events -> features (single-node tier) -> Redis.
        with tempfile.TemporaryDirectory() as tmp:
            rng = random.Random(2)
            n_events = 1_000_000
            start_us = 1_704_067_200_000_000
            table = pa.table({
                "user": pa.array([rng.randrange(ENTITIES) for _ in range(n_events)], pa.int64()),
                "ts": pa.array([start_us + rng.randrange(48 * 3_600_000_000) for _ in range(n_events)], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "amount": pa.array([rng.random() * 100 for _ in range(n_events)]),
            })  # fmt: skip
            folder = Path(tmp) / "events"
            folder.mkdir()
            pq.write_table(table, folder / "part.parquet")
            source = resolve_source(
                "bench", SourceConfig(format="parquet", path=str(folder)), Path(tmp)
            )
            engine = create_engine("single")
            speeds = []
            for round_ in range(3):
                client.flushdb()
                result = materialize(view, source, engine, store, chunk_rows=250_000,
                                     end=datetime(2024, 1, 3, round_, tzinfo=timezone.utc))  # fmt: skip
                speeds.append(result.rows_written / result.seconds)
            results.raw["materialize"] = {"rows_per_s": speeds, "events": n_events}
            results.add(benchmark=f"materialize {n_events:,} events -> {result.rows_written:,} entities",
                        metric="entities/s", tierflow=median(speeds), peer=None, peer_name="-", ratio=None)  # fmt: skip

        client.flushdb()
        for start in range(0, len(rows), batch):
            store.write(view.name, rows[start : start + batch], ttl_us=view.ttl_us)
        raw_load(client, view.name, rows, view.ttl_us // 1000, batch)
        views = {view.name: view}
        rng = random.Random(3)
        for size in (1, 10, 100):
            ours_p50, ours_p99, peer_p50, peer_p99 = [], [], [], []
            for _ in range(ROUNDS):
                a, b = [], []
                for _ in range(READS):
                    ids = [rng.randrange(ENTITIES) for _ in range(size)]
                    began = time.perf_counter()
                    get_online_features(store, views, [view.name], [{"user": i} for i in ids])
                    a.append((time.perf_counter() - began) * 1000)
                    began = time.perf_counter()
                    raw_read(client, view.name, ids)
                    b.append((time.perf_counter() - began) * 1000)
                ours_p50.append(percentile(a, 50))
                ours_p99.append(percentile(a, 99))
                peer_p50.append(percentile(b, 50))
                peer_p99.append(percentile(b, 99))
            results.raw[f"read_{size}"] = {"tierflow_p50": ours_p50, "tierflow_p99": ours_p99,
                                           "peer_p50": peer_p50, "peer_p99": peer_p99}  # fmt: skip
            results.add(benchmark=f"online read, {size} entities", metric="p50 ms", tierflow=median(ours_p50),
                        peer=median(peer_p50), peer_name="redis-py HMGET", ratio=median(ours_p50) / median(peer_p50))  # fmt: skip
            results.add(benchmark=f"online read, {size} entities", metric="p99 ms", tierflow=median(ours_p99),
                        peer=median(peer_p99), peer_name="redis-py HMGET", ratio=median(ours_p99) / median(peer_p99))  # fmt: skip
        store.close()
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
