"""One consumer-group runtime for every tierflow consumer, with the work plugged in as a sink.

The feature daemon (online-store sink, :mod:`tierflow.stream.daemon`) and the event
logger (Delta sink, :mod:`tierflow.stream.eventlog`) differ only in what they do with a
partition's records and where they keep how far they got. Everything else is here, once:

- **subscription and rebalances.** kafka-python runs rebalance callbacks on its network
  thread, which also sends the heartbeats: no blocking call may run there. A newly
  assigned partition is only noted; after the poll returns, the sink loads its state and
  says where it resumes (its own stored offset: the sink, not Kafka, decides), and the
  runtime seeks there. Until then its records are dropped. A revoked partition is
  forgotten at once and the sink told.
- **the poll.** Records below a partition's position (replays after a crash or a
  reload) are skipped; the rest go to the sink in one call per poll. A poll is sized by
  count (``max_poll_records``) and by time (``poll_budget_ms`` of the sink's measured
  cost per record), so that a burst is applied in slices and no record waits long
  behind the others of its poll.
- **offsets.** What the sink reports durable is committed to Kafka after the sink's own
  commit, so Kafka's offset is never ahead of the sink's (it only saves a re-read).
- **stop and drain.** :meth:`ConsumerRuntime.request_stop` (SIGTERM) ends the loop after
  the current poll; the sink then makes everything durable, the final offsets are
  committed, and the consumer leaves the group so the partitions move at once.
- **health.** The time since the last poll and the assigned partitions.

:class:`Backoff` is the bounded retry a sink applies to its store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener

from tierflow.config.streaming import StreamingConfig
from tierflow.errors import ExitCode, TierflowError
from tierflow.stores.base import StoreError
from tierflow.stream.connection import KafkaConnection, kafka_options

log = logging.getLogger("tierflow.stream")
#: Seconds a starting consumer waits for its topics' partitions to be in its metadata.
TOPIC_WAIT_S = 5.0


class StreamError(TierflowError):
    """A consumer cannot start (bad config, a missing topic)."""

    exit_code = ExitCode.USAGE


class KafkaUnreachableError(StreamError):
    """Kafka cannot be reached."""

    exit_code = ExitCode.SERVICE


@dataclass(frozen=True)
class Poll:
    """The records of one poll for a sink, past each partition's position."""

    batches: list[tuple[Any, list[Any]]]  # (TopicPartition, records in offset order)
    polled: int  # records the poll returned, skipped ones included
    skipped: dict[Any, int]  # per partition: replays below its position


@dataclass
class Written:
    """What a sink did with a poll."""

    positions: dict[Any, int] = field(default_factory=dict)  # the next offset per partition
    reload: list[Any] = field(default_factory=list)  # partitions to load again (a refused write)


class Sink(Protocol):
    """What a consumer does with its partitions' records."""

    def resume(self, partitions: Sequence[Any]) -> dict[Any, int | None]:
        """Load the partitions' state; the offset each resumes from (None: the beginning)."""
        ...

    def revoke(self, partitions: Sequence[Any]) -> None:
        """Forget the partitions (another member owns them now)."""
        ...

    def write(self, poll: Poll) -> Written:
        """Apply one poll's records."""
        ...

    def durable(self, *, final: bool) -> dict[Any, int]:
        """The offsets durable in the sink now, to tell Kafka (everything, when final)."""
        ...


