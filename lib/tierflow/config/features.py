"""Feature views (``conf/features/*.yaml``) and training sets (``conf/training_sets/*.yaml``).

A feature view is declared once and computed identically in batch (from its table) and
in the streaming daemons (from its Kafka topic). Window semantics are in
:mod:`tierflow.features.windows`.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tierflow.config.jobs import ColumnContract, Identifier
from tierflow.config.loader import FrozenModel

Aggregation = Literal["count", "sum", "mean", "min", "max", "last", "stddev"]
_DURATION = re.compile(r"^(\d+)(us|ms|s|m|h|d)$")
_UNIT_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}
NUMERIC_AGGS = ("sum", "mean", "stddev")


def duration_us(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` in microseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 1h, 7d)")
    return int(match.group(1)) * _UNIT_US[match.group(2)]


Duration = Annotated[str, Field(pattern=_DURATION.pattern)]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_SKEW_US = 36_525 * 86_400_000_000  # a hundred years: keeps the arithmetic in int64


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def _epoch_us(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp loses microseconds far from the epoch.
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class FeatureSpec(FrozenModel):
    """One feature: an aggregation of a column over a window ending on the view's grid."""

    name: Identifier
    agg: Aggregation
    column: Identifier | None = None
    window: Duration | None = None

    @model_validator(mode="after")
    def _column_needed(self) -> FeatureSpec:
        if self.agg != "count" and self.column is None:
            raise ValueError(f"aggregation {self.agg} needs a column")
        return self


class FeatureSource(FrozenModel):
    """Where the view's events are: a table for batch, a topic for the stream."""

    format: Literal["delta", "parquet"]
    path: Annotated[str, Field(min_length=1)]
    version: Annotated[int, Field(ge=0)] | None = None
    topic: str | None = None
    columns: dict[Identifier, ColumnContract] = Field(min_length=1)
    # A timestamp column of the table holding when each row was ingested (the event
    # log's ``_kafka_timestamp``): batch then applies ``max_event_time_skew`` as the
    # stream does against the record's Kafka timestamp. It need not be a payload column.
    ingestion_time: Identifier | None = None
    # How the topic's messages are keyed: ``json-list`` (the JSON list of the entity's
    # values, ``["JFK","LAX"]``), ``string`` (the plain value of a one-column entity,
    # ``JFK``), or ``from-value`` (the key is ignored and the entity read from the
    # payload; the topic must then have one partition, see docs/streaming.md).
    key_format: Literal["json-list", "string", "from-value"] = "json-list"

    @model_validator(mode="after")
    def _ingestion_time_is_a_timestamp(self) -> FeatureSource:
        declared = self.columns.get(self.ingestion_time or "")
        if declared is not None and declared.type != "timestamp":
            raise ValueError(f"ingestion_time {self.ingestion_time!r} must be a timestamp column")
        return self


