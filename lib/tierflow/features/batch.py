"""Feature views in batch, on any engine: tiles, windows, values as of a time, training sets.

The computation follows :mod:`tierflow.features.windows` with Narwhals expressions only:

1. events: the source rows, filtered, with derived columns and their tile
   ``floor(ts / step)``;
2. tile partials per entity and tile: rows, non-null counts, sums, sums of squares, min,
   max, and the time and value of the last event (per column);
3. window rows: every tile contributes to the windows ending at the next ``max_tiles + 1``
   grid points (the last of them has every window empty, so a value "goes empty"
   exactly when the stream would say so); a feature takes the tiles within its own
   window; partials combine into values.

The result has one row per entity and window end (``window_end_us``, epoch
microseconds) at which some window of the view holds an event, plus the one "empty"
row after; any other grid point has the value of the latest row before it, which is
how online stores and the point-in-time join read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import narwhals as nw
import pyarrow as pa

from tierflow.config.features import FeatureSpec, FeatureViewConfig
from tierflow.engines.base import Engine
from tierflow.errors import ConfigError
from tierflow.features.eventtime import EventTimeRule
from tierflow.jobs.expressions import to_expr

WINDOW_END = "window_end_us"
_TS = "_tf_ts_us"
_TILE = "_tf_tile"
_ING = "_tf_ingested_us"
_J = "_tf_j"
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
    partials: nw.LazyFrame[Any], view: FeatureViewConfig, engine: Engine
) -> nw.LazyFrame[Any]:
    """Feature values at every window end where the view has (or just lost) events."""
    offsets = engine.from_arrow(pa.table({_J: pa.array(range(view.max_tiles + 1), pa.int64())}))
    spread = partials.join(offsets, how="cross").with_columns(
        (nw.col(_TILE) + 1 + nw.col(_J)).alias(_E)
    )
    keys = [*view.entities, _E]
    masked = []
    aggs = []
    for i, feature in enumerate(view.features):
        inside = nw.col(_J) < view.window_tiles(feature)
        for kind in _kinds(feature):
            source = _part(kind, None if kind == "rows" else feature.column)
            name = f"_tf_f{i}_{kind}"
            if kind in ("rows", "count", "sum", "sq"):
                masked.append(nw.when(inside).then(nw.col(source)).otherwise(nw.lit(0)).alias(name))
                aggs.append(nw.col(name).sum().alias(name))
            else:
                masked.append(nw.when(inside).then(nw.col(source)).alias(name))
                aggs.append(
                    (nw.col(name).min() if kind == "min" else nw.col(name).max()).alias(name)
                )
    spread = spread.with_columns(*masked)
    combined = spread.group_by(*keys).agg(*aggs)
    for i, feature in enumerate(view.features):
        if feature.agg == "last":
            combined = _window_last_value(combined, spread, view, i, feature)
    values = [_finish(i, feature).alias(feature.name) for i, feature in enumerate(view.features)]
    return combined.select(*view.entities, (nw.col(_E) * view.step_us).alias(WINDOW_END), *values)


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


def _window_last_value(
    combined: nw.LazyFrame[Any],
    spread: nw.LazyFrame[Any],
    view: FeatureViewConfig,
    i: int,
    feature: FeatureSpec,
) -> nw.LazyFrame[Any]:
    keys = [*view.entities, _E]
    lts = f"_tf_f{i}_lts"
    value = _part("lval", feature.column)
    picked = (
        spread.filter(~nw.col(lts).is_null())
        .select(*keys, nw.col(lts), nw.col(value))
        .join(combined.select(*keys, lts), on=[*keys, lts], how="inner")
        .group_by(*keys)
        .agg(nw.col(value).max().alias(f"_tf_f{i}_lval"))
    )
    return combined.join(picked, on=keys, how="left")


def _finish(i: int, feature: FeatureSpec) -> Any:
    def c(kind: str) -> Any:
        return nw.col(f"_tf_f{i}_{kind}")

    if feature.agg == "count":
        return (c("count") if feature.column else c("rows")).cast(nw.Int64)
    has = c("count") > 0
    if feature.agg == "sum":
        return nw.when(has).then(c("sum"))
    if feature.agg == "mean":
        return nw.when(has).then(c("sum") / c("count"))
    if feature.agg in ("min", "max"):
        return c(feature.agg)
    if feature.agg == "last":
        return c("lval")
    variance = (c("sq") - c("sum") * c("sum") / c("count")) / (c("count") - 1)
    return nw.when(c("count") > 1).then(variance.clip(lower_bound=0) ** 0.5)


def feature_rows(
    frame: nw.LazyFrame[Any], view: FeatureViewConfig, engine: Engine
) -> nw.LazyFrame[Any]:
    """From source rows to window rows: the whole batch computation of a view."""
    events = prepare_events(frame, view, engine)
    return window_rows(tile_partials(events, view), view, engine)


def values_as_of(
    rows: nw.LazyFrame[Any], view: FeatureViewConfig, as_of_us: int
) -> nw.LazyFrame[Any]:
    """Each entity's values at the latest grid point at or before ``as_of_us``."""
    limit = (as_of_us // view.step_us) * view.step_us
    eligible = rows.filter(nw.col(WINDOW_END) <= limit)
    latest = eligible.group_by(*view.entities).agg(nw.col(WINDOW_END).max().alias("_tf_latest"))
    joined = eligible.join(latest, on=list(view.entities), how="inner")
    return joined.filter(nw.col(WINDOW_END) == nw.col("_tf_latest")).drop("_tf_latest")


def point_in_time(
    labels: nw.LazyFrame[Any],
    timestamp: str,
    views: Sequence[tuple[FeatureViewConfig, dict[str, str], nw.LazyFrame[Any]]],
    engine: Engine,
) -> nw.LazyFrame[Any]:
    """Join each label row with every view's values at the label's time, never later.

    Args:
        labels: Rows with entity keys, a timestamp and whatever else (labels, ids).
        timestamp: The labels' time column.
        views: (view, {view entity: label column}, window rows of the view).
        engine: The engine (for its epoch conversion).
    """
    out = engine.epoch_us(labels, timestamp, _TS)
    for view, keys, rows in views:
        end = f"_tf_end__{view.name}"
        out = out.with_columns(((nw.col(_TS) // view.step_us) * view.step_us).alias(end))
        renamed = rows.select(
            *[nw.col(e).alias(f"_tf_key__{view.name}__{e}") for e in view.entities],
            nw.col(WINDOW_END).alias(end),
            *[nw.col(f.name).alias(view.column_name(f)) for f in view.features],
        )
        left_on = [keys.get(e, e) for e in view.entities] + [end]
        right_on = [f"_tf_key__{view.name}__{e}" for e in view.entities] + [end]
        out = out.join(renamed, left_on=left_on, right_on=right_on, how="left")
        defaults = [
            nw.col(view.column_name(f)).fill_null(0).cast(nw.Int64)
            for f in view.features
            if f.agg == "count"
        ]
        drop = [end] + [c for c in right_on if c != end and c in out.collect_schema().names()]
        out = out.drop(*drop)
        if defaults:
            out = out.with_columns(*defaults)
    return out.drop(_TS)
