"""Window semantics, written down once for batch and stream.

Time is event time, in UTC microseconds since the epoch. A view has a **step** (its
grid); every feature has a **window** that is a whole number of steps (equal to the step
for a tumbling window, larger for a hopping/sliding one).

- **Tiles.** The step cuts time into tiles ``[k*step, (k+1)*step)``. An event belongs
  to tile ``floor(ts / step)``: the start is inclusive, the end exclusive.
- **Windows end on the grid.** A feature's value *at* grid point ``e`` aggregates the
  events with ``e - window <= ts < e``: the window's start is inclusive, its end
  exclusive. An event exactly at ``e`` belongs to the next window.
- **As of any time t** a feature has the value of its window ending at
  ``floor(t / step) * step``, the latest grid point not after ``t``. Only closed windows
  count, so no event after ``t`` is ever used (no leakage); the price is staleness of at
  most one step.
- **Empty windows.** When a window holds no events, ``count`` is 0 and the other
  aggregations are null. After an entity's last event, its values stay defined (and
  empty once every window has passed the event) until the next event.
- **Aggregations.** ``count`` counts rows (or non-null values of ``column``); ``sum``,
  ``mean``, ``min``, ``max`` ignore nulls; ``stddev`` is the sample standard deviation
  (null below two values); ``last`` is the value of the latest event with a non-null
  value (ties on time broken by the larger value).
- **Online values** are the values at the latest closed grid point. A write never
  replaces a value of a later window (replays and reordering cannot go back in time).
  An online value expires ``ttl`` after it was written (wall-clock time, the way Redis
  expires keys); a missing or expired value reads as empty (``count`` 0, others null).
- **Late data** (streaming only): an event is late when its window end is at or before
  the watermark (the largest event time seen, minus ``allowed_lateness``) at arrival.
  Late events are counted and dropped, or sent to the dead-letter topic. Batch has no
  late data: it sees every event in the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

EMPTY_COUNT = 0


def tile_of(ts_us: int, step_us: int) -> int:
    """The tile (step index) holding an event at ``ts_us``."""
    return ts_us // step_us


def grid_floor(t_us: int, step_us: int) -> int:
    """The latest grid point at or before ``t_us``: the end of the last closed window."""
    return (t_us // step_us) * step_us


@dataclass
class Partial:
    """Running aggregates of one column over some events: merge-able, so tiles combine."""

    rows: int = 0
    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    minimum: float | None = None
    maximum: float | None = None
    last_ts: int | None = None
    last_value: float | str | None = None

    def add(self, value: float | str | None, ts_us: int) -> None:
        """Fold in one event (``value`` may be null)."""
        self.rows += 1
        if value is None:
            return
        self.count += 1
        if not isinstance(value, str):
            number = float(value)
            self.total += number
            self.squares += number * number
            self.minimum = number if self.minimum is None else min(self.minimum, number)
            self.maximum = number if self.maximum is None else max(self.maximum, number)
        if (
            self.last_ts is None
            or ts_us > self.last_ts
            or (ts_us == self.last_ts and _greater(value, self.last_value))
        ):
            self.last_ts, self.last_value = ts_us, value

    def merge(self, other: Partial) -> Partial:
        """The partial of both sets of events."""
        return Partial.combine((self, other))

    @staticmethod
    def combine(parts: Iterable[Partial]) -> Partial:
        """The partial of every set of events, in one pass (a window's tiles)."""
        rows = count = 0
        total = squares = 0.0
        minimum = maximum = last_value = None
        last_ts: int | None = None
        for p in parts:
            rows += p.rows
            count += p.count
            total += p.total
            squares += p.squares
            if p.minimum is not None and (minimum is None or p.minimum < minimum):
                minimum = p.minimum
            if p.maximum is not None and (maximum is None or p.maximum > maximum):
                maximum = p.maximum
            if p.last_ts is not None and (
                last_ts is None
                or p.last_ts > last_ts
                or (p.last_ts == last_ts and _greater(p.last_value, last_value))
            ):
                last_ts, last_value = p.last_ts, p.last_value
        return Partial(rows, count, total, squares, minimum, maximum, last_ts, last_value)


def _greater(a: float | str | None, b: float | str | None) -> bool:
    if a is None:
        return False
    if b is None:
        return True
    return bool(a > b)  # type: ignore[operator]


def finish(agg: str, partial: Partial, *, counts_rows: bool) -> float | int | str | None:
    """The feature value of an aggregation from the partial of its window's events.

    Args:
        agg: The aggregation.
        partial: Aggregates of the window's events.
        counts_rows: For ``count`` without a column: count rows, not non-null values.
    """
    if agg == "count":
        return partial.rows if counts_rows else partial.count
    if partial.count == 0:
        return None
    if agg == "sum":
        return partial.total
    if agg == "mean":
        return partial.total / partial.count
    if agg == "min":
        return partial.minimum
    if agg == "max":
        return partial.maximum
    if agg == "last":
        return partial.last_value
    if agg == "stddev":
        if partial.count < 2:
            return None
        variance = (partial.squares - partial.total * partial.total / partial.count) / (
            partial.count - 1
        )
        return math.sqrt(max(variance, 0.0))
    raise ValueError(f"unknown aggregation {agg!r}")
