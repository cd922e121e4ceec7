"""Incremental feature views: the window state of one Kafka partition, and what to write.

The stream computes exactly what :mod:`tierflow.features.batch` computes, with the
semantics of :mod:`tierflow.features.windows`, one partition at a time:

- **Watermark.** Per view and partition: the largest event time seen in the partition
  (offset order), each capped at its record's Kafka timestamp
  (:func:`tierflow.features.eventtime.watermark_time`), minus the view's
  ``allowed_lateness``. It depends only on the partition's records in offset order,
  never on batch boundaries, a clock or which process read them, so a replay after a
  crash makes the same decisions.
- **Late events.** An event whose tile ends at or before the watermark at its arrival
  is late: counted, and dropped or dead-lettered. Accepted events therefore only touch
  windows that end after the watermark's grid point, so every window ending at or
  before it is final.
- **Tiles.** Accepted events fold into per-entity, per-tile partials (the same partials
  batch computes, merged the same way).
- **What is written.** Each entity's values at ``G``, the grid point at or before the
  watermark, exactly as batch reads them at ``G``: the window row ending at
  ``min(G, K + max_tiles + 1)`` where ``K`` is the entity's latest closed tile (after
  ``max_tiles + 1`` empty steps the values are the "empty" row, as in batch). Tiles
  that can no longer reach a window ending at or after ``G`` are dropped, and an entity
  whose values went empty is forgotten once that empty row is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tierflow.config.features import FeatureViewConfig
from tierflow.features.windows import Partial, finish
from tierflow.stores.base import OnlineRow, encode_values, entity_key

ROWS_SLOT = "*"


def slots(view: FeatureViewConfig) -> list[str]:
    """The partial slots a view keeps per tile: row counts, then each column it aggregates."""
    out = [ROWS_SLOT]
    for feature in view.features:
        if feature.column is not None and feature.column not in out:
            out.append(feature.column)
    return out


def _encode_partial(p: Partial) -> list[Any]:
    return [p.rows, p.count, p.total, p.squares, p.minimum, p.maximum, p.last_ts, p.last_value]


def _decode_partial(values: Sequence[Any]) -> Partial:
    rows, count, total, squares, minimum, maximum, last_ts, last_value = values
    return Partial(rows, count, total, squares, minimum, maximum, last_ts, last_value)


@dataclass
class EntityState:
    """One entity's open tiles, its latest closed tile, and what was last written."""

    tiles: dict[int, list[Partial]] = field(default_factory=dict)
    closed: int | None = None
    written: tuple[int, str] | None = None

    def to_json(self) -> str:
        """Compact JSON (``written`` is a cache, not state: it is not kept)."""
        tiles = {str(k): [_encode_partial(p) for p in v] for k, v in self.tiles.items()}
        return json.dumps({"k": self.closed, "t": tiles}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EntityState:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        tiles = {int(k): [_decode_partial(p) for p in v] for k, v in data["t"].items()}
        return cls(tiles=tiles, closed=data["k"])


@dataclass(frozen=True)
class TilePartial:
    """The partials of one entity's events in one tile, from one batch."""

    entity: tuple[Any, ...]
    tile: int
    partials: list[Partial]


@dataclass
class Emission:
    """The result of advancing a view: rows to write and state changes to persist."""

    rows: list[OnlineRow] = field(default_factory=list)
    put: dict[tuple[Any, ...], str] = field(default_factory=dict)
    delete: list[tuple[Any, ...]] = field(default_factory=list)


class ViewState:
    """The state of one feature view in one partition."""

    def __init__(self, view: FeatureViewConfig) -> None:
        self.view = view
        self.slots = slots(view)
        self.step_us = view.step_us
        self.lateness_us = _lateness_us(view)
        # Per feature: (name, aggregation, slot, window in tiles, counts rows); features
        # over the same column and window share one merge of their tiles.
        self._features = [
            (f.name, f.agg, self.slots.index(f.column or ROWS_SLOT), view.window_tiles(f),
             f.column is None)
            for f in view.features
        ]  # fmt: skip
        self.max_event_us: int | None = None
        self.entities: dict[tuple[Any, ...], EntityState] = {}
        self.dirty: set[tuple[Any, ...]] = set()
        self.grid: int | None = None  # G of the last emission, as a tile index

    @property
    def watermark_us(self) -> int | None:
        """Largest (capped) event time seen minus the allowed lateness (None before any)."""
        if self.max_event_us is None:
            return None
        return self.max_event_us - self.lateness_us

    def grid_index(self) -> int | None:
        """``G``: the index of the grid point at or before the watermark."""
        mark = self.watermark_us
        return None if mark is None else mark // self.step_us

    def late_flags(
        self, times_us: Sequence[int], records_us: Sequence[int | None] | None = None
    ) -> list[bool]:
        """Judge events in offset order, advancing the watermark as they come.

        Each event moves the watermark to its time, but never past its record's time
        (``records_us``, the Kafka timestamps; :func:`watermark_time`).
        """
        step = self.step_us
        lateness = self.lateness_us
        seen = self.max_event_us
        records = records_us if records_us is not None else [None] * len(times_us)
        flags = []
        for ts, record in zip(times_us, records, strict=True):
            flags.append(seen is not None and (ts // step + 1) * step <= seen - lateness)
            # watermark_time(ts, record), inline: this loop runs once per event.
            mark = ts if record is None or ts < record else record
            if seen is None or mark > seen:
                seen = mark
        self.max_event_us = seen
        return flags

    def add(self, partials: Iterable[TilePartial]) -> None:
        """Merge one batch's tile partials into the entities' tiles."""
        for item in partials:
            state = self.entities.get(item.entity)
            if state is None:
                state = self.entities[item.entity] = EntityState()
            current = state.tiles.get(item.tile)
            state.tiles[item.tile] = (
                item.partials
                if current is None
                else [a.merge(b) for a, b in zip(current, item.partials, strict=True)]
            )
            self.dirty.add(item.entity)

    def values_at(self, state: EntityState, end: int) -> dict[str, Any]:
        """The features' values for the windows ending at grid index ``end``."""
        out: dict[str, Any] = {}
        merged: dict[tuple[int, int], Partial] = {}
        tiles = state.tiles
        for name, agg, slot, size, counts_rows in self._features:
            total = merged.get((slot, size))
            if total is None:
                window = (tiles.get(tile) for tile in range(end - size, end))
                total = Partial.combine(parts[slot] for parts in window if parts is not None)
                merged[slot, size] = total
            out[name] = finish(agg, total, counts_rows=counts_rows)
        return out

    def advance(self) -> Emission:
        """Rows for every entity whose values at ``G`` changed, and the state to persist."""
        emission = Emission()
        grid = self.grid_index()
        if grid is None:
            return emission
        moved = grid != self.grid
        self.grid = grid
        candidates = list(self.entities) if moved else list(self.dirty)
        horizon = self.view.max_tiles
        for entity in candidates:
            state = self.entities[entity]
            closed = [k for k in state.tiles if k + 1 <= grid]
            if closed:
                latest = max(closed)
                state.closed = latest if state.closed is None else max(state.closed, latest)
            changed = entity in self.dirty
            if state.closed is not None:
                end = min(grid, state.closed + horizon + 1)
                values = self.values_at(state, end)
                encoded = encode_values(values)
                written = (end, encoded)
                if state.written != written:
                    emission.rows.append(OnlineRow(entity, values, end * self.step_us))
                    state.written = written
                # Tiles before grid - horizon reach no window ending at or after G.
                stale = [k for k in state.tiles if k < grid - horizon]
                for k in stale:
                    del state.tiles[k]
                changed = changed or bool(stale)
                if not state.tiles and end == state.closed + horizon + 1:
                    emission.delete.append(entity)
                    del self.entities[entity]
                    continue
            if changed:
                emission.put[entity] = state.to_json()
        self.dirty.clear()
        return emission

    # --- persistence -------------------------------------------------------------------

    def field(self, entity: tuple[Any, ...]) -> str:
        """The state field of an entity: ``view`` + unit separator + entity key."""
        return f"{self.view.name}\x1f{entity_key(entity)}"

    def restore(self, meta: Mapping[str, Any], fields: Mapping[str, str]) -> None:
        """Load the view's part of a partition's stored state."""
        marks = meta.get("max_event_us", {})
        self.max_event_us = marks.get(self.view.name)
        prefix = f"{self.view.name}\x1f"
        for name, text in fields.items():
            if name.startswith(prefix):
                entity = tuple(json.loads(name[len(prefix) :]))
                self.entities[entity] = EntityState.from_json(text)
        self.grid = None  # the first advance re-emits every entity: idempotent


def _lateness_us(view: FeatureViewConfig) -> int:
    from tierflow.config.features import duration_us

    return duration_us(view.allowed_lateness)
