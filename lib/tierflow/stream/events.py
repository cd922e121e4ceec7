"""From Kafka messages to checked events, and from events to tile partials.

A topic's messages are judged once, against the union of the source columns of the views
that read it (the same decoder and contract rules batch uses). A message is *poison* when
it cannot be decoded, breaks its contract, lacks an entity key or its event time, or its
Kafka key is not the entity key of its values (a topic must be keyed by the entity its
views aggregate by: that is what puts all of an entity's events in one partition), or
its event time breaks a view's event-time rule (:mod:`tierflow.features.eventtime`:
too far ahead of the record's Kafka timestamp, or outside the view's bounds).
Poison messages are processed by no view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import narwhals as nw
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tierflow.config.features import FeatureViewConfig
from tierflow.config.jobs import ColumnContract, SourceConfig
from tierflow.errors import ConfigError
from tierflow.features.batch import _TILE, _part
from tierflow.features.eventtime import EventTimeRule
from tierflow.features.tiles import arrow_tile_partials, prepare_arrow_events
from tierflow.features.windows import Partial
from tierflow.io.textdecode import decode_json_messages
from tierflow.jobs.contracts import REASON, validate
from tierflow.stores.base import entity_key
from tierflow.stream.state import ROWS_SLOT, TilePartial, ViewState

OFFSET = "_tf_offset"
RECORD_US = "_tf_record_us"  # the record's Kafka timestamp, in microseconds
# Kafka timestamps are milliseconds in a long; past this one they would overflow as
# microseconds (no real clock gets near it: the year 146,140).
_MAX_RECORD_MS = 2**62 // 1000


@dataclass(frozen=True)
class TopicSchema:
    """What every message of a topic must be: columns, entity key and event times."""

    topic: str
    columns: dict[str, ColumnContract]
    entities: tuple[str, ...]
    event_times: tuple[str, ...]
    rules: tuple[EventTimeRule, ...] = ()
    key_format: str = "json-list"

    @classmethod
    def of(cls, topic: str, views: Sequence[FeatureViewConfig]) -> TopicSchema:
        """The schema of a topic read by ``views``.

        Raises:
            ConfigError: the views disagree on the entity or on a column's type.
        """
        columns: dict[str, ColumnContract] = {}
        entities = views[0].entities
        key_format = views[0].source.key_format
        for view in views:
            if view.max_event_time_skew != views[0].max_event_time_skew or (
                view.event_time_bounds != views[0].event_time_bounds
            ):
                # A message is judged once for the topic; batch judges each view alone.
                raise ConfigError(
                    f"views {views[0].name} and {view.name} both read topic {topic!r} but "
                    "declare different event-time rules (max_event_time_skew, "
                    "event_time_bounds); a topic has one"
                )
            if view.source.key_format != key_format:
                raise ConfigError(
                    f"views {views[0].name} and {view.name} both read topic {topic!r} but "
                    f"declare different key formats ({key_format} vs "
                    f"{view.source.key_format})"
                )
            if view.entities != entities:
                raise ConfigError(
                    f"views {views[0].name} and {view.name} both read topic {topic!r} but "
                    f"aggregate by different entities ({', '.join(entities)} vs "
                    f"{', '.join(view.entities)}); a topic is keyed by one entity"
                )
            for name, contract in view.source.columns.items():
                seen = columns.get(name)
                if seen is not None and seen.type != contract.type:
                    raise ConfigError(
                        f"views reading topic {topic!r} disagree on column {name!r}: "
                        f"{seen.type} vs {contract.type} (in {view.name})"
                    )
                # The strictest contract wins: nullable only if every view allows null.
                # Uniqueness is a property of a table, not of a stream of events.
                if seen is None or (seen.nullable and not contract.nullable):
                    columns[name] = contract.model_copy(update={"unique": False})
        times = tuple(dict.fromkeys(v.event_time for v in views))
        rules = tuple(EventTimeRule.of(v) for v in views)
        return cls(topic, columns, entities, times, rules, key_format)

    @property
    def types(self) -> dict[str, str]:
        """Column name to contract type."""
        return {name: c.type for name, c in self.columns.items()}


@dataclass(frozen=True)
class CheckedBatch:
    """One partition's messages, judged: the valid events, and the poison with reasons."""

    events: pa.Table  # valid rows in message order, with OFFSET and RECORD_US
    poison: list[tuple[int, str]]  # (index in the batch, reason)
    rows: list[int]  # for each event, its index in the batch