class FeatureViewConfig(FrozenModel):
    """A feature view: entities, event time, source, filter, derived columns, features.

    Features are computed on windows that end on the view's grid (``step``).
    """

    name: Identifier
    description: str = ""
    entities: tuple[Identifier, ...] = Field(min_length=1)
    event_time: Identifier
    source: FeatureSource
    filter: str | None = None
    derived: dict[Identifier, str] = Field(default_factory=dict)
    step: Duration
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    ttl: Duration
    allowed_lateness: Duration = "0s"
    # An event more than this far ahead of its ingestion time (the record's Kafka
    # timestamp) is poison: a clock or a producer gone wrong, not a future to wait for.
    max_event_time_skew: Duration = "1h"
    # Explicit bounds every event time must lie within (either may be left out).
    event_time_bounds: tuple[datetime | None, datetime | None] = (None, None)

    @field_validator("features")
    @classmethod
    def _unique_names(cls, value: tuple[FeatureSpec, ...]) -> tuple[FeatureSpec, ...]:
        names = [f.name for f in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names must be unique: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeatureViewConfig:
        columns = self.source.columns
        known = set(columns) | set(self.derived)
        for entity in self.entities:
            if entity not in columns:
                raise ValueError(f"entity {entity!r} is not a source column ({', '.join(columns)})")
            if columns[entity].type not in ("string", "int32", "int64"):
                raise ValueError(f"entity {entity!r} must be a string or integer column")
        if self.source.key_format == "string" and len(self.entities) != 1:
            raise ValueError(
                f"key_format string needs a one-column entity, not {', '.join(self.entities)} "
                "(use json-list)"
            )
        if self.event_time not in columns:
            raise ValueError(f"event_time {self.event_time!r} is not a source column")
        if columns[self.event_time].type != "timestamp":
            raise ValueError(f"event_time {self.event_time!r} must be a timestamp column")
        clash = set(self.derived) & set(columns)
        if clash:
            raise ValueError(f"derived columns shadow source columns: {', '.join(sorted(clash))}")
        step = duration_us(self.step)
        for feature in self.features:
            if feature.column is not None and feature.column not in known:
                raise ValueError(
                    f"feature {feature.name!r}: unknown column {feature.column!r} "
                    f"(known: {', '.join(sorted(known))})"
                )
            if (
                feature.agg in NUMERIC_AGGS
                and feature.column in columns
                and columns[feature.column].type in ("string", "date", "timestamp")
            ):
                raise ValueError(
                    f"feature {feature.name!r}: {feature.agg} needs a numeric column, "
                    f"{feature.column!r} is {columns[feature.column].type}"
                )
            size = duration_us(feature.window or self.step)
            if size < step or size % step:
                raise ValueError(
                    f"feature {feature.name!r}: window {feature.window} must be a whole "
                    f"multiple of step {self.step}"
                )
        return self

    @model_validator(mode="after")
    def _event_time_rule(self) -> FeatureViewConfig:
        if duration_us(self.max_event_time_skew) > _MAX_SKEW_US:
            raise ValueError(
                f"max_event_time_skew {self.max_event_time_skew} is over 100 years: bound "
                "event times with event_time_bounds instead"
            )
        low, high = (_utc(b) for b in self.event_time_bounds)
        if low is not None and high is not None and low > high:
            raise ValueError(f"event_time_bounds: {low.isoformat()} is after {high.isoformat()}")
        return self

    @property
    def step_us(self) -> int:
        """The window grid in microseconds."""
        return duration_us(self.step)

    @property
    def max_skew_us(self) -> int:
        """``max_event_time_skew`` in microseconds."""
        return duration_us(self.max_event_time_skew)

    @property
    def event_time_bounds_us(self) -> tuple[int | None, int | None]:
        """``event_time_bounds`` as epoch microseconds (UTC where no zone is given)."""
        low, high = (_utc(b) for b in self.event_time_bounds)
        return (None if low is None else _epoch_us(low), None if high is None else _epoch_us(high))

    @property
    def ttl_us(self) -> int:
        """How long an online value stays valid after its window ended."""
        return duration_us(self.ttl)

    def window_tiles(self, feature: FeatureSpec) -> int:
        """How many steps the feature's window spans."""
        return duration_us(feature.window or self.step) // self.step_us

    @property
    def max_tiles(self) -> int:
        """The longest window of the view, in steps."""
        return max(self.window_tiles(f) for f in self.features)

    def column_name(self, feature: FeatureSpec) -> str:
        """The feature's column in training sets and online reads: ``view__feature``."""
        return f"{self.name}__{feature.name}"


class ViewJoin(FrozenModel):
    """A view in a training set, and which label columns hold its entity keys."""

    view: Identifier
    keys: dict[Identifier, Identifier] = Field(default_factory=dict)


class TrainingSetConfig(FrozenModel):
    """Labels joined point-in-time-correctly with feature views, written as a Delta snapshot."""

    name: Identifier
    description: str = ""
    labels: FeatureSource
    timestamp: Identifier
    views: tuple[ViewJoin, ...] = Field(min_length=1)
    path: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _labels_have_time(self) -> TrainingSetConfig:
        columns = self.labels.columns
        if self.timestamp not in columns or columns[self.timestamp].type != "timestamp":
            raise ValueError(
                f"timestamp {self.timestamp!r} must be a timestamp column of the labels"
            )
        return self
