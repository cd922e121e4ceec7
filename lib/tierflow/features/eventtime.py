"""The event-time rule: which event times a view accepts, and how far one moves a watermark.

An event time is judged against the record alone, never against a clock, so a replay
decides exactly as the first run did:

- **skew**: an event more than the view's ``max_event_time_skew`` ahead of its ingestion
  time is refused. In the stream the ingestion time is the record's Kafka timestamp; in
  batch it is the table's ``source.ingestion_time`` column where it has one (the event
  log's ``_kafka_timestamp``), and batch without one cannot apply this part;
- **bounds**: an event time outside the view's ``event_time_bounds`` is refused, in batch
  and stream alike;
- **watermark**: an accepted event moves its partition's watermark at most to its
  ingestion time (:func:`watermark_time`), so an event a producer dated ahead of its
  record, within the skew, still cannot make the other entities' events late.

:meth:`EventTimeRule.accepts` uses nothing but arithmetic and comparison operators: the
stream applies it to a poll's NumPy arrays and batch to narwhals expressions, one
implementation for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from tierflow.config.features import FeatureViewConfig

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class EventTimeRule:
    """One view's rule for its event-time column (all times in epoch microseconds)."""

    view: str
    column: str
    skew_us: int
    low_us: int | None
    high_us: int | None
    skew_text: str

    @classmethod
    def of(cls, view: FeatureViewConfig) -> EventTimeRule:
        """The rule ``view`` declares."""
        low, high = view.event_time_bounds_us
        return cls(
            view.name, view.event_time, view.max_skew_us, low, high, view.max_event_time_skew
        )

    def accepts(self, event_us: T, ingested_us: T | None) -> T | None:
        """True where the rule accepts the event; None when the rule checks nothing.

        Args:
            event_us: Event times (an array or an expression).
            ingested_us: Ingestion times of the same rows, or None where there are none
                (then only the bounds are checked).
        """
        checks: list[Any] = []
        if ingested_us is not None:
            checks.append(event_us - ingested_us <= self.skew_us)  # type: ignore[operator]
        if self.low_us is not None:
            checks.append(event_us >= self.low_us)  # type: ignore[operator]
        if self.high_us is not None:
            checks.append(event_us <= self.high_us)  # type: ignore[operator]
        if not checks:
            return None
        accepted = checks[0]
        for check in checks[1:]:
            accepted = accepted & check
        return accepted  # type: ignore[no-any-return]

    def reason(self, event_us: int, ingested_us: int | None) -> str | None:
        """Why one event is refused (None if it is accepted)."""
        when = f"{self.column} {iso(event_us)}"
        if ingested_us is not None and event_us - ingested_us > self.skew_us:
            return (
                f"event_time: {when} is {_span(event_us - ingested_us)} ahead of the record's "
                f"timestamp {iso(ingested_us)} (view {self.view} allows "
                f"max_event_time_skew {self.skew_text})"
            )
        if self.low_us is not None and event_us < self.low_us:
            return f"event_time: {when} is before view {self.view}'s bound {iso(self.low_us)}"
        if self.high_us is not None and event_us > self.high_us:
            return f"event_time: {when} is after view {self.view}'s bound {iso(self.high_us)}"
        return None


def watermark_time(event_us: int, ingested_us: int | None) -> int:
    """How far one accepted event moves its partition's watermark.

    To its own time, but never past its ingestion time.
    """
    return event_us if ingested_us is None else min(event_us, ingested_us)


def iso(us: int) -> str:
    """Epoch microseconds as ISO 8601 (UTC); the number itself outside years 1-9999."""
    try:
        return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return f"{us} µs since the epoch"


def _span(us: int) -> str:
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000)):
        if us >= size:
            return f"{us / size:.1f}{unit}"
    return f"{us / 1_000_000:.3f}s"
