"""Feature views in batch, on any engine: tiles, windows, values as of a time, training sets.

The computation follows :mod:`tierflow.features.windows` with Narwhals expressions only:

1. events: the source rows, filtered, with derived columns and their tile
   ``floor(ts / step)``;
2. tile partials per entity and tile: rows, non-null counts, sums, sums of squares, min,
   max, and the time and value of the last event (per column);
3. window rows: values where some value of an entity changes, from running sums,
   running maxima and block-wise running extremes of the partials in time order
   (:func:`entity_windows`), never a tile times every window end it reaches.

The result has a row per entity and window end (``window_end_us``, epoch microseconds)
where a tile enters or leaves one of the view's windows, including the row where every
window has just emptied; any other grid point has the value of the latest row before
it, which is how online stores (:func:`values_as_of`) and the point-in-time join read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import narwhals as nw

from tierflow.config.features import FeatureSpec, FeatureViewConfig
from tierflow.engines.base import Engine, Reduction
from tierflow.errors import ConfigError
from tierflow.features.eventtime import EventTimeRule
from tierflow.jobs.expressions import to_expr

WINDOW_END = "window_end_us"
_TS = "_tf_ts_us"
_TILE = "_tf_tile"
_ING = "_tf_ingested_us"
_E = "_tf_e"


def _part(kind: str, column: str | None) -> str:
    return f"_tf_{kind}__{column or '*'}"


def _columns_used(view: FeatureViewConfig) -> list[str]:
    seen: list[str] = []
    for feature in view.features:
        if feature.column is not None and feature.column not in seen:
            seen.append(feature.column)
    return seen


def prepare_events(
    frame: nw.LazyFrame[Any],
    view: FeatureViewConfig,
    engine: Engine,
    *,
    judge_event_time: bool = True,
) -> nw.LazyFrame[Any]:
    """Filter, derive, and keep the entities, the event time (as µs) and the used columns.

    Rows without an entity key or an event time cannot be placed in a window, and rows
    the view's event-time rule refuses (:mod:`tierflow.features.eventtime`) are not
    events of the view; both are left out (source tables are validated upstream). The
    stream judges event times itself, against the records' Kafka timestamps, and passes
    ``judge_event_time=False``.

    Raises:
        ConfigError: the view names an ``ingestion_time`` column the table lacks.
    """
    known = set(view.source.columns)
    if view.derived:
        for name, expr in view.derived.items():
            frame = frame.with_columns(to_expr(expr, known).alias(name))
            known.add(name)
    if view.filter:
        frame = frame.filter(to_expr(view.filter, known))
    used = _columns_used(view)
    casts = []
    for column in used:
        declared = view.source.columns.get(column)
        if declared is None or declared.type not in ("string", "date", "timestamp"):
            casts.append(nw.col(column).cast(nw.Float64))
    ingestion = view.source.ingestion_time if judge_event_time else None
    if ingestion is not None and ingestion not in frame.collect_schema().names():
        raise ConfigError(
            f"view {view.name}: source.ingestion_time {ingestion!r} is not a column of its "
            f"table ({view.source.path})"
        )
    selected = [*view.entities, view.event_time, *used]
    extra = [ingestion] if ingestion is not None and ingestion not in selected else []
    frame = frame.select(*selected, *extra)
    if casts:
        frame = frame.with_columns(*casts)
    frame = frame.filter(
        *[~nw.col(e).is_null() for e in view.entities], ~nw.col(view.event_time).is_null()
    )
    frame = engine.epoch_us(frame, view.event_time, _TS)
    if judge_event_time:
        rule = EventTimeRule.of(view)
        ingested = None
        if ingestion is not None:
            frame = engine.epoch_us(frame.filter(~nw.col(ingestion).is_null()), ingestion, _ING)
            ingested = nw.col(_ING)
        accepted = rule.accepts(nw.col(_TS), ingested)
        if accepted is not None:
            frame = frame.filter(accepted)
        if ingestion is not None:
            frame = frame.drop(*extra, _ING)
    return frame.with_columns((nw.col(_TS) // view.step_us).alias(_TILE))


def partial_kinds(view: FeatureViewConfig) -> dict[str, set[str]]:
    """Partial kinds each column needs (``*`` is the row count); batch and stream share it."""
    needs: dict[str, set[str]] = {"*": {"rows"}}
    for feature in view.features:
        column = feature.column or "*"
        kinds = {
            "count": {"count"} if feature.column else {"rows"},
            "sum": {"count", "sum"},
            "mean": {"count", "sum"},
            "stddev": {"count", "sum", "sq"},
            "min": {"count", "min"},
            "max": {"count", "max"},
            "last": {"count", "lts"},
        }[feature.agg]
        needs.setdefault(column, set()).update(kinds)
    return needs


def tile_partials(  # noqa: PLR0912 - one branch per partial kind
    events: nw.LazyFrame[Any], view: FeatureViewConfig
) -> nw.LazyFrame[Any]:
    """Partial aggregates per entity and tile (Dask-safe: every aggregation elementary)."""
    needs = partial_kinds(view)
    keys = [*view.entities, _TILE]
    helpers = []
    for column, kinds in needs.items():
        if column == "*":
            continue
        if "sq" in kinds:
            helpers.append((nw.col(column) * nw.col(column)).alias(f"_tf_x2__{column}"))
        if "lts" in kinds:
            present = ~nw.col(column).is_null()
            helpers.append(nw.when(present).then(nw.col(_TS)).alias(f"_tf_xts__{column}"))
    source = events.with_columns(*helpers) if helpers else events
    # Aggregations stay elementary (Dask needs that); casts come after.
    aggs = [nw.len().alias(_part("rows", None))]
    counts = [_part("rows", None)]
    for column, kinds in needs.items():
        if column == "*":
            continue
        if "count" in kinds:
            aggs.append(nw.col(column).count().alias(_part("count", column)))
            counts.append(_part("count", column))
        if "sum" in kinds:
            aggs.append(nw.col(column).sum().alias(_part("sum", column)))
        if "sq" in kinds:
            aggs.append(nw.col(f"_tf_x2__{column}").sum().alias(_part("sq", column)))
        if "min" in kinds:
            aggs.append(nw.col(column).min().alias(_part("min", column)))
        if "max" in kinds:
            aggs.append(nw.col(column).max().alias(_part("max", column)))
        if "lts" in kinds:
            aggs.append(nw.col(f"_tf_xts__{column}").max().alias(_part("lts", column)))
    partials = source.group_by(*keys).agg(*aggs)
    partials = partials.with_columns(*[nw.col(c).cast(nw.Int64) for c in counts])
    for column, kinds in needs.items():
        if "lts" in kinds:
            partials = _attach_last_value(partials, source, view, column)
    return partials


def _attach_last_value(
    partials: nw.LazyFrame[Any], events: nw.LazyFrame[Any], view: FeatureViewConfig, column: str
) -> nw.LazyFrame[Any]:
    lts = _part("lts", column)
    keys = [*view.entities, _TILE]
    latest = (
        events.filter(~nw.col(column).is_null())
        .select(*keys, nw.col(_TS).alias(lts), nw.col(column))
        .join(partials.select(*keys, lts), on=[*keys, lts], how="inner")
        .group_by(*keys)
        .agg(nw.col(column).max().alias(_part("lval", column)))
    )
    return partials.join(latest, on=keys, how="left")


def window_rows(
    events: nw.LazyFrame[Any], view: FeatureViewConfig, engine: Engine
) -> nw.LazyFrame[Any]:
    """Feature values at every window end where some value of the view changes.

    An entity's values depend on its own events only: the engine runs
    :func:`entity_windows` on the tile partials of groups of whole entities
    (:meth:`Engine.by_entity`).
    """
    return _windows(_events_only(events, view), view, engine)


def _windows(
    rows: nw.LazyFrame[Any], view: FeatureViewConfig, engine: Engine, at_tile: int | None = None
) -> nw.LazyFrame[Any]:
    """:func:`_entity_values` of the tile partials (:func:`_tiles`) of the rows' events.

    The partials are :meth:`Engine.by_entity`'s ``reduce``: a cluster computes them
    before moving rows (a hot key arrives as at most a row per tile and source
    partition; Dask merges those after the move with :func:`combine_partials`), the
    single-node tier per bucket of entities (a group-by over every event would hold a
    row per entity and tile in memory at once: 9 GiB for 100 M events).
    """
    return engine.by_entity(
        rows,
        view.entities,
        partial(_entity_values, view=view, at_tile=at_tile),
        reduce=Reduction(partial(_tiles, view=view), partial(_combine_tiles, view=view)),
    )


def _events_only(events: nw.LazyFrame[Any], view: FeatureViewConfig) -> nw.LazyFrame[Any]:
    """The prepared events without what the partials do not read (the raw event time)."""
    if view.event_time in _columns_used(view):
        return events
    return events.drop(view.event_time)


def _tiles(rows: nw.LazyFrame[Any], *, view: FeatureViewConfig) -> nw.LazyFrame[Any]:
    """Tile partials of the events among ``rows``; probe rows (``_tf_probe_e``) kept."""
    return _probes_kept(rows, view, tile_partials)


def _probes_kept(
    rows: nw.LazyFrame[Any],
    view: FeatureViewConfig,
    step: Callable[[nw.LazyFrame[Any], FeatureViewConfig], nw.LazyFrame[Any]],
) -> nw.LazyFrame[Any]:
    """``step`` of the rows that are not probes; the probe rows appended as they were."""
    if PROBE not in rows.collect_schema().names():
        return step(rows, view)
    keys = list(view.entities)
    probes = rows.filter(nw.col(PROBE) != _NO_TIME).select(*keys, PROBE)
    others = rows.filter(nw.col(PROBE) == _NO_TIME).drop(PROBE)
    return _with_probes(step(others, view), probes, view)


def combine_partials(partials: nw.LazyFrame[Any], view: FeatureViewConfig) -> nw.LazyFrame[Any]:
    """Tile partials of an entity and tile computed apart, merged into those of all its events.

    A cluster computes partials per group of events (a source partition) before moving
    them: counts and sums add up, extremes and the latest time take theirs, and the last
    value is the one at the latest time (the largest where several share it, as
    :func:`tile_partials` picks).
    """
    keys = [*view.entities, _TILE]
    aggs = [nw.col(_part("rows", None)).sum()]
    lasts = []
    for column, kinds in partial_kinds(view).items():
        if column == "*":
            continue
        for kind in sorted(kinds):
            name = _part(kind, column)
            if kind in ("count", "sum", "sq"):
                aggs.append(nw.col(name).sum())
            elif kind in ("min", "max", "lts"):
                aggs.append(getattr(nw.col(name), "max" if kind == "lts" else kind)())
        if "lts" in kinds:
            lasts.append(column)
    merged = partials.group_by(*keys).agg(*aggs)
    for column in lasts:
        lts, lval = _part("lts", column), _part("lval", column)
        latest = (
            partials.filter(~nw.col(lts).is_null())
            .join(merged.select(*keys, lts), on=[*keys, lts], how="inner")
            .group_by(*keys)
            .agg(nw.col(lval).max())
        )
        merged = merged.join(latest, on=keys, how="left")
    return merged.select(*partials.collect_schema().names())


def _combine_tiles(rows: nw.LazyFrame[Any], *, view: FeatureViewConfig) -> nw.LazyFrame[Any]:
    """:func:`combine_partials` of :func:`_tiles`' output; probe rows kept as they are."""
    return _probes_kept(rows, view, combine_partials)


