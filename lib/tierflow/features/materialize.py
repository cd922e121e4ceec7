"""Materialization (backfill) of a feature view into the online store.

Bounded, resumable and idempotent:

- **Bounded.** Entities are cut into ``buckets`` by an engine-native hash of their keys,
  sized so each bucket holds about ``chunk_rows`` source rows. Each bucket is computed
  and written on its own (Polars with its streaming engine, Dask and Spark out of core),
  so memory follows the chunk size, not the table size.
- **Resumable.** After each bucket the store records, in the same atomic write as the
  bucket's last rows, a checkpoint naming the materialization and the next bucket. A
  killed run started again with the same arguments continues from there.
- **Idempotent.** Values are upserts of the same numbers, and a completed
  materialization is recorded as done: running it again writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import narwhals as nw

from tierflow.config.features import FeatureViewConfig
from tierflow.engines.base import Engine
from tierflow.features.batch import WINDOW_END, feature_rows, values_as_of
from tierflow.jobs.runner import read_source
from tierflow.jobs.sources import ResolvedSource
from tierflow.stores.base import OnlineRow, OnlineStore

_BUCKET = "_tf_bucket"
_TS = "_tf_event_us"


@dataclass(frozen=True)
class MaterializeResult:
    """What a materialization did."""

    view: str
    as_of_us: int
    buckets: int
    buckets_done_now: int
    rows_written: int
    seconds: float
    resumed_from: int
    already_done: bool

    @property
    def rows_per_second(self) -> float:
        """Throughput of this run."""
        return self.rows_written / self.seconds if self.seconds else 0.0


def _us(moment: datetime) -> int:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1_000_000)


def materialize(
    view: FeatureViewConfig,
    source: ResolvedSource,
    engine: Engine,
    store: OnlineStore,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    chunk_rows: int = 200_000,
    buckets: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> MaterializeResult:
    """Write each entity's values as of ``end`` (default: now) into ``store``.

    Args:
        view: The feature view.
        source: Its resolved (version-pinned) source table.
        engine: The engine to compute on.
        store: The online store.
        start: Ignore events before this time.
        end: The time the values are as of; events at or after it are ignored.
        chunk_rows: Target source rows per bucket, and rows per store write.
        buckets: Override the number of buckets.
        progress: Receives one line per bucket.
    """
    say = progress or (lambda _line: None)
    end_us = _us(end) if end else time.time_ns() // 1000
    as_of = (end_us // view.step_us) * view.step_us
    if buckets is None:
        buckets = max(1, math.ceil((source.rows or chunk_rows) / chunk_rows))
    identity = hashlib.sha256(
        json.dumps(
            {
                "view": view.model_dump(mode="json"),
                "source": source.label,
                "start": _us(start) if start else None,
                "as_of": as_of,
                "buckets": buckets,
                "engine": engine.name,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    name = f"materialize/{view.name}"
    saved = json.loads(store.get_checkpoint(name) or "{}")
    resume = 0
    rows_before = 0
    if saved.get("identity") == identity:
        if saved.get("done"):
            rows = saved.get("rows")
            say(f"{view.name}: already materialized as of {as_of} ({rows} rows); nothing to do")
            return MaterializeResult(view.name, as_of, buckets, 0, 0, 0.0, buckets, True)
        resume = int(saved.get("next_bucket", 0))
        rows_before = int(saved.get("rows", 0))
        say(f"{view.name}: resuming at bucket {resume + 1}/{buckets}")

    began = time.monotonic()
    written = 0
    for bucket in range(resume, buckets):
        table = _bucket_values(view, source, engine, bucket, buckets, start, end_us, as_of)
        rows = _online_rows(view, table)
        total = rows_before + written + len(rows)
        final = {
            "identity": identity,
            "next_bucket": bucket + 1,
            "rows": total,
            "done": bucket + 1 == buckets,
        }
        chunks = [rows[i : i + chunk_rows] for i in range(0, len(rows), chunk_rows)] or [[]]
        for i, chunk in enumerate(chunks):
            # The checkpoint rides on the bucket's last write: both land or neither.
            checkpoint = (name, json.dumps(final)) if i == len(chunks) - 1 else None
            store.write(view.name, chunk, ttl_us=view.ttl_us, checkpoint=checkpoint)
        written += len(rows)
        elapsed = time.monotonic() - began
        say(
            f"{view.name}: bucket {bucket + 1}/{buckets}: {len(rows):,} entities "
            f"({written:,} this run, {written / elapsed if elapsed else 0:,.0f} rows/s)"
        )
    return MaterializeResult(
        view.name,
        as_of,
        buckets,
        buckets - resume,
        written,
        time.monotonic() - began,
        resume,
        False,
    )


def _bucket_values(
    view: FeatureViewConfig,
    source: ResolvedSource,
    engine: Engine,
    bucket: int,
    buckets: int,
    start: datetime | None,
    end_us: int,
    as_of: int,
) -> Any:
    frame = read_source(engine, source)
    if buckets > 1:
        frame = engine.add_bucket(frame, view.entities, buckets, _BUCKET)
        frame = frame.filter(nw.col(_BUCKET) == bucket)
    frame = engine.epoch_us(frame, view.event_time, _TS)
    frame = frame.filter(nw.col(_TS) < end_us)
    if start is not None:
        frame = frame.filter(nw.col(_TS) >= _us(start))
    frame = frame.drop(_TS)
    rows = values_as_of(feature_rows(frame, view, engine), view, as_of)
    return engine.collect_arrow(rows)


def _online_rows(view: FeatureViewConfig, table: Any) -> list[OnlineRow]:
    names = [f.name for f in view.features]
    columns = {c: table.column(c).to_pylist() for c in [*view.entities, WINDOW_END, *names]}
    out = []
    for i in range(table.num_rows):
        values = {n: _plain(columns[n][i]) for n in names}
        entity = tuple(columns[e][i] for e in view.entities)
        out.append(OnlineRow(entity, values, int(columns[WINDOW_END][i])))
    return out


def _plain(value: Any) -> Any:
    # NaN is not JSON; the stores hold null for "no value".
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
