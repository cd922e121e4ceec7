"""The feature daemons against the real broker and Redis, run as subprocesses.

Parity with batch on the real flights data (the batch side computed from the event log
the stream wrote), a crash test (200k+ events, 0.1% poison, 20+ SIGKILLs, daemons added
and removed), graceful shutdown and resume, fuzzed messages, and bad configuration.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.support import read_table
from tierflow.config.features import FeatureViewConfig
from tierflow.examples.flights import flights_table
from tierflow.paths import ProjectPaths
from tierflow.project import Project
from tierflow.storage import is_delta_table
from tierflow.stores.base import OnlineStore
from tierflow.stores.redis_store import RedisOnlineStore
from tierflow.stores.sqlite_store import SQLiteOnlineStore
from tierflow.stream.parity import (
    Expectation,
    compare,
    end_offsets,
    expected_values,
    stored_offsets,
    wait_caught_up,
)
from tierflow.stream.replay import event_messages, ordered

PROJECT = Path(__file__).resolve().parents[2]
TIERFLOW = str(Path(sys.executable).parent / "tierflow")
pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemons:
    """Feature daemons as subprocesses of the real entry point; stopped by PID at the end."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.running: list[tuple[subprocess.Popen[bytes], int, Path]] = []
        self.started_at: dict[int, float] = {}
        self.finished: list[tuple[int, Path]] = []
        self.count = 0

    def start(self, *args: str, module: bool = False) -> tuple[subprocess.Popen[bytes], int]:
        self.count += 1
        port = free_port()
        out = self.tmp / f"daemon-{self.count}.out"
        entry = [sys.executable, "-m", "streaming.features"] if module else [TIERFLOW, "stream"]
        proc = subprocess.Popen(
            [*entry, *args, "--metrics-port", str(port)],
            cwd=PROJECT,
            env=self.env,
            stdout=out.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append((proc, port, out))
        self.started_at[proc.pid] = time.monotonic()
        return proc, port

    def settled(self, seconds: float = 5.0) -> list[int]:
        """Indexes of daemons running for at least ``seconds`` (past their start-up)."""
        now = time.monotonic()
        return [
            i for i, (proc, _p, _o) in enumerate(self.running)
            if now - self.started_at[proc.pid] >= seconds
        ]  # fmt: skip

    def kill(self, index: int) -> None:
        proc, _port, out = self.running.pop(index)
        proc.send_signal(signal.SIGKILL)
        self.finished.append((proc.wait(), out))

    def stop(self, index: int, timeout: float = 60) -> dict[str, Any]:
        proc, _port, out = self.running.pop(index)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=timeout)
        self.finished.append((code, out))
        assert code == 0, out.read_text()[-3000:]
        return summary_of(out)

    def check_alive(self) -> None:
        for proc, _port, out in self.running:
            assert proc.poll() is None, out.read_text()[-4000:]

    def stop_all(self) -> list[dict[str, Any]]:
        return [self.stop(0) for _ in list(self.running)]

    def cleanup(self) -> None:
        if self.running:
            # Still running at the end: the test failed waiting for one. Its threads'
            # stacks (SIGUSR1) say where it was waiting.
            for proc, _port, _out in self.running:
                proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        for proc, _port, out in self.running:
            proc.send_signal(signal.SIGKILL)
            self.finished.append((proc.wait(), out))
        self.running.clear()
        for code, out in self.finished[-3:]:
            # Shown by pytest when the test failed.
            print(f"--- {out.name} (exit {code}) ---\n{out.read_text()[-12000:]}")


def summary_of(out: Path) -> dict[str, Any]:
    for line in reversed(out.read_text().splitlines()):
        if line.startswith('{"summary"'):
            return dict(json.loads(line)["summary"])
    raise AssertionError(f"no summary in {out}:\n{out.read_text()[-3000:]}")


@pytest.fixture
def daemons(tmp_path: Path, redis_url: str, kafka_bootstrap: str) -> Iterator[Daemons]:
    env = dict(os.environ)
    env.update(
        TIERFLOW_ONLINE_STORE="redis",
        TIERFLOW_REDIS_URL=redis_url,
        TIERFLOW_STREAM_BOOTSTRAP_SERVERS=kafka_bootstrap,
        TIERFLOW_STREAM_SESSION_TIMEOUT_MS="6000",
        TIERFLOW_STREAM_POLL_TIMEOUT_MS="100",
    )
    d = Daemons(tmp_path, env)
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def views() -> dict[str, FeatureViewConfig]:
    return Project.load(paths=ProjectPaths.discover()).feature_views()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_request_size=2_000_000
    )
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, partitions, 1)])
    admin.close()


