"""The feature daemon: Kafka topics to online feature values, with the effect of exactly once.

One daemon process is one member of a consumer group; start several to share the
partitions. For every batch a partition delivers, the daemon

1. skips messages below the partition's stored offset (already applied; the consumer
   runtime, :mod:`tierflow.stream.runtime`, does this and the rest of the group work);
2. judges the messages and folds the accepted events into the views' window state
   (:mod:`tierflow.stream.fold`), which decides the changed online values, the late
   events and the poison;
3. sends the poison to the dead-letter topic ``<topic><dead_letter_suffix>``
   (:mod:`tierflow.stream.deadletter`);
4. waits for the dead letters to be acknowledged, then commits to the online store, in
   one atomic step, the values, the changed window state and the next offset, on
   condition that the stored offset is still the one the batch started from;
5. only then commits the offset to Kafka.

So Kafka's committed offset is never ahead of the store's, a replay after a crash is
skipped by offset, and a consumer that lost a partition without noticing cannot
overwrite the new owner's work. **Window state lives in the store**, next to the values
and in the same atomic write: a changelog topic would need a second system to agree
with the store on every batch, which is the problem exactly-once is about.

Dead letters are exactly once too (:mod:`tierflow.stream.deadletter`).
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

from tierflow.config.features import FeatureViewConfig
from tierflow.config.streaming import StreamingConfig
from tierflow.stores.base import OnlineStore, PartitionCommit, StaleCommitError, StoreError
from tierflow.stream.connection import KafkaConnection
from tierflow.stream.deadletter import DeadLetters
from tierflow.stream.events import TopicSchema, check_messages
from tierflow.stream.fold import Outcome, fold
from tierflow.stream.metrics import OpsServer, StreamMetrics
from tierflow.stream.runtime import (
    Backoff,
    ConsumerRuntime,
    KafkaUnreachableError,
    Poll,
    StreamError,
    Written,
)
from tierflow.stream.state import ViewState

log = logging.getLogger("tierflow.stream")


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
    """A consumer-group member that keeps the views' online values current.

    It is the online-store sink of a :class:`ConsumerRuntime`.
    """

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
        self.ops: OpsServer | None = None
        self.backoff = Backoff(config.store_retries)
        self.runtime = ConsumerRuntime(
            self,
            list(self.topics),
            config,
            bootstrap_servers,
            group_id=config.group_id,
            client_id=client_id,
            consumer_options={
                "request_timeout_ms": max(
                    config.request_timeout_ms, config.session_timeout_ms + 1000
                ),
                "heartbeat_interval_ms": max(1000, config.session_timeout_ms // 4),
                "fetch_max_bytes": 16 * 1024 * 1024,
                "max_partition_fetch_bytes": 2 * 1024 * 1024,
            },
        )
        self.dead_letters = DeadLetters(config, bootstrap_servers, client_id)
        self._durable: dict[Any, int] = {}

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Check topics, create dead-letter topics, connect, and serve /metrics and /health.

        Raises:
            KafkaUnreachableError: Kafka cannot be reached (exit status 3).
            StreamError: a topic is missing, or Kafka refused (exit status 2).
        """
        from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

        try:
            self.dead_letters.start(list(self.topics))
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            raise KafkaUnreachableError(f"cannot reach Kafka at {self.bootstrap}: {exc!r}") from exc
        except KafkaError as exc:
            raise StreamError(f"Kafka at {self.bootstrap} refused the start: {exc!r}") from exc
        self._check_key_formats()
        # Judge an empty batch once: the first real batch must not pay for imports.
        for schema in self.schemas.values():
            check_messages(schema, [], [], [], [], max_bytes=self.config.max_event_bytes)
        self.runtime.start()
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

    def _check_key_formats(self) -> None:
        """A topic whose key is ignored must have one partition.

        Otherwise an entity's events could arrive on several partitions, each owned by
        its own daemon with its own window state: both would write the entity's values.

        Raises:
            StreamError: a ``from-value`` topic has more than one partition.
        """
        for topic, schema in self.schemas.items():
            count = self.dead_letters.source_partitions.get(topic, 1)
            if schema.key_format == "from-value" and count > 1:
                raise StreamError(
                    f"topic {topic!r} has {count} partitions, but its views read the entity "
                    "from the payload (key_format: from-value), so an entity's events could "
                    "reach two daemons; key the topic by entity (json-list or string) or "
                    "give it one partition"
                )

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self.runtime.stopping

    def request_stop(self, *_args: object) -> None:
        """Finish the current batch, commit, and leave (SIGTERM/SIGINT)."""
        self.runtime.request_stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the daemon gracefully."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, *, max_seconds: float | None = None) -> Summary:
        """Consume until stopped; then commit and leave the group."""
        try:
            self.runtime.run(max_seconds=max_seconds, after_poll=self._update_lag)
        finally:
            self.close()
        return self.summary

    def poll_once(self) -> None:
        """One poll of the runtime (for callers that drive the loop themselves)."""
        self.runtime.poll_once()
        self._update_lag()

    def close(self) -> None:
        """Leave the group (so the partitions move at once) and release everything."""
        self.runtime.close()
        self.dead_letters.close()
        if self.ops is not None:
            self.ops.stop()
            self.ops = None
        log.info("daemon stopped", extra={"summary": self.summary.as_dict()})

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while polling regularly and while the store answers."""
        ok, detail = self.runtime.health()
        detail |= {
            "freshness": self.metrics.freshness_percentiles(),
            "summary": self.summary.as_dict(),
            "store": {
                "failures_in_a_row": self.backoff.failures,
                "retry_limit": self.backoff.limit,
                "last_error": self.backoff.last_error,
            },
        }
        return ok and self.backoff.failures == 0, detail

    # --- the sink -------------------------------------------------------------------------

    def write(self, poll: Poll) -> Written:
        """Apply one poll: per topic, fold the records, then write each partition."""
        for tp, count in poll.skipped.items():
            self.summary.skipped_replays += count
            self.metrics.skipped.labels(tp.topic).inc(count)
        self.metrics.consumed(poll.polled)
        by_topic: dict[str, list[tuple[Any, PartitionRuntime, list[Any]]]] = defaultdict(list)
        for tp, records in poll.batches:
            by_topic[tp.topic].append((tp, self.partitions[tp], records))
        written = Written()
        failures: list[str] = []
        for topic, parts in by_topic.items():
            failures += self.process(topic, parts, written)
        if failures:
            # One failure of the store per poll, however many partitions it refused.
            wait = self.backoff.failed(failures[-1])
            log.error(
                "store write failed; retrying the partitions from the store",
                extra={"error": failures[-1], "partitions": len(failures),
                       "failures": self.backoff.failures, "wait_s": wait},
            )  # fmt: skip
            time.sleep(wait)
        elif written.positions:
            self.backoff.succeeded()
        return written

    def durable(self, *, final: bool) -> dict[Any, int]:
        """The store offsets of the partitions written since the last call (all, when final).

        Every write is committed to the store before ``write`` returns.
        """
        if final:
            return {tp: r.stored_offset for tp, r in self.partitions.items() if r.stored_offset}
        durable, self._durable = self._durable, {}
        return durable

    def _update_lag(self) -> None:
        for tp, lag in self.runtime.lag().items():
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)

    def process(
        self,
        topic: str,
        parts: Sequence[tuple[Any, PartitionRuntime, list[Any]]],
        written: Written,
    ) -> list[str]:
        """Apply one poll's batches of a topic; the store's errors, if it failed.

        The decisions are :func:`tierflow.stream.fold.fold`'s; this writes them: dead
        letters, then one store commit per partition. A refused or failed commit leaves
        the partition to be loaded again from the store.
        """
        self.summary.consumed += sum(len(messages) for _tp, _rt, messages in parts)
        outcomes = fold(
            self.schemas[topic],
            self.topics[topic],
            [(runtime.views, messages) for _tp, runtime, messages in parts],
            max_bytes=self.config.max_event_bytes,
            late_policy=self.config.late_events,
        )
        failures = []
        for (tp, runtime, messages), outcome in zip(parts, outcomes, strict=True):
            self._count(topic, outcome)
            try:
                done = self._commit(runtime, messages, outcome)
            except StoreError as exc:
                # Nothing of the batch is applied; the partition starts over from the
                # store once it answers again.
                failures.append(str(exc))
                written.reload.append(tp)
                continue
            if done:
                written.positions[tp] = runtime.stored_offset or 0
                self._durable[tp] = runtime.stored_offset or 0
            else:
                written.reload.append(tp)
        return failures

    def _count(self, topic: str, outcome: Outcome) -> None:
        self.summary.poison += outcome.poison
        for reasons in outcome.dead.values():
            kind = reasons[0].split(":", 1)[0]
            if kind != "late":
                self.metrics.dead_letters.labels(topic, kind).inc()
        for view, count in outcome.late.items():
            self.summary.late += count
            self.metrics.late.labels(view).inc(count)

    def _commit(self, runtime: PartitionRuntime, fresh: Sequence[Any], result: Outcome) -> bool:
        """Dead letters, then the store commit; False if the commit was refused."""
        dead_end, sent, late = self.dead_letters.send(
            runtime.topic,
            runtime.partition,
            fresh,
            result.dead,
            already=runtime.already_dead,
            end=runtime.dead_letter_end,
        )
        self.summary.dead_lettered += sent
        if late:
            self.metrics.dead_letters.labels(runtime.topic, "late").inc(late)
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

    # --- assignment -----------------------------------------------------------------------

    def state_name(self, topic: str, partition: int) -> str:
        """The store name of a partition's state."""
        return f"{self.config.group_id}/{topic}/{partition}"

    def resume(self, partitions: Sequence[Any]) -> dict[Any, int | None]:
        """Load each partition's state from the store; where each resumes.

        A partition the store cannot load now is left out (the runtime asks again after
        the next poll), after the store's backoff.
        """
        out: dict[Any, int | None] = {}
        for tp in partitions:
            try:
                out[tp] = self._load(tp, tp.topic, tp.partition)
            except StoreError as exc:
                wait = self.backoff.failed(str(exc))
                log.error("store read failed; loading the partitions later",
                          extra={"error": str(exc), "failures": self.backoff.failures})  # fmt: skip
                time.sleep(wait)
                break  # the rest wait for the next poll too
        return out

    def revoke(self, partitions: Sequence[Any]) -> None:
        """Forget revoked partitions.

        Every batch was committed, to the store and then to Kafka, before the poll that
        is rebalancing now, so there is nothing left to flush.
        """
        for tp in partitions:
            self._durable.pop(tp, None)
            runtime = self.partitions.pop(tp, None)
            if runtime is not None:
                self.metrics.lag.remove(runtime.topic, str(runtime.partition))
                log.info("partition revoked", extra={"topic": tp.topic, "partition": tp.partition})

    def _load(self, tp: Any, topic: str, partition: int) -> int | None:
        """Load the partition's state from the store; its stored offset."""
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
        runtime.already_dead = self.dead_letters.sent_after(
            topic, partition, end=runtime.dead_letter_end, floor=stored.offset
        )
        self.partitions[tp] = runtime
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
        return stored.offset