def check_messages(
    schema: TopicSchema,
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    offsets: Sequence[int],
    timestamps: Sequence[int],
    *,
    max_bytes: int,
) -> CheckedBatch:
    """Decode and check one partition's messages (in offset order).

    ``timestamps`` are the records' Kafka timestamps in milliseconds (-1: none).
    """
    batch = decode_json_messages(values, schema.types, max_bytes=max_bytes)
    source = SourceConfig(
        format="jsonl", path=schema.topic, columns=schema.columns, extra_columns="drop"
    )
    # The contract's own expressions, evaluated eagerly by Arrow: a poll is small, and a
    # lazy engine's planning would cost more than the checks.
    frame = nw.from_native(pa.table(batch), eager_only=True).lazy()
    checked = validate(frame, schema.topic, source).collect().to_arrow()
    needed = [*schema.entities, *schema.event_times]
    record_ms = np.asarray(timestamps, dtype=np.int64).reshape(-1)
    stamped = record_ms >= 0
    record_us = np.minimum(record_ms, _MAX_RECORD_MS) * 1000
    # Every rule as a vector over the batch; only the rows some rule refuses are looked
    # at one by one, for their reason (in this order of precedence).
    decoded = pc.not_equal(checked.column(REASON), "").to_numpy(zero_copy_only=False)
    missing = np.zeros(checked.num_rows, dtype=bool)
    for column in needed:
        missing |= checked.column(column).is_null().to_numpy(zero_copy_only=False)
    expected = _expected_keys(checked, schema)
    if expected is None:
        wrong_key = np.zeros(checked.num_rows, dtype=bool)
    else:
        given = pa.array(keys, pa.binary())
        same = pc.fill_null(pc.equal(given, expected), False)
        wrong_key = ~same.to_numpy(zero_copy_only=False)
    unstamped = ~stamped if schema.rules else np.zeros(checked.num_rows, dtype=bool)
    refused = _refused_times(schema, checked, record_us)
    bad = decoded | missing | wrong_key | unstamped | refused
    poison: list[tuple[int, str]] = []
    if bad.any():
        reasons = checked.column(REASON)
        for i in np.flatnonzero(bad).tolist():
            reason = reasons[i].as_py()
            if not reason:
                gone = [c for c in needed if not checked.column(c)[i].is_valid]
                if gone:
                    reason = f"not_null: {', '.join(gone)} missing (a stream event needs them)"
                elif wrong_key[i]:
                    entity = [checked.column(c)[i].as_py() for c in schema.entities]
                    want = message_key(entity, schema.key_format) or b""
                    key = keys[i]
                    got = "no key" if key is None else repr(key[:60])
                    reason = (
                        f"key: message key {got} is not the entity key {want.decode()} "
                        f"({schema.key_format})"
                    )
                elif unstamped[i]:
                    reason = (
                        "event_time: the record has no Kafka timestamp to judge its event time by"
                    )
                else:
                    reason = _time_reason(schema, checked, i, int(record_us[i]))
            poison.append((i, reason))
    good = np.flatnonzero(~bad).tolist()
    events = checked.drop_columns([c for c in checked.column_names if c.startswith("_tf_")]).take(
        pa.array(good, pa.int64())
    )
    events = events.append_column(OFFSET, pa.array(np.asarray(offsets, np.int64)[good]))
    events = events.append_column(RECORD_US, pa.array(record_us[good], pa.int64()))
    return CheckedBatch(events, poison, good)