def committed_offsets(admin: Any, group: str, topic: str) -> dict[int, int]:
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def dead_letters(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic``'s dead-letter topic, read until it has been quiet for 5 s."""
    from kafka import KafkaConsumer

    dead = KafkaConsumer(
        topic + ".dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000, group_id=None,
    )  # fmt: skip
    records = list(dead)
    dead.close()
    return records


def assert_store_equals(
    store: OnlineStore, view: FeatureViewConfig, expected: Expectation, group: str, topic: str
) -> None:
    assert expected.values, "nothing to compare"
    result = compare(store, view, expected, group=group, topic=topic)
    assert not result.mismatches, result.mismatches[:10]
    assert result.extra_in_store == 0, "the store has entities batch does not"
    assert set(result.watermark_lag_us) == set(expected.watermarks)
    assert all(lag == 0 for lag in result.watermark_lag_us.values()), result.watermark_lag_us
    assert result.ok


def flights_events(months: tuple[int, ...], view: FeatureViewConfig) -> pa.Table:
    """The flights a view's topic carries: in event-time order, with an event time."""
    table, _skipped = ordered(flights_table(months), view.event_time)
    return table


# --- parity -------------------------------------------------------------------------------


def wait_for_rows(table: Path, rows: int, timeout: float = 120) -> None:
    """Until the Delta table at ``table`` holds ``rows`` rows (the asserts come after)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_delta_table(str(table)) and read_table(table).num_rows >= rows:
            return
        time.sleep(1)


def test_parity_with_batch_on_flights(
    daemons: Daemons, views, kafka_bootstrap: str, redis_url: str, unique_name, tmp_path: Path
) -> None:
    view = views["carrier_delays"]
    prefix = unique_name("parity") + "."
    topic = prefix + view.source.topic
    group = unique_name("group")
    data = tmp_path / "data"
    daemons.env.update(TIERFLOW_STREAM_TOPIC_PREFIX=prefix, TIERFLOW_STREAM_GROUP_ID=group)
    store = RedisOnlineStore(redis_url)
    store.clear(view.name)
    source = flights_table((1, 2))
    import deltalake

    deltalake.write_deltalake(str(data / "silver" / "flights"), source)
    # The real replay command: keys and event time come from the view reading the topic.
    replay = subprocess.run(
        [TIERFLOW, "replay", "silver/flights", "--topic", view.source.topic,
         "--partitions", "4", "--data-dir", str(data)],
        cwd=PROJECT, env=daemons.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    sent = int(replay.stdout.split()[1].replace(",", ""))
    ends = end_offsets(kafka_bootstrap, topic)
    assert sum(ends.values()) == sent > 40_000

    daemons.start("--view", "carrier_delays", module=True)
    log_out = tmp_path / "eventlog.out"
    logger = subprocess.Popen(
        [TIERFLOW, "event-log", "--topic", view.source.topic, "--data-dir", str(data)],
        cwd=PROJECT, env={**daemons.env, "TIERFLOW_STREAM_EVENT_LOG_INTERVAL_S": "1"},
        stdout=log_out.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_caught_up(store, group, topic, ends, timeout=240, alive=daemons.check_alive)
        _, port = daemons.running[0][0], daemons.running[0][1]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
        summary = daemons.stop(0)
        log_path = data / "events" / f"{view.source.topic.replace('.', '_')}"
        wait_for_rows(log_path, sent)
    finally:
        logger.send_signal(signal.SIGTERM)
        assert logger.wait(timeout=60) == 0, log_out.read_text()[-3000:]

    assert health["status"] == "ok" and len(health["assigned"]) == 4
    assert "tierflow_stream_consumer_lag" in metrics
    assert "tierflow_stream_freshness_seconds_count" in metrics
    assert "tierflow_stream_store_write_seconds_count" in metrics
    assert 'tierflow_stream_events_total{topic="' + topic + '"}' in metrics
    assert summary["consumed"] == sent and summary["poison"] == 0 and summary["late"] == 0

    # The event log holds exactly the events the stream saw: each offset once.
    logged = read_table(log_path)
    assert logged.num_rows == sent
    pairs = set(
        zip(
            logged["_kafka_partition"].to_pylist(),
            logged["_kafka_offset"].to_pylist(),
            strict=False,
        )
    )
    assert len(pairs) == sent

    # Batch over the event log, at each partition's watermark, equals the online store.
    expected = expected_values(logged, view, 4)
    assert len(expected.values) == 16  # every carrier
    assert_store_equals(store, view, expected, group, topic)
    # ...and over the source table itself, the same.
    assert expected == expected_values(source.select(list(view.source.columns)), view, 4)
    store.close()


def test_event_loggers_sharing_a_topic_log_each_offset_once_through_a_rebalance_and_a_kill(  # noqa: PLR0915
    views, kafka_bootstrap: str, unique_name, tmp_path: Path
) -> None:
    """Two loggers in one group while events arrive: B joining takes partitions from A
    (a rebalance with A's batch unwritten), then A is killed mid-batch and B takes the
    rest; the table holds every offset of the topic once."""
    import deltalake

    view = views["carrier_delays"]
    prefix = unique_name("evlog") + "."
    topic = prefix + view.source.topic
    data = tmp_path / "data"
    deltalake.write_deltalake(str(data / "silver" / "flights"), flights_table((1,)))
    env = os.environ | {
        "TIERFLOW_STREAM_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TIERFLOW_STREAM_TOPIC_PREFIX": prefix,
        "TIERFLOW_STREAM_GROUP_ID": unique_name("group"),
        "TIERFLOW_STREAM_SESSION_TIMEOUT_MS": "6000",
        "TIERFLOW_STREAM_POLL_TIMEOUT_MS": "100",
        "TIERFLOW_STREAM_EVENT_LOG_INTERVAL_S": "1",
    }  # fmt: skip
    # Paced, so that both loggers join and one dies while events are still arriving: 40 s,
    # twice what the two loggers' starts took with the suite's other process beside them.
    replay = subprocess.Popen(
        [TIERFLOW, "replay", "silver/flights", "--topic", view.source.topic, "--partitions", "4",
         "--limit", "8000", "--rate", "200", "--data-dir", str(data)],
        cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    command = [TIERFLOW, "event-log", "--topic", view.source.topic, "--data-dir", str(data)]
    outputs = [tmp_path / "a.out", tmp_path / "b.out"]
    loggers: list[subprocess.Popen[bytes]] = []

    def wait_for_a_commit(index: int) -> None:
        deadline = time.monotonic() + 90
        while "event log commit" not in outputs[index].read_text(errors="replace"):
            assert loggers[index].poll() is None, outputs[index].read_text()[-3000:]
            assert time.monotonic() < deadline, outputs[index].read_text()[-3000:]
            time.sleep(0.2)

    log_path = data / "events" / view.source.topic.replace(".", "_")
    try:
        # The loggers subscribe once replay has made the topic (a subscription to a topic
        # that does not exist yet would have the broker make it with its default layout).
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        deadline = time.monotonic() + 60
        while topic not in admin.list_topics():
            assert replay.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        admin.close()
        for output in outputs:
            loggers.append(subprocess.Popen(
                command, cwd=PROJECT, env=env, stdout=output.open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
            wait_for_a_commit(len(loggers) - 1)  # B's first commit: it holds partitions
        assert replay.poll() is None, "the events should still be arriving"
        loggers[0].kill()  # A, mid-batch: what it had not committed is read again by B
        loggers[0].wait()
        out, err = replay.communicate(timeout=120)
        assert replay.returncode == 0, err.decode()[-3000:]
        sent = int(out.decode().split()[1].replace(",", ""))
        assert sent == 8000
        wait_for_rows(log_path, sent)
    finally:
        for logger in loggers:
            if logger.poll() is None:
                logger.send_signal(signal.SIGTERM)
        if replay.poll() is None:
            replay.kill()
        for logger in loggers:
            logger.wait(timeout=60)
    assert loggers[1].returncode == 0, outputs[1].read_text()[-3000:]
    assert "logged" in outputs[1].read_text()

    logged = read_table(log_path)
    pairs = list(zip(logged["_kafka_partition"].to_pylist(), logged["_kafka_offset"].to_pylist(),
                     strict=True))  # fmt: skip
    assert len(pairs) == len(set(pairs)) == sent  # none doubled
    ends = end_offsets(kafka_bootstrap, topic)
    assert set(pairs) == {(p, o) for p, end in ends.items() for o in range(end)}  # none lost


# --- crash test ---------------------------------------------------------------------------


def poison_messages(rng: random.Random, count: int) -> list[tuple[bytes | None, bytes | None]]:
    kinds: list[Callable[[], tuple[bytes | None, bytes | None]]] = [
        lambda: (b'["JFK","LAX"]', bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))),
        lambda: (
            b'["JFK","LAX"]',
            b'{"origin":"JFK","dest":"LAX","arr_at":"2013-01-01T10:00:00Z","arr_delay":"late"}',
        ),
        lambda: (b'["JFK","LAX"]', b'{"origin":"JFK","dest":"LAX","arr_delay":3}'),
        lambda: (None, b'{"dest":"LAX","arr_at":"2013-01-01T10:00:00Z","arr_delay":3}'),
        lambda: (
            b'["EWR","ORD"]',
            b'{"origin":"JFK","dest":"LAX","arr_at":"2013-01-01T10:00:00Z","arr_delay":3}',
        ),
        lambda: (b'["JFK","LAX"]', b"\xff\xfe\xfd"),
        lambda: (b'["JFK","LAX"]', None),
    ]
    return [rng.choice(kinds)() for _ in range(count)]


#: SIGKILLs of the crash test (each costs a daemon's start, a few seconds of CPU).
KILLS = 8
RESCALES = 2  # daemons added, and daemons removed


# Redis on four months of flights; SQLite, the store a newcomer gets, on five (125k+).
@pytest.mark.parametrize(("store_kind", "months"), [("redis", 4), ("sqlite", 5)])
def test_crash_test_kills_and_rescaling_lose_and_double_nothing(  # noqa: PLR0915
    daemons: Daemons,
    views,
    kafka_bootstrap: str,
    redis_url: str,
    unique_name,
    tmp_path: Path,
    store_kind: str,
    months: int,
) -> None:
    from kafka import KafkaProducer

    view = views["route_history"]
    prefix = unique_name("crash") + "."
    topic = prefix + view.source.topic
    group = unique_name("group")
    partitions = 6
    daemons.env.update(
        TIERFLOW_STREAM_TOPIC_PREFIX=prefix,
        TIERFLOW_STREAM_GROUP_ID=group,
        TIERFLOW_STREAM_MAX_POLL_RECORDS="500",
    )
    store: OnlineStore
    if store_kind == "sqlite":
        db = tmp_path / "online.db"
        daemons.env.update(TIERFLOW_ONLINE_STORE="sqlite", TIERFLOW_ONLINE_DB=str(db))
        store = SQLiteOnlineStore(db)
    else:
        store = RedisOnlineStore(redis_url)
    store.clear(view.name)
    create_topic(kafka_bootstrap, topic, partitions)
    events = flights_events(tuple(range(1, months + 1)), view)
    rng = random.Random(7)
    messages: list[tuple[bytes | None, bytes | None]] = [
        (k, v) for k, v, _ts in event_messages(events, view.entities, view.event_time)
    ]
    assert len(messages) >= months * 25_000
    poison = poison_messages(rng, len(messages) // 1000)
    for item in poison:
        messages.insert(rng.randrange(len(messages)), item)

    violations: list[str] = []
    checks: list[int] = []
    stop_watch = threading.Event()

    def watch_offsets() -> None:
        # Kafka's committed offset must never be ahead of what the store applied. The
        # committed offsets are read first: the stored ones only grow after that.
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            while not stop_watch.is_set():
                committed = committed_offsets(admin, group, topic)
                stored = stored_offsets(store, group, topic, partitions)
                for p, offset in committed.items():
                    if offset > stored.get(p, 0):
                        violations.append(f"partition {p}: committed {offset} > {stored.get(p)}")
                checks.append(sum(committed.values()))
                time.sleep(0.3)
        finally:
            admin.close()

    watcher = threading.Thread(target=watch_offsets, daemon=True)
    watcher.start()
    kills = adds = removes = 0
    try:
        daemons.start("--view", view.name)
        daemons.start("--view", view.name)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
        sent = 0
        chunk = 2000
        next_action = time.monotonic() + 3
        # The churn goes on after the last message is sent until every kind of action
        # has happened often enough: how far the sending got by then depends on the
        # machine's speed, and a schedule cut short by it would check less than it says.
        while sent < len(messages) or kills < KILLS or adds < RESCALES or removes < RESCALES:
            for key, value in messages[sent : sent + chunk]:
                producer.send(topic, key=key, value=value)
            sent = min(len(messages), sent + chunk)
            producer.flush()
            time.sleep(0.15)  # about 10k events/s while the daemons churn
            if time.monotonic() < next_action:
                continue
            next_action = time.monotonic() + rng.uniform(1.0, 2.5)
            # Kills most of the time; every third action adds or removes a daemon.
            step = kills + adds + removes
            if step % 3 != 2:
                daemons.kill(rng.randrange(len(daemons.running)))
                kills += 1
                daemons.start("--view", view.name)
            elif adds <= removes and len(daemons.running) < 4:
                daemons.start("--view", view.name)
                adds += 1
            elif daemons.settled():
                # Removing a daemon is a graceful stop of one that is up and working.
                daemons.stop(rng.choice(daemons.settled()))
                removes += 1
        producer.close()
        ends = end_offsets(kafka_bootstrap, topic)
        assert sum(ends.values()) == len(messages)

        wait_caught_up(store, group, topic, ends, timeout=300, alive=daemons.check_alive)
        summaries = daemons.stop_all()
    finally:
        stop_watch.set()
        watcher.join(timeout=10)
    assert kills >= KILLS and adds >= RESCALES and removes >= RESCALES, (kills, adds, removes)
    assert not violations, violations[:5]
    assert len(checks) > 50 and checks[-1] > 0, "the offset watcher did not watch"
    assert sum(s["consumed"] for s in summaries) > 0

    # Every poison message is in the dead-letter topic exactly once.
    seen: list[tuple[int, int]] = []
    for message in dead_letters(kafka_bootstrap, topic):
        headers = dict(message.headers)
        seen.append((int(headers["tf.partition"]), int(headers["tf.offset"])))
    assert len(seen) == len(set(seen)) == len(poison), (len(seen), len(set(seen)), len(poison))

    expected = expected_values(events.select(list(view.source.columns)), view, partitions)
    assert len(expected.values) > 150
    assert_store_equals(store, view, expected, group, topic)
    store.close()


# --- graceful shutdown and resume (SQLite store) ------------------------------------------


def test_graceful_shutdown_loses_nothing_and_resumes_where_it_stopped(
    daemons: Daemons, views, kafka_bootstrap: str, unique_name, tmp_path: Path
) -> None:
    view = views["origin_delays"]
    prefix = unique_name("graceful") + "."
    topic = prefix + view.source.topic
    group = unique_name("group")
    db = tmp_path / "online.db"
    daemons.env.update(
        TIERFLOW_STREAM_TOPIC_PREFIX=prefix,
        TIERFLOW_STREAM_GROUP_ID=group,
        TIERFLOW_ONLINE_STORE="sqlite",
        TIERFLOW_ONLINE_DB=str(db),
        TIERFLOW_STREAM_MAX_POLL_RECORDS="200",
    )
    create_topic(kafka_bootstrap, topic, 3)
    events = flights_events((3,), view)
    messages = [(k, v) for k, v, _ts in event_messages(events, view.entities, view.event_time)]
    half = len(messages) // 2
    produce(kafka_bootstrap, topic, messages[:half])
    daemons.start("--view", view.name)
    store = SQLiteOnlineStore(db)
    # Stop it mid-stream: SIGTERM while it is still working through the first half.
    deadline = time.monotonic() + 120
    while sum(stored_offsets(store, group, topic, 3).values()) < half // 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # SIGUSR1 mid-stream: every thread's stack on its output, and the daemon goes on (the
    # counts below still add up).
    proc, _port, out = daemons.running[0]
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    # The main thread's stack comes last, in the poll loop.
    while "tierflow/stream/runtime.py" not in out.read_text(errors="replace"):
        assert time.monotonic() < deadline, out.read_text()[-3000:]
        time.sleep(0.05)
    assert "most recent call first" in out.read_text(errors="replace")
    first = daemons.stop(0)
    stored = sum(stored_offsets(store, group, topic, 3).values())
    assert 0 < first["consumed"] == stored, (first, stored)

    produce(kafka_bootstrap, topic, messages[half:])
    daemons.start("--view", view.name)
    wait_caught_up(
        store, group, topic, end_offsets(kafka_bootstrap, topic), 180, daemons.check_alive
    )
    second = daemons.stop(0)
    # The restart read only what the first run had not applied.
    assert second["consumed"] == len(messages) - first["consumed"]
    assert second["skipped_replays"] == 0
    # Alone in its group, each start joined it once: no second rebalance at start-up.
    joins = [out.read_text().count("Successfully joined group") for _code, out in daemons.finished]
    assert joins == [1, 1], joins
    expected = expected_values(events.select(list(view.source.columns)), view, 3)
    assert_store_equals(store, view, expected, group, topic)
    store.close()


# --- the store going away -------------------------------------------------------------------


class CuttableLink:
    """A TCP relay to a server that the test can cut (connections closed, new ones
    refused) and restore: the store going away without stopping the session's Redis."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def cut(self) -> None:
        self.open = False
        for pair in self.pairs:
            for s in pair:
                s.close()
        self.pairs.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        response = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_store_outage_is_retried_with_backoff_then_given_up(  # noqa: PLR0915
    daemons: Daemons, views, kafka_bootstrap: str, redis_url: str, unique_name
) -> None:
    """The real Redis behind a link the test cuts: while it is cut the daemon backs off
    and /health says 503 with the failures; restored, the daemon catches up exactly; cut
    for good, it exits with an error after ``store_retries`` failures in a row."""
    from urllib.parse import urlsplit

    view = views["carrier_delays"]
    prefix = unique_name("outage") + "."
    topic = prefix + view.source.topic
    group = unique_name("group")
    where = urlsplit(redis_url)
    link = CuttableLink(where.hostname or "127.0.0.1", where.port or 6379)
    daemons.env.update(
        TIERFLOW_STREAM_TOPIC_PREFIX=prefix,
        TIERFLOW_STREAM_GROUP_ID=group,
        TIERFLOW_STREAM_STORE_RETRIES="3",
        TIERFLOW_REDIS_URL=f"redis://127.0.0.1:{link.port}{where.path}",
    )
    store = RedisOnlineStore(redis_url)
    store.clear(view.name)
    create_topic(kafka_bootstrap, topic, 2)
    events = flights_events((1,), view)
    messages = [(k, v) for k, v, _ts in event_messages(events, view.entities, view.event_time)]
    half = len(messages) // 2
    try:
        produce(kafka_bootstrap, topic, messages[:half])
        proc, port = daemons.start("--view", view.name)
        deadline = time.monotonic() + 120
        while sum(stored_offsets(store, group, topic, 2).values()) == 0:
            daemons.check_alive()
            assert time.monotonic() < deadline
            time.sleep(0.2)

        link.cut()
        produce(kafka_bootstrap, topic, messages[half:])
        deadline = time.monotonic() + 60
        while True:
            daemons.check_alive()
            status, detail = health(port)
            if status == 503 and detail["store"]["failures_in_a_row"] >= 1:
                break
            assert time.monotonic() < deadline, (status, detail)
            time.sleep(0.2)
        assert detail["store"]["last_error"] and detail["store"]["retry_limit"] == 3

        link.restore()
        ends = end_offsets(kafka_bootstrap, topic)
        wait_caught_up(store, group, topic, ends, timeout=120, alive=daemons.check_alive)
        status, detail = health(port)
        assert status == 200 and detail["store"]["failures_in_a_row"] == 0, detail
        expected = expected_values(events.select(list(view.source.columns)), view, 2)
        assert_store_equals(store, view, expected, group, topic)

        # Cut for good: the next writes fail 4 times in a row and the daemon gives up.
        link.cut()
        produce(kafka_bootstrap, topic, messages[:200])
        out = daemons.running[0][2]
        assert proc.wait(timeout=120) == 3, out.read_text()[-3000:]  # a service down
        assert "failed 4 times in a row" in out.read_text()
        daemons.running.pop(0)
    finally:
        link.close()
        store.close()


# --- key formats ----------------------------------------------------------------------------


def test_string_and_from_value_keys_work_end_to_end(
    views, kafka_bootstrap: str, unique_name, tmp_path: Path
) -> None:
    """A project of its own with two views of the departures: one on a topic keyed by
    the plain carrier code, one reading the carrier from the payload of a one-partition
    topic; the real replay writes each topic's keys, the real daemon keeps both, on the
    embedded SQLite store, and parity holds. A from-value topic of two partitions is
    refused at start."""
    import shutil

    import deltalake
    import yaml

    project = tmp_path / "project"
    shutil.copytree(PROJECT / "conf", project / "conf", ignore=shutil.ignore_patterns("features"))
    (project / "conf" / "features").mkdir()
    base = views["carrier_delays"].model_dump(mode="json", exclude_defaults=True)
    formats = {"by_string": ("string", "kf.string", 3), "by_value": ("from-value", "kf.value", 1)}
    for name, (key_format, topic, _parts) in formats.items():
        source = {**base["source"], "topic": topic, "key_format": key_format}
        doc = {**base, "name": name, "source": source}
        (project / "conf" / "features" / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    data = tmp_path / "data"
    table = flights_table((1,))
    deltalake.write_deltalake(str(data / "silver" / "flights"), table)
    prefix = unique_name("keys") + "."
    group = unique_name("group")
    db = tmp_path / "online.db"
    env = os.environ | {
        "TIERFLOW_PROJECT_DIR": str(project),
        "TIERFLOW_ONLINE_STORE": "sqlite",
        "TIERFLOW_ONLINE_DB": str(db),
        "TIERFLOW_STREAM_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TIERFLOW_STREAM_TOPIC_PREFIX": prefix,
        "TIERFLOW_STREAM_GROUP_ID": group,
        "TIERFLOW_STREAM_SESSION_TIMEOUT_MS": "6000",
        "TIERFLOW_STREAM_POLL_TIMEOUT_MS": "100",
    }
    sent = {}
    for name, (_format, topic, parts) in formats.items():
        replayed = subprocess.run(
            [TIERFLOW, "replay", "silver/flights", "--topic", topic, "--partitions", str(parts),
             "--data-dir", str(data)],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr
        sent[name] = int(replayed.stdout.split()[1].replace(",", ""))
    # One message keyed the json-list way on the string topic: poison, for its key.
    value = json.dumps({"carrier": "UA", "dep_at": "2013-01-31T23:00:00Z", "dep_delay": 1.0})
    produce(kafka_bootstrap, prefix + "kf.string", [(b'["UA"]', value.encode())])

    out = tmp_path / "daemon.out"
    daemon = subprocess.Popen(
        [TIERFLOW, "stream", "--metrics-port", str(free_port())], env=env,
        stdout=out.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    store = SQLiteOnlineStore(db)
    try:
        for _name, (_format, topic, _parts) in formats.items():
            ends = end_offsets(kafka_bootstrap, prefix + topic)
            wait_caught_up(store, group, prefix + topic, ends, timeout=180,
                           alive=lambda: _alive(daemon, out))  # fmt: skip
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, out.read_text()[-3000:]
    summary = summary_of(out)
    assert summary["poison"] == 1 and summary["consumed"] == sum(sent.values()) + 1, summary
    events = flights_events((1,), views["carrier_delays"])
    for name, (_format, topic, parts) in formats.items():
        view = FeatureViewConfig.model_validate(
            yaml.safe_load((project / "conf" / "features" / f"{name}.yaml").read_text())
        )
        expected = expected_values(events.select(list(view.source.columns)), view, parts)
        assert len(expected.values) == 16  # every carrier
        assert_store_equals(store, view, expected, group, prefix + topic)
    store.close()

    # A from-value topic with two partitions could split an entity between two daemons.
    two = unique_name("keys2") + "."
    create_topic(kafka_bootstrap, two + "kf.value", 2)
    refused = subprocess.run(
        [TIERFLOW, "stream", "--view", "by_value", "--metrics-port", str(free_port())],
        env=env | {"TIERFLOW_STREAM_TOPIC_PREFIX": two}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"topic '{two}kf.value' has 2 partitions" in refused.stderr, refused.stderr[-2000:]
    assert "key_format: from-value" in refused.stderr


def _alive(proc: subprocess.Popen[bytes], out: Path) -> None:
    assert proc.poll() is None, out.read_text()[-3000:]


# --- fuzz ---------------------------------------------------------------------------------


def test_fuzzed_messages_never_crash_the_daemon(
    daemons: Daemons, views, kafka_bootstrap: str, redis_url: str, unique_name
) -> None:
    view = views["carrier_delays"]
    prefix = unique_name("fuzz") + "."
    topic = prefix + view.source.topic
    group = unique_name("group")
    daemons.env.update(
        TIERFLOW_STREAM_TOPIC_PREFIX=prefix,
        TIERFLOW_STREAM_GROUP_ID=group,
        TIERFLOW_STREAM_MAX_EVENT_BYTES="65536",
    )
    create_topic(kafka_bootstrap, topic, 2)
    rng = random.Random(11)
    good = [
        (k, v)
        for k, v, _ts in event_messages(
            flights_events((5,), view).slice(0, 3000), view.entities, view.event_time
        )
    ]
    key = b'["UA"]'
    fields = {
        "flight_id": 1,
        "carrier": "UA",
        "origin": "JFK",
        "dep_at": "2013-05-01T10:00:00Z",
        "dep_delay": 4.0,
    }

    def mutate() -> tuple[bytes | None, bytes | None]:
        choice = rng.randrange(9)
        if choice == 0:
            return key, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2000)))
        if choice == 1:
            return key, b'{"carrier":"UA","pad":"' + b"x" * 900_000 + b'"}'
        if choice == 2:
            broken = dict(fields)
            broken["flight_id"] = rng.choice([[1, 2], {"a": 1}, "text", True, 1.5, "NaN"])
            broken["dep_delay"] = rng.choice([[1], {"x": 1}, "abc", "1e999", "NaN"])
            return key, json.dumps(broken).encode()
        if choice == 3:
            dropped = rng.choice(["carrier", "dep_at"])
            partial = {k: v for k, v in fields.items() if k != dropped}
            return key, json.dumps(partial).encode()
        if choice == 4:
            return key, '{"carrier": "UA", "x": "\udcff"}'.encode("utf-8", "surrogatepass")
        if choice == 5:
            return key, b"[" * 50_000 + b"]" * 50_000
        if choice == 6:
            return rng.choice([None, b"", b"\x00\x01"]), json.dumps(fields).encode()
        if choice == 7:
            return key, rng.choice([b"null", b"42", b'"str"', b"true", b"{}", b""])
        return key, json.dumps(
            {**fields, "dep_at": rng.choice(["2013-13-40", "yesterday", 12])}
        ).encode()

    fuzz = [mutate() for _ in range(400)]
    messages = list(good)  # in event-time order: none of them is late
    for item in fuzz:
        messages.insert(rng.randrange(len(messages) + 1), item)
    produce(kafka_bootstrap, topic, messages)
    _proc, port = daemons.start("--view", view.name)
    store = RedisOnlineStore(redis_url)
    ends = end_offsets(kafka_bootstrap, topic)
    wait_caught_up(store, group, topic, ends, timeout=180, alive=daemons.check_alive)
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
    assert health["status"] == "ok"
    summary = daemons.stop(0)
    assert summary["consumed"] == len(messages)
    # Every fuzzed message is dead-lettered (none happens to be a valid event).
    assert summary["poison"] == summary["dead_lettered"] == len(fuzz)
    assert summary["applied"] == len(good) and summary["late"] == 0
    store.close()


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"TIERFLOW_STREAM_MAX_POLL_RECORDS": "lots"}, [], "max_poll_records = 'lots'"),
        ({"TIERFLOW_STREAM_NO_SUCH": "1"}, [], "TIERFLOW_STREAM_NO_SUCH"),
        ({"TIERFLOW_STREAM_LATE_EVENTS": "keep"}, [], "late_events = 'keep'"),
        ({}, ["--view", "no_such_view"], "no feature view 'no_such_view'"),
    ],
)
def test_bad_configuration_fails_at_start(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = subprocess.run(
        [TIERFLOW, "stream", *args], cwd=PROJECT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


# --- late events and replay pacing -------------------------------------------------------


def test_late_events_go_to_the_dead_letter_topic_when_configured(
    daemons: Daemons, views, kafka_bootstrap: str, redis_url: str, unique_name
) -> None:
    view = views["carrier_delays"]  # step 1h, allowed lateness 10m
    prefix = unique_name("late") + "."
    topic = prefix + view.source.topic
    group = unique_name("group")
    daemons.env.update(
        TIERFLOW_STREAM_TOPIC_PREFIX=prefix,
        TIERFLOW_STREAM_GROUP_ID=group,
        TIERFLOW_STREAM_LATE_EVENTS="dead_letter",
    )
    create_topic(kafka_bootstrap, topic, 1)

    def event(at: str, delay: float) -> tuple[bytes, bytes]:
        body = {"flight_id": 1, "carrier": "ZZ", "origin": "JFK", "dep_at": at, "dep_delay": delay}
        return b'["ZZ"]', json.dumps(body).encode()

    produce(kafka_bootstrap, topic, [
        event("2013-03-01T10:05:00Z", 5.0),
        event("2013-03-01T11:20:00Z", 7.0),   # watermark 11:10: the 10:00-11:00 tile closed
        event("2013-03-01T10:59:00Z", 100.0), # late: its tile ended at 11:00 <= 11:10
        event("2013-03-01T11:01:00Z", 9.0),   # on time: its tile ends at 12:00
    ])  # fmt: skip
    store = RedisOnlineStore(redis_url)
    store.clear(view.name)
    daemons.start("--view", view.name)
    wait_caught_up(store, group, topic, {0: 4}, timeout=120, alive=daemons.check_alive)
    summary = daemons.stop(0)
    assert summary["late"] == 1 and summary["dead_lettered"] == 1 and summary["poison"] == 0
    stored = store.read(view.name, [("ZZ",)])[0]
    assert stored is not None
    # Values at the watermark's grid point, 11:00: the late 100-minute delay is not in them.
    assert stored.window_end_us == 1362135600000000  # 2013-03-01T11:00:00Z
    assert stored.values["dep_delay_mean_1h"] == 5.0
    assert stored.values["dep_delay_max_24h"] == 5.0
    letters = dead_letters(kafka_bootstrap, topic)
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["tf.offset"] == b"2" and headers["tf.partition"] == b"0"
    assert headers["tf.topic"] == topic.encode()
    assert headers["tf.error"].decode().startswith("late: for view carrier_delays")
    assert json.loads(letters[0].value)["dep_delay"] == 100.0
    store.close()


def test_replay_paces_by_rate_and_by_event_time(
    kafka_bootstrap: str, unique_name, tmp_path: Path
) -> None:
    import deltalake

    data = tmp_path / "data"
    start = 1_356_998_400_000_000  # 2013-01-01
    table = pa.table({
        "k": pa.array([f"e{i % 7}" for i in range(600)]),
        "ts": pa.array([start + i * 10_000_000 for i in range(600)], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "v": pa.array([float(i) for i in range(600)]),
    })  # fmt: skip
    deltalake.write_deltalake(str(data / "events"), table)
    base = [TIERFLOW, "replay", "events", "--key", "k", "--time", "ts", "--data-dir", str(data)]
    env = {**os.environ, "TIERFLOW_STREAM_BOOTSTRAP_SERVERS": kafka_bootstrap}

    def send_span(*extra: str) -> float:
        """Seconds between the first and the last record's send timestamps in the topic.

        Measured from the records themselves, not the command's wall time, so a slow
        interpreter start on a loaded machine cannot make an unpaced run look paced.
        """
        from kafka import KafkaConsumer

        topic = unique_name("replay")
        out = subprocess.run(
            [*base, "--topic", topic, *extra], cwd=PROJECT, env=env,
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        assert "replayed 600 events" in out.stdout
        consumer = KafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, consumer_timeout_ms=10_000,
        )  # fmt: skip
        stamps = [record.timestamp for _, record in zip(range(600), consumer, strict=False)]
        consumer.close()
        assert len(stamps) == 600
        return (max(stamps) - min(stamps)) / 1000

    # 600 events at 300/s: the last is sent 599/300 s after the first; 100 minutes of
    # event time at 3000x: 1.997 s. Pacing can only make a run slower, so these lower
    # bounds hold however loaded the machine is.
    rated = send_span("--rate", "300")
    paced = send_span("--speedup", "3000")
    fast = send_span()
    assert rated >= 1.9 and paced >= 1.9, (rated, paced, fast)
    assert fast < min(rated, paced), (rated, paced, fast)


def test_a_stop_during_start_up_is_a_clean_exit(
    daemons: Daemons, kafka_bootstrap: str, unique_name
) -> None:
    prefix = unique_name("early") + "."
    create_topic(kafka_bootstrap, prefix + "flights.departures", 1)
    daemons.env.update(TIERFLOW_STREAM_TOPIC_PREFIX=prefix)
    proc, _port = daemons.start("--view", "carrier_delays")
    # Stop it as soon as it catches SIGTERM: still in its imports and connections.
    deadline = time.monotonic() + 30
    while not catches_sigterm(proc.pid):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    summary = daemons.stop(0)  # exit status 0, with its summary
    assert summary["consumed"] == 0


def catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False
