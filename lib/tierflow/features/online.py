"""Online reads: ``get_online_features(views, entity_rows)``, with request validation.

Every (view, entity) pair of a request is read in one call to the store (one pipelined
round trip on Redis). A missing or expired value reads as empty: ``count`` features 0,
the others null, the same as an empty window in batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tierflow.config.features import FeatureViewConfig
from tierflow.errors import UsageError
from tierflow.stores.base import OnlineStore


class FeatureRequestError(UsageError):
    """A malformed request (HTTP 400)."""

    status = 400


class UnknownViewError(FeatureRequestError):
    """A request names a view that does not exist (HTTP 404)."""

    status = 404


def _entity(
    key_types: Sequence[tuple[str, bool]], view: str, row: Mapping[str, Any], index: int
) -> tuple[Any, ...]:
    values = []
    for name, text in key_types:
        if name not in row:
            raise FeatureRequestError(f"entities[{index}]: missing key {name!r} of view {view}")
        value = row[name]
        if text and not isinstance(value, str):
            raise FeatureRequestError(
                f"entities[{index}].{name}: expected a string, got {type(value).__name__} {value!r}"
            )
        if not text and (isinstance(value, bool) or not isinstance(value, int)):
            got = f"{type(value).__name__} {value!r}"
            raise FeatureRequestError(f"entities[{index}].{name}: expected an integer, got {got}")
        values.append(value)
    return tuple(values)


def _key_types(view: FeatureViewConfig) -> list[tuple[str, bool]]:
    """Each entity key and whether it is declared a string (else an integer)."""
    return [(name, view.source.columns[name].type == "string") for name in view.entities]


def empty_values(view: FeatureViewConfig) -> dict[str, Any]:
    """What a view's features read as when nothing is stored."""
    return {f.name: 0 if f.agg == "count" else None for f in view.features}


def get_online_features(
    store: OnlineStore,
    views: Mapping[str, FeatureViewConfig],
    view_names: Sequence[str],
    entity_rows: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Latest values of ``view_names`` for each entity row, in one store round trip.

    Args:
        store: The online store.
        views: Every known view, by name.
        view_names: The views to read.
        entity_rows: One mapping of entity key columns to values per requested row.

    Returns:
        For each row: its keys, ``<view>__<feature>`` values and ``<view>__window_end_us``
        (the end of the window the values are for; None when nothing is stored).

    Raises:
        UnknownViewError: a view name is not known.
        FeatureRequestError: a row misses a key or has a value of the wrong type.
    """
    if not view_names:
        raise FeatureRequestError("no views requested")
    unknown = [v for v in view_names if v not in views]
    if unknown:
        raise UnknownViewError(
            f"unknown view(s) {', '.join(unknown)}; known: {', '.join(sorted(views)) or 'none'}"
        )
    chosen = [views[v] for v in view_names]
    for index, row in enumerate(entity_rows):
        if not isinstance(row, Mapping):
            raise FeatureRequestError(f"entities[{index}]: expected an object of entity keys")
    keys = []
    for view in chosen:
        types = _key_types(view)
        keys.append([_entity(types, view.name, row, i) for i, row in enumerate(entity_rows)])
    found = store.read_many([(view.name, k) for view, k in zip(chosen, keys, strict=True)])
    results: list[dict[str, Any]] = [dict(row) for row in entity_rows]
    for view, stored in zip(chosen, found, strict=True):
        empty = empty_values(view)
        columns = [(f.name, view.column_name(f)) for f in view.features]
        window_column = f"{view.name}__window_end_us"
        for result, value in zip(results, stored, strict=True):
            values = value.values if value else empty
            for name, column in columns:
                result[column] = values.get(name, empty[name])
            result[window_column] = value.window_end_us if value else None
    return results
