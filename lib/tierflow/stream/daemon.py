"""The feature daemon: Kafka topics to online feature values, with the effect of exactly once.

One daemon process is one member of a consumer group; start several to share the
partitions. For every batch a partition delivers, the daemon

1. skips messages below the partition's stored offset (already applied);
2. judges the messages (:mod:`tierflow.stream.events`); poison goes to the dead-letter
   topic ``<topic><dead_letter_suffix>``, partition for partition, with the original
   topic, partition, offset and the error in headers;
3. folds the accepted events into the views' window state and computes the changed
   online values (:mod:`tierflow.stream.state`);
4. waits for the dead letters to be acknowledged, then commits to the online store, in
   one atomic step, the values, the changed window state and the next offset, on
   condition that the stored offset is still the one the batch started from;
5. only then commits the offset to Kafka.

So Kafka's committed offset is never ahead of the store's, a replay after a crash is
skipped by offset, and a consumer that lost a partition without noticing cannot
overwrite the new owner's work. **Window state lives in the store**, next to the values
and in the same atomic write: a changelog topic would need a second system to agree
with the store on every batch, which is the problem exactly-once is about.

Dead letters are exactly once too: the store remembers how far the dead-letter
partition reached at each commit, and on assignment the daemon reads what was
dead-lettered after that (by a run that crashed before its commit) and does not send
those messages again.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from kafka import ConsumerRebalanceListener

from tierflow.config.features import FeatureViewConfig
from tierflow.config.streaming import StreamingConfig
from tierflow.errors import TierflowError
from tierflow.stores.base import OnlineStore, PartitionCommit, StaleCommitError, StoreError
from tierflow.stream.connection import KafkaConnection, kafka_options
from tierflow.stream.events import (
    OFFSET,
    TopicSchema,
    batch_partials,
    check_messages,
    event_times_us,
)
from tierflow.stream.metrics import OpsServer, StreamMetrics
from tierflow.stream.state import ViewState

log = logging.getLogger("tierflow.stream")

H_TOPIC, H_PARTITION, H_OFFSET, H_ERROR, H_GROUP = (
    "tf.topic",
    "tf.partition",
    "tf.offset",
    "tf.error",
    "tf.group",
)
_MAX_DEAD_LETTER_BYTES = 900_000  # stays under the broker's default message size


class StreamError(TierflowError):
    """The daemon cannot start (bad config, missing topic, unreachable service)."""


@dataclass
class PartitionRuntime:
    """What a daemon holds for one assigned partition."""

    topic: str
    partition: int
    views: dict[str, ViewState]
    stored_offset: int | None
    dead_letter_end: int | None
    already_dead: set[int] = field(default_factory=set)


@dataclass
class _PartResult:
    """What one partition's batch produced, across the views."""

    applied: int = 0
    rows: list[tuple[str, Any, int]] = field(default_factory=list)
    put: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