def _entity_values(
    partials: nw.LazyFrame[Any],
    engine: Engine,
    *,
    view: FeatureViewConfig,
    at_tile: int | None = None,
) -> nw.LazyFrame[Any]:
    """:func:`entity_windows`, or with ``at_tile``, each entity's values at that grid point.

    With ``at_tile`` every entity of the partials is a probe there, read from its tiles
    before it (:func:`latest_values`).
    """
    if at_tile is None:
        return entity_windows(partials, engine, view=view)
    keys = list(view.entities)
    last_tile = "_tf_last_tile"
    partials = partials.filter(nw.col(_TILE) < at_tile)
    latest = partials.group_by(*keys).agg(nw.col(_TILE).max().alias(last_tile))
    at = latest.select(*keys, nw.lit(at_tile, nw.Int64).alias(PROBE))
    values = entity_windows(_with_probes(partials, at, view), engine, view=view)
    emptied = (nw.col(last_tile) + 1 + view.max_tiles) * view.step_us
    window_end = nw.when(nw.col(HOLDS)).then(nw.col(WINDOW_END)).otherwise(emptied)
    return (
        values.join(latest, on=keys, how="inner")
        .with_columns(window_end.alias(WINDOW_END))
        .drop(HOLDS, last_tile)
    )


def entity_windows(
    partials: nw.LazyFrame[Any], engine: Engine, *, view: FeatureViewConfig
) -> nw.LazyFrame[Any]:
    """:func:`window_rows` of the tile partials of some whole entities.

    A window of ``w`` steps ending at ``E`` holds the tiles ``E - w .. E - 1``, so values
    change only where a tile enters (``E = tile + 1``) or leaves (``E = tile + 1 + w``)
    some window; between two such ends they are constant, and consumers read the latest
    row at or before a time. Those ends are *probes*: rows at position ``E - 1`` among
    the tiles, sorted by entity and position, and every window is read at every probe by
    one sliding pass per measure over that order (Polars' rolling kernels over an integer
    key: sums add what enters and subtract what leaves, extremes keep a monotone queue).
    The cost is that of the tiles and probes, never a tile times every window it reaches:

    - ``count``, ``sum``, ``mean``, ``stddev``: rolling sums of the partials;
    - ``last``: the latest non-null event time in the window (a rolling maximum), then
      its value;
    - ``min``, ``max``: a rolling extreme of the partials (other than numbers, by blocks:
      :func:`_window_extreme`).

    The key is the position offset by the entity's rank times a stride wider than every
    window, so a pass runs over the whole frame and never reaches across two entities:
    a pass per entity (``over``) costs a group per entity, and most entities hold a
    handful of tiles.

    The row at the end of an entity's last window has every window empty, and
    ``_tf_holds`` (events in the longest window) is 0 there: :func:`values_as_of` needs
    it to tell "empty since" from "unchanged since".

    Where column ``_tf_probe_e`` is there, rows with a window end in it are the probes
    (their partials are not read) and the others, with ``_NO_TIME``, tiles: then the
    result has the values at those window ends only (a point-in-time lookup needs no
    other).

    Runs on Polars: :meth:`Engine.by_entity` hands it a Polars frame on every tier.
    """
    import polars as pl

    del engine
    keys = list(view.entities)
    sizes = sorted({view.window_tiles(f) for f in view.features})
    measures = _measures(view)
    lasts: dict[str, int] = {}
    for f in view.features:
        if f.agg == "last" and f.column:
            lasts[f.column] = max(lasts.get(f.column, 0), view.window_tiles(f))
    native = partials.to_native()
    if PROBE in native.collect_schema().names():
        tiles = native.filter(pl.col(PROBE) == _NO_TIME).drop(PROBE)
        ends = native.filter(pl.col(PROBE) != _NO_TIME).select(*keys, pl.col(PROBE).alias(_E))
    else:
        tiles = native
        ends = pl.concat(
            [tiles.select(*keys, (pl.col(_TILE) + 1 + j).alias(_E)) for j in [0, *sizes]]
        ).unique()
    pos, probe, key = "_tf_pos", "_tf_probe", "_tf_rkey"
    union = pl.concat(
        [
            tiles.with_columns(pl.col(_TILE).alias(pos), pl.lit(0, pl.Int8).alias(probe)),
            ends.with_columns((pl.col(_E) - 1).alias(pos), pl.lit(1, pl.Int8).alias(probe)),
        ],
        how="diagonal",
    )
    # Sorted once, in memory (a bucket of entities), and read by every pass below.
    rows = union.sort([*keys, pos, probe]).collect()
    lo, hi = rows.select(pl.col(pos).min().alias("lo"), pl.col(pos).max().alias("hi")).row(0)
    lo, hi = (lo, hi) if lo is not None else (0, 0)  # no rows
    stride = hi - lo + sizes[-1] + 1
    entity = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])
    rank = entity.fill_null(True).cum_sum().cast(pl.Int64)
    frame = rows.lazy().with_columns((rank * stride + pl.col(pos) - lo).alias(key))

    def rolling(column: str, op: str, size: int) -> pl.Expr:
        window: pl.Expr = getattr(pl.col(column), f"rolling_{op}_by")(key, window_size=f"{size}i")
        return window

    columns = [
        rolling(_part(kind, column), "sum", size).fill_null(0).alias(name)
        for name, (kind, column, size) in measures.items()
    ]
    columns += [rolling(_part("lts", c), "max", size).alias(_lts(c)) for c, size in lasts.items()]
    extremes = _extremes(view)
    numeric = {
        (kind, column, size)
        for kind, column, size in extremes
        if rows.schema[_part(kind, column)].is_numeric()
    }
    columns += [
        rolling(_part(kind, column), kind, size).alias(_extreme_name(kind, column, size))
        for kind, column, size in extremes
        if (kind, column, size) in numeric
    ]
    frame = frame.with_columns(columns).filter(pl.col(probe) == 1)
    out: nw.LazyFrame[Any] = nw.from_native(
        frame.select(*keys, _E, *[c.meta.output_name() for c in columns])
    )
    for column in lasts:
        # The tiles from the sorted rows already in memory, not a second read of the input.
        latest = (
            nw.from_native(rows.lazy())
            .filter((nw.col(probe) == 0) & ~nw.col(_part("lts", column)).is_null())
            .select(
                *keys,
                nw.col(_part("lts", column)).alias(_lts(column)),
                nw.col(_part("lval", column)).alias(_lval(column)),
            )
        )
        out = out.join(latest, on=[*keys, _lts(column)], how="left")
    points = out.select(*keys, _E)
    for kind, column, size in extremes:
        if (kind, column, size) not in numeric:
            extreme = _window_extreme(points, nw.from_native(tiles), view, kind, column, size)
            out = out.join(extreme, on=[*keys, _E], how="left")
    values = [_finish(view, f).alias(f.name) for f in view.features]
    holds = nw.col(_measure_name("rows", None, sizes[-1])) > 0
    return out.select(
        *keys, (nw.col(_E) * view.step_us).alias(WINDOW_END), *values, holds.alias(HOLDS)
    )