def _expected_keys(checked: pa.Table, schema: TopicSchema) -> pa.Array | None:
    """Each row's entity key in the topic's key format, as binary (None: keys are ignored).

    Built with Arrow kernels where the values need no JSON escaping; the rare rows that
    do (quotes, backslashes, control characters) are encoded one by one.
    """
    if schema.key_format == "from-value":
        return None
    columns = [checked.column(c).combine_chunks() for c in schema.entities]
    parts = []
    plain = pa.array(np.ones(checked.num_rows, dtype=bool))
    for column in columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            text = column.cast(pa.string())
            if schema.key_format == "json-list":
                needs_escape = pc.match_substring_regex(text, r'[\x00-\x1f"\\]')
                plain = pc.and_(plain, pc.invert(pc.fill_null(needs_escape, False)))
                text = pc.binary_join_element_wise('"', text, '"', "")
        else:
            text = pc.cast(column, pa.string())
        parts.append(text)
    if schema.key_format == "string":
        joined = parts[0]
    else:
        joined = pc.binary_join_element_wise("[", *_interleave(parts, ","), "]", "")
    keys = pc.cast(joined, pa.binary())
    if pc.all(plain).as_py():
        return keys
    out = keys.to_pylist()
    for i in np.flatnonzero(~plain.to_numpy(zero_copy_only=False)).tolist():
        out[i] = message_key([c[i].as_py() for c in columns], schema.key_format)
    return pa.array(out, pa.binary())


def _interleave(parts: list[Any], separator: str) -> list[Any]:
    out: list[Any] = []
    for i, part in enumerate(parts):
        if i:
            out.append(separator)
        out.append(part)
    return out


def message_key(entity: Sequence[Any], key_format: str) -> bytes | None:
    """The Kafka key of an entity's messages in ``key_format`` (None: any key will do)."""
    if key_format == "from-value":
        return None
    if key_format == "string":
        return str(entity[0]).encode()
    return entity_key(entity).encode()


def _times_us(checked: pa.Table, column: str) -> np.ndarray[Any, Any]:
    # Null times belong to rows that are poison already; 0 keeps the arithmetic defined.
    times = pc.cast(checked.column(column), pa.int64()).fill_null(0)
    return times.to_numpy()  # type: ignore[no-any-return]


def _refused_times(
    schema: TopicSchema, checked: pa.Table, record_us: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """Rows some view's event-time rule refuses (one vectorised pass per view)."""
    refused = np.zeros(checked.num_rows, dtype=bool)
    for rule in schema.rules:
        accepted = rule.accepts(_times_us(checked, rule.column), record_us)
        if accepted is not None:
            refused |= ~accepted
    return refused


def _time_reason(schema: TopicSchema, checked: pa.Table, row: int, record_us: int) -> str:
    for rule in schema.rules:
        event_us = int(_times_us(checked.slice(row, 1), rule.column)[0])
        reason = rule.reason(event_us, record_us)
        if reason:
            return reason
    raise AssertionError("a refused event time has no reason")  # accepts() and reason() agree


def event_times_us(events: pa.Table, column: str) -> list[int]:
    """The event-time column as epoch microseconds."""
    return pc.cast(events.column(column), pa.int64()).to_pylist()  # type: ignore[no-any-return]


def batch_partials(events: pa.Table, state: ViewState) -> list[TilePartial]:
    """The tile partials of accepted events (the batch table, by the Arrow kernel)."""
    if events.num_rows == 0:
        return []
    view = state.view
    table = arrow_tile_partials(prepare_arrow_events(events, view), view)
    rows = table.num_rows
    columns: dict[str, list[Any]] = {
        name: table.column(name).to_pylist() for name in table.column_names
    }
    nothing: list[Any] = [None] * rows

    def column(kind: str, slot: str | None) -> list[Any]:
        return columns.get(_part(kind, slot), nothing)

    # Per slot, its columns once; then the partials row by row (kinds a view does not
    # need are not computed and stay at their defaults).
    makers: list[Any] = []
    for slot in state.slots:
        if slot == ROWS_SLOT:
            counts = column("rows", None)
            makers.append(lambda i, c=counts: Partial(rows=int(c[i] or 0)))
            continue
        parts = [column(k, slot) for k in ("count", "sum", "sq", "min", "max", "lts", "lval")]

        def make(i: int, p: list[list[Any]] = parts) -> Partial:
            count, total, squares = p[0][i], p[1][i], p[2][i]
            return Partial(
                count=int(count or 0),
                total=float(total or 0.0),
                squares=float(squares or 0.0),
                minimum=p[3][i],
                maximum=p[4][i],
                last_ts=p[5][i],
                last_value=p[6][i],
            )

        makers.append(make)
    keys = list(zip(*(columns[e] for e in view.entities), strict=True))
    tiles = columns[_TILE]
    return [TilePartial(keys[i], int(tiles[i]), [m(i) for m in makers]) for i in range(rows)]
