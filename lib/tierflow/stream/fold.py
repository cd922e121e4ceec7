"""One poll of a topic, folded into window state: the decisions, with no IO.

:func:`fold` judges the records of every partition a poll delivered for one topic,
folds the accepted events into each partition's view states, and returns per partition
what to write (online rows, window state), what to dead-letter and why, and what was
late. It talks to no broker and no store: the consumer runtime does the IO with what it
returns (:mod:`tierflow.stream.daemon`), and tests run it on records they make.

Judging and tile aggregation run once over every partition's records (entities never
span partitions); late judgement and window state are per partition, in offset order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from tierflow.config.features import FeatureViewConfig
from tierflow.stream.events import (
    OFFSET,
    RECORD_US,
    TopicSchema,
    batch_partials,
    check_messages,
    event_times_us,
)
from tierflow.stream.state import ViewState

LatePolicy = Literal["drop", "dead_letter"]


class Record(Protocol):
    """What :func:`fold` reads of a Kafka record (kafka-python's ConsumerRecord has it)."""

    @property
    def key(self) -> bytes | None: ...  # noqa: D102
    @property
    def value(self) -> bytes | None: ...  # noqa: D102
    @property
    def offset(self) -> int: ...  # noqa: D102
    @property
    def timestamp(self) -> int | None: ...  # noqa: D102


@dataclass
class Outcome:
    """What one partition's records produced, across the topic's views."""

    applied: int = 0  # events some view accepted (the most of any view)
    rows: list[tuple[str, Any, int]] = field(default_factory=list)  # (view, row, ttl µs)
    put: dict[str, str] = field(default_factory=dict)  # window state to keep
    delete: list[str] = field(default_factory=list)  # window state to forget
    dead: dict[int, list[str]] = field(default_factory=dict)  # record index -> reasons
    poison: int = 0
    late: dict[str, int] = field(default_factory=dict)  # view -> late events


def timestamp_ms(record: Record) -> int:
    """A record's Kafka timestamp in milliseconds; -1 where it has none."""
    stamp = record.timestamp
    return -1 if stamp is None else int(stamp)


def fold(
    schema: TopicSchema,
    views: Sequence[FeatureViewConfig],
    parts: Sequence[tuple[Mapping[str, ViewState], Sequence[Record]]],
    *,
    max_bytes: int,
    late_policy: LatePolicy,
) -> list[Outcome]:
    """Judge and fold one poll of a topic; one :class:`Outcome` per part, in order.

    Args:
        schema: The topic's schema.
        views: The views reading the topic.
        parts: Per partition, its view states (changed in place) and its records in
            offset order.
        max_bytes: Larger payloads are poison.
        late_policy: Late events are dropped or dead-lettered.
    """
    records = [r for _states, rs in parts for r in rs]
    owner = [i for i, (_states, rs) in enumerate(parts) for _ in rs]
    base = [0]
    for _states, rs in parts:
        base.append(base[-1] + len(rs))
    checked = check_messages(
        schema,
        [r.key for r in records],
        [r.value for r in records],
        [r.offset for r in records],
        [timestamp_ms(r) for r in records],
        max_bytes=max_bytes,
    )
    outcomes = [Outcome() for _ in parts]
    for i, reason in checked.poison:
        outcomes[owner[i]].dead[i - base[owner[i]]] = [reason]
        outcomes[owner[i]].poison += 1
    event_owner = [owner[i] for i in checked.rows]
    for view in views:
        _fold_view(view, parts, checked, event_owner, base, outcomes, late_policy)
    return outcomes


def _fold_view(
    view: FeatureViewConfig,
    parts: Sequence[tuple[Mapping[str, ViewState], Sequence[Record]]],
    checked: Any,
    event_owner: list[int],
    base: list[int],
    outcomes: list[Outcome],
    late_policy: LatePolicy,
) -> None:
    events = checked.events
    times = event_times_us(events, view.event_time)
    stamps = events.column(RECORD_US).to_pylist()
    offsets = events.column(OFFSET).to_pylist()
    keep = [True] * events.num_rows
    owners = np.asarray(event_owner, dtype=np.int64)
    for index, (states, _records) in enumerate(parts):
        state = states[view.name]
        rows = np.flatnonzero(owners == index).tolist()
        late = state.late_flags([times[r] for r in rows], [stamps[r] for r in rows])
        late_rows = [r for r, flag in zip(rows, late, strict=True) if flag]
        if not late_rows:
            continue
        outcome = outcomes[index]
        outcome.late[view.name] = outcome.late.get(view.name, 0) + len(late_rows)
        for r in late_rows:
            keep[r] = False
            if late_policy == "dead_letter":
                at = checked.rows[r] - base[index]
                outcome.dead.setdefault(at, []).append(
                    f"late: for view {view.name}, its window closed at watermark "
                    f"{state.watermark_us} µs (offset {offsets[r]})"
                )
    accepted = events.filter(pa.array(keep)) if not all(keep) else events
    kept_owner = owners[np.asarray(keep, dtype=bool)] if len(keep) else owners
    # Entities never span partitions: each one's owner, from its events.
    columns = [accepted.column(e).to_pylist() for e in view.entities]
    entity_owner = dict(zip(zip(*columns, strict=True), kept_owner.tolist(), strict=True))
    applied = np.bincount(kept_owner, minlength=len(parts)).tolist()
    partials = batch_partials(accepted, parts[0][0][view.name])
    split: list[list[Any]] = [[] for _ in parts]
    for item in partials:
        split[entity_owner[item.entity]].append(item)
    for index, (states, _records) in enumerate(parts):
        state = states[view.name]
        state.add(split[index])
        emission = state.advance()
        outcome = outcomes[index]
        outcome.applied = max(outcome.applied, applied[index])
        outcome.rows += [(view.name, row, view.ttl_us) for row in emission.rows]
        outcome.put.update({state.field(e): text for e, text in emission.put.items()})
        outcome.delete += [state.field(e) for e in emission.delete]