HOLDS = "_tf_holds"
PROBE = "_tf_probe_e"


def _running(
    frame: nw.LazyFrame[Any],
    partition_by: Sequence[str],
    order_by: Sequence[str],
    ops: dict[str, tuple[str, str]],
) -> nw.LazyFrame[Any]:
    """Add running aggregates within groups, in order: ``{name: (op, column)}``.

    ``op`` is ``sum``, ``min`` or ``max`` (running, nulls skipped: a null row stays null;
    ``min_rev``, ``max_rev`` run from the end) or ``ffill``/``bfill`` (a null takes the
    previous/next non-null value of its group). The order must
    be total within a group, or ties must not matter. Narwhals' ordered window functions
    (Polars: :meth:`Engine.by_entity` runs the window code on Polars on every tier).
    """
    exprs = []
    for name, (op, column) in ops.items():
        expr = nw.col(column)
        if op in ("ffill", "bfill"):
            expr = expr.fill_null(strategy="forward" if op == "ffill" else "backward")
        else:
            reverse = op.endswith("_rev")
            running = {"sum": expr.cum_sum, "min": expr.cum_min, "max": expr.cum_max}
            expr = running[op.removesuffix("_rev")](reverse=reverse)
        exprs.append(expr.over(*partition_by, order_by=list(order_by)).alias(name))
    return frame.with_columns(*exprs)


