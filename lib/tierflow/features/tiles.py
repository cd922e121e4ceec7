"""Tile partials of a small in-memory batch of events, in Arrow: the stream's per-poll kernel.

:func:`tierflow.features.batch.tile_partials` computes the partials of a view's events
with Narwhals expressions, on any engine, at any size. A streaming poll holds a few dozen
to a few thousand events, where a lazy engine's fixed cost per query (planning,
expression translation; milliseconds) is most of the work. This module computes the
*same* table for such a batch with Arrow compute kernels and NumPy, in one pass:

- the rows are the events :func:`~tierflow.features.batch.prepare_events` would keep:
  the view's ``derived`` columns and ``filter`` are the same expressions
  (:mod:`tierflow.jobs.expressions`), evaluated eagerly on the Arrow table; rows without
  an entity key or event time are left out; columns are cast as batch casts them;
- tiles, partial kinds and the rule for the last value are those of
  :mod:`tierflow.features.windows` and :func:`~tierflow.features.batch.partial_kinds`:
  per entity and tile, ``rows``; and per column, the non-null ``count``, ``sum``, sum of
  squares ``sq``, ``min``, ``max``, the time of the latest non-null value ``lts`` and
  the largest value at that time ``lval`` (only the kinds the view's features need);
- the output has the column names and types of the batch table, so one conversion into
  :class:`~tierflow.features.windows.Partial` serves both.

``tests/unit/test_tiles.py`` proves the two equal on random events (nulls, ties on time
and value, strings, filters, derived columns, negative times); ``test_stream_state``
proves the stream built on this kernel equals batch at its watermark.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tierflow.config.features import FeatureViewConfig
from tierflow.features.batch import _TILE, _TS, _columns_used, _part, partial_kinds

_NOT_CAST = ("string", "date", "timestamp")


def prepare_arrow_events(events: pa.Table, view: FeatureViewConfig) -> pa.Table:
    """The view's events of ``events``, as :func:`prepare_events` keeps them, with tiles.

    Event-time rules are not applied here: the stream judges event times per message,
    against the records' Kafka timestamps, before the view sees them.
    """
    known = set(view.source.columns)
    if view.derived or view.filter:
        import narwhals as nw

        from tierflow.jobs.expressions import to_expr

        frame = nw.from_native(events, eager_only=True)
        for name, expr in (view.derived or {}).items():
            frame = frame.with_columns(to_expr(expr, known).alias(name))
            known.add(name)
        if view.filter:
            frame = frame.filter(to_expr(view.filter, known))
        events = frame.to_arrow()
    used = _columns_used(view)
    columns: dict[str, Any] = {}
    for name in [*view.entities, view.event_time, *used]:
        if name in columns:
            continue
        column = events.column(name)
        declared = view.source.columns.get(name)
        if name in used and (declared is None or declared.type not in _NOT_CAST):
            column = pc.cast(column, pa.float64())
        columns[name] = column
    table = pa.table(columns)
    present = None
    for name in [*view.entities, view.event_time]:
        valid = pc.is_valid(table.column(name))
        present = valid if present is None else pc.and_(present, valid)
    if present is not None and not pc.all(present).as_py():
        table = table.filter(present)
    ts = _epoch_us(table.column(view.event_time))
    table = table.append_column(_TS, pa.array(ts, pa.int64()))
    # NumPy's // floors, as batch's does: an event before the epoch is in a negative tile.
    return table.append_column(_TILE, pa.array(ts // view.step_us, pa.int64()))


def _epoch_us(column: pa.ChunkedArray) -> np.ndarray[Any, Any]:
    if pa.types.is_timestamp(column.type) and column.type.unit != "us":
        column = pc.cast(column, pa.timestamp("us", tz=column.type.tz))
    if pa.types.is_date(column.type):
        column = pc.cast(pc.cast(column, pa.timestamp("us")), pa.int64())
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(), dtype=np.int64)


def arrow_tile_partials(events: pa.Table, view: FeatureViewConfig) -> pa.Table:
    """Partials per entity and tile of prepared events (``prepare_arrow_events``).

    Returns:
        The table :func:`~tierflow.features.batch.tile_partials` returns for the same
        events: the entity columns, the tile, and one column per partial kind needed;
        one row per entity and tile, in no particular order.
    """
    keys = [*view.entities, _TILE]
    kinds = partial_kinds(view)
    n = events.num_rows
    if n == 0:
        return _empty(events, view, kinds)
    # One sort by entity and tile gives the groups as runs of rows; within a group, the
    # order does not matter for sums, counts, minima and maxima.
    order = pc.sort_indices(events, sort_keys=[(k, "ascending") for k in keys])
    table = events.take(order)
    starts = _run_starts(table, keys)
    out: dict[str, Any] = {k: table.column(k).take(pa.array(starts)) for k in keys}
    sizes = np.diff(np.append(starts, n))
    out[_part("rows", None)] = pa.array(sizes, pa.int64())
    ts = table.column(_TS).to_numpy()
    for column, needed in kinds.items():
        if column == "*":
            continue
        values = table.column(column)
        valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
        count = np.add.reduceat(valid.astype(np.int64), starts)
        empty = count == 0
        if "count" in needed:
            out[_part("count", column)] = pa.array(count, pa.int64())
        numeric = pa.types.is_floating(values.type)
        x = np.where(valid, values.to_numpy(zero_copy_only=False), 0.0) if numeric else None
        # A group without values sums to 0.0, as in batch on Polars.
        if "sum" in needed and x is not None:
            out[_part("sum", column)] = pa.array(np.add.reduceat(x, starts))
        if "sq" in needed and x is not None:
            out[_part("sq", column)] = pa.array(np.add.reduceat(x * x, starts))
        for kind in ("min", "max"):
            if kind in needed:
                out[_part(kind, column)] = _extreme(table, values, keys, starts, empty, kind)
        if "lts" in needed:
            latest = np.maximum.reduceat(np.where(valid, ts, np.iinfo(np.int64).min), starts)
            out[_part("lts", column)] = pa.array(latest, pa.int64(), mask=empty)
            out[_part("lval", column)] = _last_values(table, column, starts, empty)
    return pa.table(out)


def _run_starts(table: pa.Table, keys: list[str]) -> np.ndarray[Any, Any]:
    """The first row of each run of equal keys in a table sorted by them."""
    n = table.num_rows
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        column = table.column(key)
        head, tail = column.slice(0, n - 1), column.slice(1)
        # Keys are never null here (prepare_arrow_events drops such rows).
        differs = pc.not_equal(head, tail).to_numpy(zero_copy_only=False)
        change[1:] |= np.asarray(differs, dtype=bool)
    return np.flatnonzero(change)


def _extreme(
    table: pa.Table,
    values: pa.ChunkedArray,
    keys: list[str],
    starts: np.ndarray[Any, Any],
    empty: np.ndarray[Any, Any],
    kind: str,
) -> pa.Array:
    """Per group, the smallest or largest non-null value (null where it has none)."""
    if pa.types.is_floating(values.type):
        x = values.to_numpy(zero_copy_only=False)
        valid = ~np.asarray(pc.is_null(values).to_numpy(zero_copy_only=False), dtype=bool)
        if kind == "min":
            picked = np.minimum.reduceat(np.where(valid, x, np.inf), starts)
        else:
            picked = np.maximum.reduceat(np.where(valid, x, -np.inf), starts)
        return pa.array(picked, pa.float64(), mask=empty)
    # Strings, dates, timestamps: Arrow's own hash aggregation, aligned to the runs.
    name = "_tf_value"
    grouped = (
        pa.table({**{k: table.column(k) for k in keys}, name: values})
        .group_by(keys, use_threads=False)
        .aggregate([(name, kind)])
    )
    first = {k: table.column(k).take(pa.array(starts)) for k in keys}
    aligned = pa.table(first).join(grouped, keys=keys, join_type="left outer")
    # A join reorders its rows; sort both sides the same way to line them up.
    aligned = aligned.take(pc.sort_indices(aligned, sort_keys=[(k, "ascending") for k in keys]))
    return aligned.column(f"{name}_{kind}").combine_chunks()


def _last_values(
    table: pa.Table,
    column: str,
    starts: np.ndarray[Any, Any],
    empty: np.ndarray[Any, Any],
) -> pa.Array:
    """Per group, the value of its latest non-null event; ties on time: the largest value.

    Rows are already grouped; sorting each group by (non-null, time, value) puts the
    chosen row last in its run.
    """
    n = table.num_rows
    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    values = table.column(column)
    valid = pc.is_valid(values)
    ranked = pa.table({"g": group, "v": valid, "t": table.column(_TS), "x": values})
    # Null values sort among the invalid rows, which come first in their group.
    keys = [("g", "ascending"), ("v", "ascending"), ("t", "ascending"), ("x", "ascending")]
    order = pc.sort_indices(ranked, sort_keys=keys)
    ends = np.append(starts[1:], n) - 1
    picked = values.take(order.take(pa.array(ends)))
    if not empty.any():
        return picked.combine_chunks() if isinstance(picked, pa.ChunkedArray) else picked
    return pc.if_else(pa.array(empty), pa.nulls(len(starts), values.type), picked)


def _empty(events: pa.Table, view: FeatureViewConfig, kinds: dict[str, set[str]]) -> pa.Table:
    out: dict[str, pa.Array] = {
        k: pa.array([], events.schema.field(k).type) for k in [*view.entities, _TILE]
    }
    out[_part("rows", None)] = pa.array([], pa.int64())
    for column, needed in kinds.items():
        if column == "*":
            continue
        kind_type = events.schema.field(column).type
        for kind in sorted(needed):
            if kind in ("count", "lts"):
                out[_part(kind, column)] = pa.array([], pa.int64())
            elif kind in ("sum", "sq"):
                out[_part(kind, column)] = pa.array([], pa.float64())
            else:
                out[_part(kind, column)] = pa.array([], kind_type)
        if "lts" in needed:
            out[_part("lval", column)] = pa.array([], kind_type)
    return pa.table(out)