@dataclass
class Summary:
    """Counts of one daemon run (printed as JSON at exit)."""

    consumed: int = 0
    applied: int = 0
    poison: int = 0
    late: int = 0
    dead_lettered: int = 0
    skipped_replays: int = 0
    rows_written: int = 0
    commits: int = 0
    stale_commits: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict."""
        return dict(self.__dict__)


def views_by_topic(
    views: Sequence[FeatureViewConfig], prefix: str = ""
) -> dict[str, list[FeatureViewConfig]]:
    """Group views by their source topic (with the configured prefix).

    Raises:
        StreamError: a view has no topic.
    """
    topics: dict[str, list[FeatureViewConfig]] = defaultdict(list)
    for view in views:
        if not view.source.topic:
            raise StreamError(f"view {view.name} has no source.topic to stream from")
        topics[prefix + view.source.topic].append(view)
    return dict(topics)


class FeatureDaemon:
    """A consumer-group member that keeps the views' online values current."""

    def __init__(
        self,
        views: Sequence[FeatureViewConfig],
        config: StreamingConfig,
        store: OnlineStore,
        bootstrap_servers: KafkaConnection | str,
        *,
        client_id: str = "tierflow-features",
    ) -> None:
        self.config = config
        self.store = store
        self.bootstrap = bootstrap_servers
        self.client_id = client_id
        self.topics = views_by_topic(views, config.topic_prefix)
        self.schemas = {t: TopicSchema.of(t, vs) for t, vs in self.topics.items()}
        self.metrics = StreamMetrics()
        self.summary = Summary()
        self.partitions: dict[Any, PartitionRuntime] = {}
        self.stopping = False
        self.last_poll = time.monotonic()
        self.ops: OpsServer | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._dlq_reader: Any = None
        self._dead_partitions: dict[str, int] = {}
        self._to_load: list[Any] = []

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Check topics, create dead-letter topics, connect, and serve /metrics and /health.

        Raises:
            StreamError: a topic is missing or Kafka cannot be reached.
        """
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.errors import KafkaError

        try:
            self._producer = KafkaProducer(
                **kafka_options(self.bootstrap),
                client_id=f"{self.client_id}-dlq",
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=self.config.request_timeout_ms,
                linger_ms=5,
                max_request_size=2_000_000,
            )
            self._ensure_dead_letter_topics()
            self._consumer = KafkaConsumer(
                **kafka_options(self.bootstrap),
                group_id=self.config.group_id,
                client_id=self.client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.config.max_poll_records,
                session_timeout_ms=self.config.session_timeout_ms,
                request_timeout_ms=max(
                    self.config.request_timeout_ms, self.config.session_timeout_ms + 1000
                ),
                heartbeat_interval_ms=max(1000, self.config.session_timeout_ms // 4),
                fetch_max_bytes=16 * 1024 * 1024,
                max_partition_fetch_bytes=2 * 1024 * 1024,
            )
        except KafkaError as exc:
            raise StreamError(f"cannot reach Kafka at {self.bootstrap}: {exc!r}") from exc
        # Judge an empty batch once: the first real batch must not pay for imports.
        for schema in self.schemas.values():
            check_messages(schema, [], [], [], max_bytes=self.config.max_event_bytes)
        self._consumer.subscribe(list(self.topics), listener=_Listener(self))
        self.ops = OpsServer(
            self.config.metrics_host, self.config.metrics_port, self.metrics, self.health
        )
        self.ops.start()
        log.info(
            "daemon started",
            extra={
                "group": self.config.group_id,
                "topics": sorted(self.topics),
                "views": [v.name for vs in self.topics.values() for v in vs],
                "metrics_port": self.ops.port,
            },
        )

    def _ensure_dead_letter_topics(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(**kafka_options(self.bootstrap), client_id=self.client_id)
        try:
            deadline = time.monotonic() + 30
            counts: dict[str, int] = {}
            while True:
                existing = admin.describe_topics(list(self.topics))
                counts = {
                    t["name"]: len(t["partitions"])
                    for t in existing
                    if t.get("error_code", 0) == 0 and t["partitions"]
                }
                if len(counts) == len(self.topics) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            missing = sorted(set(self.topics) - set(counts))
            if missing:
                raise StreamError(
                    f"topic(s) {', '.join(missing)} do not exist (create them, or replay "
                    "into them with `tierflow replay`)"
                )
            for topic, partitions in counts.items():
                name = topic + self.config.dead_letter_suffix
                try:
                    admin.create_topics(
                        [NewTopic(name, partitions, self.config.topic_replication_factor)]
                    )
                except TopicAlreadyExistsError:
                    pass
                described = admin.describe_topics([name])[0]
                self._dead_partitions[topic] = max(1, len(described["partitions"]))
        finally:
            admin.close()

    def request_stop(self, *_args: object) -> None:
        """Finish the current batch, commit, and leave (SIGTERM/SIGINT)."""
        if not self.stopping:
            log.info("stop requested: finishing the batch")
        self.stopping = True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the daemon gracefully."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, *, max_seconds: float | None = None) -> Summary:
        """Consume until stopped; then commit and leave the group."""
        began = time.monotonic()
        try:
            while not self.stopping:
                if max_seconds is not None and time.monotonic() - began > max_seconds:
                    break
                self.poll_once()
        finally:
            self.close()
        return self.summary

    def close(self) -> None:
        """Leave the group (so the partitions move at once) and release everything."""
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
            self._producer = None
        if self._dlq_reader is not None:
            self._dlq_reader.close()
            self._dlq_reader = None
        if self.ops is not None:
            self.ops.stop()
            self.ops = None
        log.info("daemon stopped", extra={"summary": self.summary.as_dict()})

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while polling regularly."""
        age = time.monotonic() - self.last_poll
        ok = self._consumer is not None and age < max(30.0, self.config.session_timeout_ms / 1000)
        detail = {
            "group": self.config.group_id,
            "assigned": sorted(f"{r.topic}/{r.partition}" for r in self.partitions.values()),
            "last_poll_age_s": round(age, 3),
            "freshness": self.metrics.freshness_percentiles(),
            "summary": self.summary.as_dict(),
        }
        return ok, detail

    # --- the loop -------------------------------------------------------------------------

    def poll_once(self) -> None:
        """One poll: judge and aggregate per topic, commit per partition, then to Kafka."""
        records = self._consumer.poll(
            timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_poll_records
        )
        self.last_poll = time.monotonic()
        by_topic: dict[str, list[tuple[Any, PartitionRuntime, list[Any]]]] = defaultdict(list)
        consumed = 0
        for tp, messages in records.items():
            runtime = self.partitions.get(tp)
            if runtime is None or not messages or tp in self._to_load:
                # Revoked, or assigned and not loaded yet: the seek to the stored offset
                # after loading makes these come again.
                continue
            consumed += len(messages)
            start = runtime.stored_offset or 0
            fresh = [m for m in messages if m.offset >= start]
            skipped = len(messages) - len(fresh)
            if skipped:
                self.summary.skipped_replays += skipped
                self.metrics.skipped.labels(runtime.topic).inc(skipped)
            if fresh:
                by_topic[tp.topic].append((tp, runtime, fresh))
        offsets: dict[Any, Any] = {}
        for topic, parts in by_topic.items():
            offsets.update(self.process(topic, parts))
        if consumed:
            self.metrics.consumed(consumed)
        if offsets:
            self._commit_kafka(offsets)
        self._load_assigned()
        self._update_lag()

    def _commit_kafka(self, offsets: dict[Any, Any]) -> None:
        """Commit asynchronously (Kafka's offset only saves a re-read; the store decides).

        It is sent after the store commit, so it is never ahead of the store's offset.
        """

        def done(_offsets: Any, result: Any) -> None:
            if isinstance(result, Exception):
                log.warning("kafka offset commit failed", extra={"error": repr(result)})

        self._consumer.commit_async(offsets, callback=done)

    def _update_lag(self) -> None:
        for tp, runtime in self.partitions.items():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            position = runtime.stored_offset or 0
            self.metrics.lag.labels(runtime.topic, str(runtime.partition)).set(
                max(0, high - position)
            )

    def process(
        self, topic: str, parts: Sequence[tuple[Any, PartitionRuntime, list[Any]]]
    ) -> dict[Any, Any]:
        """Apply one poll's batches of a topic; the Kafka offsets to commit.

        Judging and tile aggregation run once over every partition's messages (entities
        never span partitions); late judgement, window state and the commit are per
        partition, in offset order.
        """
        from kafka.structs import OffsetAndMetadata

        fresh = [m for _tp, _runtime, messages in parts for m in messages]
        owner = [i for i, (_tp, _rt, messages) in enumerate(parts) for _ in messages]
        self.summary.consumed += len(fresh)
        checked = check_messages(
            self.schemas[topic],
            [m.key for m in fresh],
            [m.value for m in fresh],
            [m.offset for m in fresh],
            max_bytes=self.config.max_event_bytes,
        )
        dead: list[dict[int, list[str]]] = [{} for _ in parts]
        base = [0]
        for _tp, _rt, messages in parts:
            base.append(base[-1] + len(messages))
        for i, reason in checked.poison:
            dead[owner[i]][i - base[owner[i]]] = [reason]
            self.metrics.dead_letters.labels(topic, reason.split(":", 1)[0]).inc()
        self.summary.poison += len(checked.poison)
        event_owner = [owner[i] for i in checked.rows]
        results: list[_PartResult] = [_PartResult() for _ in parts]
        for view in self.topics[topic]:
            self._apply_view(view, parts, checked, event_owner, base, dead, results)
        offsets = {}
        for index, (tp, runtime, messages) in enumerate(parts):
            try:
                done = self._commit(runtime, messages, dead[index], results[index])
            except StoreError as exc:
                # Nothing of the batch is applied; start the partition over from the
                # store once it answers again.
                log.error("store write failed; retrying the partition", extra={"error": str(exc)})
                time.sleep(1)
                self._load(tp, runtime.topic, runtime.partition)
                continue
            if done:
                offsets[tp] = OffsetAndMetadata(runtime.stored_offset, "", -1)
            else:
                self._load(tp, runtime.topic, runtime.partition)
        return offsets

    def _apply_view(
        self,
        view: FeatureViewConfig,
        parts: Sequence[tuple[Any, PartitionRuntime, list[Any]]],
        checked: Any,
        event_owner: list[int],
        base: list[int],
        dead: list[dict[int, list[str]]],
        results: list[_PartResult],
    ) -> None:
        events = checked.events
        times = event_times_us(events, view.event_time)
        offsets = events.column(OFFSET).to_pylist()
        keep = [True] * events.num_rows
        for index, (_tp, runtime, _messages) in enumerate(parts):
            state = runtime.views[view.name]
            rows = [r for r, o in enumerate(event_owner) if o == index]
            late = state.late_flags([times[r] for r in rows])
            late_rows = [r for r, flag in zip(rows, late, strict=True) if flag]
            if not late_rows:
                continue
            self.summary.late += len(late_rows)
            self.metrics.late.labels(view.name).inc(len(late_rows))
            for r in late_rows:
                keep[r] = False
                if self.config.late_events == "dead_letter":
                    at = checked.rows[r] - base[index]
                    dead[index].setdefault(at, []).append(
                        f"late: for view {view.name}, its window closed at watermark "
                        f"{state.watermark_us} µs (offset {offsets[r]})"
                    )
        accepted = events.filter(pa.array(keep)) if not all(keep) else events
        kept_owner = [o for o, k in zip(event_owner, keep, strict=True) if k]
        entity_owner = {}
        columns = [accepted.column(e).to_pylist() for e in view.entities]
        for r, o in enumerate(kept_owner):
            entity_owner[tuple(c[r] for c in columns)] = o
        any_state = parts[0][1].views[view.name]
        partials = batch_partials(accepted, any_state)
        split: list[list[Any]] = [[] for _ in parts]
        for item in partials:
            split[entity_owner[item.entity]].append(item)
        for index, (_tp, runtime, _messages) in enumerate(parts):
            state = runtime.views[view.name]
            state.add(split[index])
            emission = state.advance()
            result = results[index]
            result.applied = max(result.applied, kept_owner.count(index))
            result.rows += [(view.name, row, view.ttl_us) for row in emission.rows]
            result.put.update({state.field(e): text for e, text in emission.put.items()})
            result.delete += [state.field(e) for e in emission.delete]

    def _commit(
        self,
        runtime: PartitionRuntime,
        fresh: Sequence[Any],
        dead: dict[int, list[str]],
        result: _PartResult,
    ) -> bool:
        """Dead letters, then the store commit; False if the commit was refused."""
        dead_end = self._dead_letter(runtime, fresh, dead)
        next_offset = fresh[-1].offset + 1
        meta = {
            "max_event_us": {n: s.max_event_us for n, s in runtime.views.items()},
            "dead_letter_end": dead_end,
        }
        commit = PartitionCommit(
            state=self.state_name(runtime.topic, runtime.partition),
            expected_offset=runtime.stored_offset,
            offset=next_offset,
            meta=json.dumps(meta),
            rows=result.rows,
            put=result.put,
            delete=result.delete,
        )
        began = time.perf_counter()
        try:
            written = self.store.commit_partition(commit)
        except StaleCommitError as exc:
            self.summary.stale_commits += 1
            self.metrics.stale_commits.inc()
            log.warning("commit refused; reloading the partition", extra={"error": str(exc)})
            return False
        now = time.time()
        self.metrics.store_write.observe(time.perf_counter() - began)
        runtime.stored_offset = next_offset
        runtime.dead_letter_end = dead_end
        runtime.already_dead = {o for o in runtime.already_dead if o >= next_offset}
        self.summary.applied += result.applied
        self.summary.rows_written += written
        self.summary.commits += 1
        self.metrics.events.labels(runtime.topic).inc(result.applied)
        for view, _row, _ttl in result.rows:
            self.metrics.rows_written.labels(view).inc()
        for m in fresh:
            if m.timestamp is not None and m.timestamp > 0:
                self.metrics.observe_freshness(max(0.0, now - m.timestamp / 1000))
        return True

    def _dead_letter(
        self, runtime: PartitionRuntime, fresh: Sequence[Any], dead: dict[int, list[str]]
    ) -> int | None:
        """Send the batch's dead letters and wait for them; the partition's new end."""
        if not dead:
            return runtime.dead_letter_end
        topic = runtime.topic + self.config.dead_letter_suffix
        target = runtime.partition % self._dead_partitions[runtime.topic]
        futures = []
        for i in sorted(dead):
            message = fresh[i]
            reason = "; ".join(dead[i])
            kind = reason.split(":", 1)[0]
            if message.offset in runtime.already_dead:
                continue  # sent by a run that crashed before committing
            value = message.value or b""
            headers = [
                (H_TOPIC, runtime.topic.encode()),
                (H_PARTITION, str(runtime.partition).encode()),
                (H_OFFSET, str(message.offset).encode()),
                (H_ERROR, reason[:2000].encode()),
                (H_GROUP, self.config.group_id.encode()),
            ]
            if len(value) > _MAX_DEAD_LETTER_BYTES:
                headers.append(("tf.truncated_from", str(len(value)).encode()))
                value = value[:_MAX_DEAD_LETTER_BYTES]
            futures.append(
                self._producer.send(
                    topic, key=message.key, value=value, headers=headers, partition=target
                )
            )
            if kind == "late":
                self.metrics.dead_letters.labels(runtime.topic, "late").inc()
        self._producer.flush()
        end = runtime.dead_letter_end
        for future in futures:
            record = future.get(timeout=30)
            end = max(end or 0, record.offset + 1)
        self.summary.dead_lettered += len(futures)
        return end

    # --- assignment -----------------------------------------------------------------------

    def state_name(self, topic: str, partition: int) -> str:
        """The store name of a partition's state."""
        return f"{self.config.group_id}/{topic}/{partition}"

    def _load(self, tp: Any, topic: str, partition: int) -> None:
        """Load the partition's state from the store and seek to its offset."""
        stored = self.store.load_partition(self.state_name(topic, partition))
        meta = json.loads(stored.meta) if stored.meta else {}
        views = {}
        for view in self.topics[topic]:
            state = ViewState(view)
            state.restore(meta, stored.fields)
            views[view.name] = state
        runtime = PartitionRuntime(
            topic=topic,
            partition=partition,
            views=views,
            stored_offset=stored.offset,
            dead_letter_end=meta.get("dead_letter_end"),
        )
        runtime.already_dead = self._sent_after_commit(runtime)
        self.partitions[tp] = runtime
        if stored.offset is None:
            self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, stored.offset)
        log.info(
            "partition assigned",
            extra={
                "topic": topic,
                "partition": partition,
                "offset": stored.offset,
                "entities": sum(len(s.entities) for s in views.values()),
                "dead_letters_to_skip": len(runtime.already_dead),
            },
        )

    def _sent_after_commit(self, runtime: PartitionRuntime) -> set[int]:
        """Source offsets dead-lettered past the last commit (by a run that then crashed)."""
        from kafka import KafkaConsumer, TopicPartition

        dead_topic = runtime.topic + self.config.dead_letter_suffix
        target = TopicPartition(
            dead_topic, runtime.partition % self._dead_partitions[runtime.topic]
        )
        if self._dlq_reader is None:
            # One reader for the daemon's life: a client made while a broker is
            # unreachable can spend its whole bootstrap timeout on that broker, and a
            # long-lived one already knows which brokers lead what.
            self._dlq_reader = KafkaConsumer(
                **kafka_options(self.bootstrap),
                client_id=f"{self.client_id}-dlq-scan",
                enable_auto_commit=False,
                group_id=None,
                request_timeout_ms=self.config.request_timeout_ms,
            )
        reader = self._dlq_reader
        found: set[int] = set()
        reader.assign([target])
        end = self._end_offset(reader, target)
        begin = runtime.dead_letter_end or 0
        if end <= begin:
            return found
        reader.seek(target, begin)
        floor = runtime.stored_offset or 0
        while reader.position(target) < end:
            for messages in reader.poll(timeout_ms=1000).values():
                for m in messages:
                    headers = dict(m.headers or [])
                    if (
                        headers.get(H_TOPIC) == runtime.topic.encode()
                        and headers.get(H_PARTITION) == str(runtime.partition).encode()
                        and headers.get(H_GROUP) == self.config.group_id.encode()
                    ):
                        offset = int(headers[H_OFFSET])
                        if offset >= floor:
                            found.add(offset)
        return found

    def _end_offset(self, reader: Any, target: Any) -> int:
        """The partition's end offset, waiting out a leader failover (a broker just lost)."""
        from tierflow.stream.connection import through_failover

        return through_failover(lambda: int(reader.end_offsets([target])[target]), str(target))

    def on_assigned(self, assigned: Sequence[Any]) -> None:
        """Note new partitions; they are loaded after the poll returns.

        kafka-python runs rebalance callbacks on its network thread, where no blocking
        client call may be made; loading means reading the dead-letter topic and seeking.
        """
        self._to_load.extend(tp for tp in assigned if tp not in self.partitions)

    def on_revoked(self, revoked: Sequence[Any]) -> None:
        """Forget revoked partitions.

        Every batch was committed, to the store and then to Kafka, before the poll that
        is rebalancing now, so there is nothing left to flush.
        """
        for tp in revoked:
            if tp in self._to_load:
                self._to_load.remove(tp)
            runtime = self.partitions.pop(tp, None)
            if runtime is not None:
                self.metrics.lag.remove(runtime.topic, str(runtime.partition))
                log.info(
                    "partition revoked",
                    extra={"topic": tp.topic, "partition": tp.partition},
                )

    def _load_assigned(self) -> None:
        while self._to_load:
            tp = self._to_load.pop(0)
            self._load(tp, tp.topic, tp.partition)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python's rebalance callbacks, forwarded to the daemon."""

    def __init__(self, daemon: FeatureDaemon) -> None:
        self.daemon = daemon

    def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
        self.daemon.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
        self.daemon.on_assigned(assigned)