_NO_TIME = -(2**62)  # before every event time: "no value yet" in a running maximum


def _lts(column: str) -> str:
    return f"_tf_wlts__{column}"


def _lval(column: str) -> str:
    return f"_tf_wlval__{column}"


def _measure_name(kind: str, column: str | None, size: int) -> str:
    return f"_tf_m_{kind}__{column or '*'}__{size}"


def _measures(view: FeatureViewConfig) -> dict[str, tuple[str, str | None, int]]:
    """The running sums a view needs: (kind, column, window length), by column name.

    Row counts over the longest window are always kept: they say whether an entity's
    windows are all empty.
    """
    out: dict[str, tuple[str, str | None, int]] = {}
    longest = view.max_tiles
    out[_measure_name("rows", None, longest)] = ("rows", None, longest)
    for feature in view.features:
        size = view.window_tiles(feature)
        for kind in _kinds(feature):
            if kind in ("rows", "count", "sum", "sq"):
                column = None if kind == "rows" else feature.column
                out[_measure_name(kind, column, size)] = (kind, column, size)
    return out


def _extremes(view: FeatureViewConfig) -> list[tuple[str, str, int]]:
    """Each distinct (min or max, column, window length) of the view."""
    return list(
        dict.fromkeys(
            (f.agg, f.column, view.window_tiles(f))
            for f in view.features
            if f.agg in ("min", "max") and f.column is not None
        )
    )