class ConsumerRuntime:
    """A consumer-group member feeding one sink."""

    def __init__(
        self,
        sink: Sink,
        topics: Sequence[str],
        config: StreamingConfig,
        bootstrap: KafkaConnection | str,
        *,
        group_id: str,
        client_id: str,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.topics = list(topics)
        self.config = config
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.client_id = client_id
        self.consumer_options = dict(consumer_options or {})
        self.positions: dict[Any, int | None] = {}  # loaded partitions: where they are
        self.stopping = False
        self.last_poll = time.monotonic()
        self.consumer: Any = None
        self._to_load: list[Any] = []
        self.max_records = config.max_poll_records  # sized by time, see _size_poll
        self._per_record_s: float | None = None

    def start(self) -> None:
        """Connect and subscribe.

        Raises:
            KafkaUnreachableError: Kafka cannot be reached.
        """
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        try:
            self.consumer = KafkaConsumer(
                **kafka_options(self.bootstrap),
                group_id=self.group_id,
                client_id=self.client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.config.max_poll_records,
                session_timeout_ms=self.config.session_timeout_ms,
                # A topic or partition created after the start is seen within 30 s, not
                # at the client's default 5-minute metadata refresh.
                **({"metadata_max_age_ms": 30_000} | self.consumer_options),
            )
        except KafkaError as exc:
            raise KafkaUnreachableError(f"cannot reach Kafka at {self.bootstrap}: {exc!r}") from exc
        # Subscribed first, then the metadata fetched: the client keeps a snapshot of the
        # subscribed topics' partitions, taken at each metadata update. Fetched before
        # the subscription, that snapshot stays empty until the next update, which then
        # differs from what the first assignment was made on, and every start paid for a
        # second rebalance of the whole group at once.
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        self._await_topics(TOPIC_WAIT_S)

    def _await_topics(self, seconds: float) -> None:
        """Have every subscribed topic's partitions in the client's metadata first.

        A topic created just before the daemon starts may not be in the metadata the
        client holds: a group leader assigning then gives out no partition of it (Kafka's
        "No partition metadata for topic"), and the member waits for the next refresh with
        nothing to consume (seen: the demo's second daemon idle for a minute). Asked for
        each topic's partitions up to ``seconds``; a topic still unknown is subscribed to
        all the same (it may be created later), and the log says so.
        """
        deadline = time.monotonic() + seconds
        missing = list(self.topics)
        while missing:
            missing = [t for t in missing if not self.consumer.partitions_for_topic(t)]
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if missing:
            log.warning("no partitions known yet for %s; subscribing all the same",
                        ", ".join(missing))  # fmt: skip

    def request_stop(self, *_args: object) -> None:
        """Finish the current poll, make everything durable, and leave (SIGTERM/SIGINT)."""
        if not self.stopping:
            log.info("stop requested: finishing the batch")
        self.stopping = True

    def run(
        self, *, max_seconds: float | None = None, after_poll: Callable[[], None] | None = None
    ) -> None:
        """Poll until stopped (or for ``max_seconds``); then drain and leave the group."""
        began = time.monotonic()
        try:
            while not self.stopping:
                if max_seconds is not None and time.monotonic() - began > max_seconds:
                    break
                self.poll_once()
                if after_poll is not None:
                    after_poll()
            self._commit(self.sink.durable(final=True), wait=True)
        finally:
            self.close()

    def poll_once(self) -> int:
        """One poll: records to the sink, durable offsets to Kafka, new partitions loaded.

        Returns:
            How many records the poll returned.
        """
        records = self.consumer.poll(
            timeout_ms=self.config.poll_timeout_ms, max_records=self.max_records
        )
        self.last_poll = time.monotonic()
        batches, skipped, polled = [], {}, 0
        for tp, messages in records.items():
            if tp not in self.positions or tp in self._to_load or not messages:
                # Revoked, or assigned and not loaded yet: the seek after loading makes
                # these come again.
                continue
            polled += len(messages)
            floor = self.positions[tp] or 0
            fresh = [m for m in messages if m.offset >= floor]
            if len(fresh) < len(messages):
                skipped[tp] = len(messages) - len(fresh)
            if fresh:
                batches.append((tp, fresh))
        if polled:
            began = time.perf_counter()
            written = self.sink.write(Poll(batches, polled, skipped))
            self._size_poll(time.perf_counter() - began, polled)
            self.positions.update(written.positions)
            self._to_load.extend(tp for tp in written.reload if tp not in self._to_load)
        self._commit(self.sink.durable(final=False), wait=False)
        self._load_assigned()
        return polled

    def _size_poll(self, seconds: float, records: int) -> None:
        """The next poll's size: as many records as the sink applies in the time budget.

        The cost per record is a moving average of polls large enough to say (a small
        poll is mostly the fixed cost of its commits); never fewer than 100 records.
        """
        if records < 100:
            return
        cost = seconds / records
        self._per_record_s = (
            cost if self._per_record_s is None else 0.8 * self._per_record_s + 0.2 * cost
        )
        budget = self.config.poll_budget_ms / 1000
        self.max_records = max(
            min(100, self.config.max_poll_records),
            min(self.config.max_poll_records, int(budget / self._per_record_s)),
        )

    def lag(self) -> dict[Any, int]:
        """Per loaded partition: records between its position and the partition's end."""
        out = {}
        for tp, position in self.positions.items():
            high = self.consumer.highwater(tp)
            if high is not None:
                out[tp] = max(0, high - (position or 0))
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while polling regularly."""
        age = time.monotonic() - self.last_poll
        ok = self.consumer is not None and age < max(30.0, self.config.session_timeout_ms / 1000)
        assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in self.positions)
        return ok, {"group": self.group_id, "assigned": assigned, "last_poll_age_s": round(age, 3)}

    def close(self) -> None:
        """Leave the group, so that the partitions move at once."""
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None

    def _commit(self, offsets: Mapping[Any, int], *, wait: bool) -> None:
        """Tell Kafka how far the sink is; asynchronously in the loop, waited for at the end."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        ours = {
            tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items() if tp in self.positions
        }
        if not ours or self.consumer is None:
            return

        def done(_offsets: Any, result: Any) -> None:
            if isinstance(result, Exception):
                log.warning("kafka offset commit failed", extra={"error": repr(result)})

        try:
            if wait:
                self.consumer.commit(ours)
            else:
                self.consumer.commit_async(ours, callback=done)
        except KafkaError as exc:
            log.warning("kafka offset commit failed", extra={"error": repr(exc)})

    def _load_assigned(self) -> None:
        if not self._to_load:
            return
        loading, self._to_load = self._to_load, []
        resumed = self.sink.resume(loading)
        for tp in loading:
            if tp not in resumed:
                self._to_load.append(tp)  # the sink could not load it now: next poll
                continue
            offset = resumed[tp]
            self.positions[tp] = offset
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)

    def on_assigned(self, assigned: Sequence[Any]) -> None:
        """Note new partitions; they are loaded after the poll returns (network thread)."""
        self._to_load.extend(
            tp for tp in assigned if tp not in self.positions and tp not in self._to_load
        )

    def on_revoked(self, revoked: Sequence[Any]) -> None:
        """Forget revoked partitions at once, and tell the sink."""
        for tp in revoked:
            if tp in self._to_load:
                self._to_load.remove(tp)
            self.positions.pop(tp, None)
        self.sink.revoke(revoked)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python's rebalance callbacks, forwarded to the runtime."""

    def __init__(self, runtime: ConsumerRuntime) -> None:
        self.runtime = runtime

    def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
        self.runtime.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
        self.runtime.on_assigned(assigned)


@dataclass
class Backoff:
    """A bounded retry with exponential backoff, for a store that fails to answer.

    After ``limit`` failures in a row the consumer gives up (its supervisor restarts it);
    the count and the last error are reported by ``/health`` meanwhile.
    """

    limit: int
    base_s: float = 0.5
    cap_s: float = 10.0
    failures: int = 0
    last_error: str | None = None

    def failed(self, error: str) -> float:
        """Note a failure; the seconds to wait before the next try.

        Raises:
            StoreError: the limit of failures in a row is reached.
        """
        self.failures += 1
        self.last_error = error
        if self.failures > self.limit:
            raise StoreError(
                f"the online store failed {self.failures} times in a row; giving up "
                f"(last error: {error})"
            )
        return float(min(self.cap_s, self.base_s * 2 ** (self.failures - 1)))

    def succeeded(self) -> None:
        """A write went through: the count starts over."""
        self.failures = 0
