"""The split step: a ``split`` column of train/valid/test, identical on every engine.

Random splits hash the key columns with the seed (:func:`tierflow.engines.base.split_hash`,
MD5-based and implemented natively by each engine), so a row's split depends only on its
key and the seed: the same on every tier, every run, and when rows are added. Time splits
compare the event time with the two cut-offs: train before ``valid_from``, valid before
``test_from``, test from then on.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

import narwhals as nw

from tierflow.config.jobs import RandomSplit, TimeSplit
from tierflow.engines.base import Engine
from tierflow.errors import ConfigError

_HASH = "_tf_split_hash"


def _three_way(is_train: Any, is_valid: Any) -> Any:
    inner = nw.when(is_valid).then(nw.lit("valid")).otherwise(nw.lit("test"))
    return nw.when(is_train).then(nw.lit("train")).otherwise(inner)


def add_split(
    frame: nw.LazyFrame[Any], split: RandomSplit | TimeSplit, engine: Engine
) -> nw.LazyFrame[Any]:
    """Add the split column as ``split`` says."""
    schema = frame.collect_schema()
    if isinstance(split, TimeSplit):
        if split.time_column not in schema:
            raise ConfigError(f"split.time_column {split.time_column!r} is not an output column")
        column = nw.col(split.time_column)
        valid_from = (
            split.valid_from
            if split.valid_from.tzinfo
            else split.valid_from.replace(tzinfo=timezone.utc)
        )
        test_from = (
            split.test_from
            if split.test_from.tzinfo
            else split.test_from.replace(tzinfo=timezone.utc)
        )
        dtype = schema[split.time_column]
        if dtype == nw.Date:
            low, high = nw.lit(valid_from.date()), nw.lit(test_from.date())
        else:
            low = nw.lit(valid_from.astimezone(timezone.utc))
            high = nw.lit(test_from.astimezone(timezone.utc))
        label = _three_way(column < low, column < high)
        return frame.with_columns(label.alias(split.column))
    missing = [k for k in split.key if k not in schema]
    if missing:
        raise ConfigError(f"split.key column(s) {', '.join(missing)} are not output columns")
    for key in split.key:
        dtype = schema[key]
        if not (dtype.is_integer() or dtype == nw.String):
            raise ConfigError(
                f"split.key column {key!r} is {dtype}; random splits need string or integer keys"
            )
    hashed = engine.add_split_hash(frame, split.key, split.seed, _HASH)
    train = split.fractions.get("train", 0.0)
    valid = train + split.fractions.get("valid", 0.0)
    label = _three_way(nw.col(_HASH) < train, nw.col(_HASH) < valid)
    return hashed.with_columns(label.alias(split.column)).drop(_HASH)