def _extreme_name(kind: str, column: str, size: int) -> str:
    return f"_tf_x_{kind}__{column}__{size}"


def _window_extreme(
    ends: nw.LazyFrame[Any],
    partials: nw.LazyFrame[Any],
    view: FeatureViewConfig,
    kind: str,
    column: str,
    size: int,
) -> nw.LazyFrame[Any]:
    """The smallest or largest value in each window of ``size`` steps ending at ``E``.

    Blocks of ``size`` steps: the window ``[E - size, E - 1]`` is the part of block
    ``(E - 1) // size`` up to ``E - 1`` (a running extreme in time order), plus, unless
    it starts a block, the part of the block before from ``E - size`` on (a running
    extreme in reverse time order). Probe rows, one per window end, read both.
    """
    keys = list(view.entities)
    value = _part(kind, column)
    pos, probe, block, v = "_tf_pos", "_tf_probe", "_tf_block", "_tf_v"
    dtype = partials.collect_schema()[value]
    numeric = dtype.is_numeric()
    # Probes carry no value. For numbers, one that changes no running extreme (+-inf), so
    # the running passes read them; other types need a fill after them.
    blank = nw.lit(float("inf") if kind == "min" else float("-inf"), dtype) if numeric else None
    tiles = partials.select(
        *keys,
        nw.col(_TILE).alias(pos),
        nw.lit(0, nw.Int64).alias(_E),
        nw.lit(0, nw.Int64).alias(probe),
        nw.col(value).alias(v),
    )
    # Probe 1 reads the part up to E - 1 (after the tile there, in the order below);
    # probe -1 the part from E - size (before the tile there, read from the end).
    probes = [
        ends.select(
            *keys,
            (nw.col(_E) - offset).alias(pos),
            nw.col(_E),
            nw.lit(number, nw.Int64).alias(probe),
            (blank if blank is not None else nw.lit(None, dtype)).alias(v),
        )
        for number, offset in ((1, 1), (-1, size))
    ]
    union = nw.concat([tiles, *probes], how="vertical").with_columns(
        (nw.col(pos) // size).alias(block)
    )
    running = "min" if kind == "min" else "max"
    group, order = [*keys, block], [pos, probe]
    union = _running(
        union, group, order, {"_tf_up": (running, v), "_tf_down": (f"{running}_rev", v)}
    )
    if blank is None:
        union = _running(
            union, group, order, {"_tf_up": ("ffill", "_tf_up"), "_tf_down": ("bfill", "_tf_down")}
        )
    up = union.filter(nw.col(probe) == 1).select(*keys, _E, "_tf_up")
    # A window that starts a block lies in that one block: it has no part before.
    aligned = (nw.col(pos) // size) * size == nw.col(pos)
    down = union.filter((nw.col(probe) == -1) & ~aligned).select(*keys, _E, "_tf_down")
    u, d = nw.col("_tf_up"), nw.col("_tf_down")
    better = ((d < u) if kind == "min" else (d > u)).fill_null(False)
    both = nw.when(u.is_null()).then(d).otherwise(nw.when(better).then(d).otherwise(u))
    return up.join(down, on=[*keys, _E], how="left").select(
        *keys, _E, both.alias(_extreme_name(kind, column, size))
    )


def _kinds(feature: FeatureSpec) -> list[str]:
    return {
        "count": ["count"] if feature.column else ["rows"],
        "sum": ["count", "sum"],
        "mean": ["count", "sum"],
        "stddev": ["count", "sum", "sq"],
        "min": ["count", "min"],
        "max": ["count", "max"],
        "last": ["count", "lts"],
    }[feature.agg]


def _finish(view: FeatureViewConfig, feature: FeatureSpec) -> Any:
    size = view.window_tiles(feature)

    def c(kind: str) -> Any:
        return nw.col(_measure_name(kind, None if kind == "rows" else feature.column, size))

    if feature.agg == "count":
        return (c("count") if feature.column else c("rows")).cast(nw.Int64)
    has = c("count") > 0
    if feature.agg == "sum":
        return nw.when(has).then(c("sum"))
    if feature.agg == "mean":
        return nw.when(has).then(c("sum") / c("count"))
    if feature.agg in ("min", "max"):
        assert feature.column is not None
        return nw.when(has).then(nw.col(_extreme_name(feature.agg, feature.column, size)))
    if feature.agg == "last":
        # A non-null value in the window makes the latest one before E lie inside it.
        assert feature.column is not None
        return nw.when(has).then(nw.col(_lval(feature.column)))
    variance = (c("sq") - c("sum") * c("sum") / c("count")) / (c("count") - 1)
    return nw.when(c("count") > 1).then(variance.clip(lower_bound=0) ** 0.5)


def feature_rows(
    frame: nw.LazyFrame[Any], view: FeatureViewConfig, engine: Engine
) -> nw.LazyFrame[Any]:
    """From source rows to window rows: the whole batch computation of a view."""
    return window_rows(prepare_events(frame, view, engine), view, engine)


def values_as_of(
    rows: nw.LazyFrame[Any], view: FeatureViewConfig, as_of_us: int
) -> nw.LazyFrame[Any]:
    """Each entity's values at the latest grid point at or before ``as_of_us``.

    ``window_end_us`` is that grid point, or the end of the entity's last window where
    every window has been empty since (what the stream writes too).
    """
    limit = (as_of_us // view.step_us) * view.step_us
    eligible = rows.filter(nw.col(WINDOW_END) <= limit)
    latest = eligible.group_by(*view.entities).agg(nw.col(WINDOW_END).max().alias("_tf_latest"))
    joined = eligible.join(latest, on=list(view.entities), how="inner")
    picked = joined.filter(nw.col(WINDOW_END) == nw.col("_tf_latest")).drop("_tf_latest")
    end = nw.when(nw.col(HOLDS)).then(nw.lit(limit, nw.Int64)).otherwise(nw.col(WINDOW_END))
    return picked.with_columns(end.alias(WINDOW_END)).drop(HOLDS)


def latest_values(
    events: nw.LazyFrame[Any], view: FeatureViewConfig, engine: Engine, as_of_us: int
) -> nw.LazyFrame[Any]:
    """:func:`values_as_of` of :func:`feature_rows`, computed at one window end per entity.

    Every entity with a tile before the grid point at or before ``as_of_us`` is a probe
    at that grid point (tiles from it on are not read): the cost is the tiles' once,
    not every window end of every entity. Where every window is empty there,
    ``window_end_us`` is where the last one emptied (the end of the entity's last tile
    plus the longest window), as :func:`values_as_of` gives it.
    """
    at_tile = as_of_us // view.step_us
    events = _events_only(prepare_events(events, view, engine), view)
    events = events.filter(nw.col(_TILE) < at_tile)
    return _windows(events, view, engine, at_tile)


def point_in_time(
    labels: nw.LazyFrame[Any],
    timestamp: str,
    views: Sequence[tuple[FeatureViewConfig, dict[str, str], nw.LazyFrame[Any]]],
    engine: Engine,
) -> nw.LazyFrame[Any]:
    """Join each label row with every view's values at the label's time, never later.

    Per view, each distinct (entity, grid point at or before a label's time) is a probe
    among the view's tile partials, and the window values are computed at the probes
    only, per group of whole entities (:meth:`Engine.by_entity`): the cost follows the
    tiles and the labels, never every window end of every entity.

    Args:
        labels: Rows with entity keys, a timestamp and whatever else (labels, ids).
        timestamp: The labels' time column.
        views: (view, {view entity: label column}, the view's source rows).
        engine: The engine.
    """
    base = engine.epoch_us(labels, timestamp, _TS)
    base = base.with_columns(
        *[
            ((nw.col(_TS) // view.step_us) * view.step_us).alias(f"_tf_end__{view.name}")
            for view, _keys, _events in views
        ]
    )
    out = base
    for view, keys, events in views:
        end = f"_tf_end__{view.name}"
        named = [f"_tf_key__{view.name}__{e}" for e in view.entities]
        prepared = _events_only(prepare_events(events, view, engine), view)
        probed = _with_probes(prepared, _label_probes(prepared, base, view, keys, end), view)
        values = _windows(probed, view, engine)
        values = values.select(
            *[nw.col(e).alias(n) for e, n in zip(view.entities, named, strict=True)],
            nw.col(WINDOW_END).alias(end),
            *[nw.col(f.name).alias(view.column_name(f)) for f in view.features],
        )
        left_on = [keys.get(e, e) for e in view.entities] + [end]
        out = out.join(values, left_on=left_on, right_on=[*named, end], how="left")
        defaults = [
            nw.col(view.column_name(f)).fill_null(0).cast(nw.Int64)
            for f in view.features
            if f.agg == "count"
        ]
        names = out.collect_schema().names()
        out = out.drop(end, *[c for c in named if c in names])
        if defaults:
            out = out.with_columns(*defaults)
    return out.drop(_TS)


def _label_probes(
    events: nw.LazyFrame[Any],
    labels: nw.LazyFrame[Any],
    view: FeatureViewConfig,
    keys: dict[str, str],
    end: str,
) -> nw.LazyFrame[Any]:
    """One probe per distinct entity and grid point of the labels, keys typed as events'."""
    schema = events.collect_schema()
    given = labels.collect_schema()

    def key(entity: str) -> Any:
        column = nw.col(keys.get(entity, entity))
        # Cast only where the types differ: a cast to the same type is not free on
        # every engine (Dask's "string" is not its Arrow-backed string).
        same = given[keys.get(entity, entity)] == schema[entity]
        return (column if same else column.cast(schema[entity])).alias(entity)

    return labels.select(
        *[key(e) for e in view.entities], (nw.col(end) // view.step_us).alias(PROBE)
    ).unique()


def _with_probes(
    frame: nw.LazyFrame[Any], probes: nw.LazyFrame[Any], view: FeatureViewConfig
) -> nw.LazyFrame[Any]:
    """The frame's rows and, below them, the probes (entity keys and ``_tf_probe_e``)."""
    schema = frame.collect_schema()
    # A probe's other columns are never read; zeros where a null would not fit the
    # type (Dask's integer columns hold no null).
    filled = probes.select(
        *[
            nw.col(c) if c in view.entities else nw.lit(0 if t.is_integer() else None, t).alias(c)
            for c, t in schema.items()
        ],
        PROBE,
    )
    tagged = frame.with_columns(nw.lit(_NO_TIME, nw.Int64).alias(PROBE))
    return nw.concat([tagged, filled], how="vertical")
