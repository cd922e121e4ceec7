"""Materialization (backfill) of a feature view into the online store.

Bounded, resumable and idempotent:

- **One pass, bounded.** Every entity's values as of the end are computed in one pass
  over the source (:func:`~tierflow.features.batch.latest_values`: one window end per
  entity, computed per group of entities) and written by the engine to a work folder, split
  into ``buckets`` by an engine-native hash of the keys. The store is then loaded
  bucket by bucket, ``chunk_rows`` rows per write, read from those files in batches:
  memory follows the chunk, not the table.
- **Resumable.** After each bucket the store records, in the same atomic write as the
  bucket's last rows, a checkpoint naming the materialization and the next bucket. A
  killed run started again with the same arguments reuses the computed values (the
  work folder is named by the run's identity and marked complete once written) and
  continues from that bucket.
- **Idempotent.** Values are upserts of the same numbers, and a completed
  materialization is recorded as done: running it again writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import narwhals as nw

from tierflow.config.features import FeatureViewConfig
from tierflow.config.jobs import SinkConfig
from tierflow.engines.base import Engine
from tierflow.features.batch import WINDOW_END, latest_values
from tierflow.jobs.runner import read_source
from tierflow.jobs.sources import ResolvedSource
from tierflow.progress import Progress
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
    load_seconds: float = 0.0

    @property
    def load_rows_per_second(self) -> float:
        """Rows loaded into the store per second of loading (computing excluded)."""
        return self.rows_written / self.load_seconds if self.load_seconds else 0.0

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
    progress: TextIO | None = None,
    work_dir: Path | None = None,
) -> MaterializeResult:
    """Write each entity's values as of ``end`` (default: now) into ``store``.

    Args:
        view: The feature view.
        source: Its resolved (version-pinned) source table.
        engine: The engine to compute on.
        store: The online store.
        start: Ignore events before this time.
        end: The time the values are as of; events at or after it are ignored.
        chunk_rows: Source rows per bucket (the number of buckets is the source's rows
            over this), and rows per store write.
        buckets: Override the number of buckets.
        progress: Where progress goes (a :class:`~tierflow.progress.Progress`: redrawn
            on a terminal, sparse in a log); nothing when ``None``.
        work_dir: Where the computed values wait to be loaded (default: the system's
            temporary folder); a folder per run identity, removed when the run is done.
    """
    end_us = _us(end) if end else time.time_ns() // 1000
    as_of = (end_us // view.step_us) * view.step_us
    if buckets is None:
        buckets = max(1, math.ceil((source.rows or chunk_rows) / chunk_rows))
    bar = Progress(
        f"{view.name}: loading", buckets, "buckets",
        stream=progress if progress is not None else io.StringIO(),
        mode=None if progress is not None else "off",
    )  # fmt: skip
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
    store.check()  # before minutes of computing values it could not load
    name = f"materialize/{view.name}"
    saved = json.loads(store.get_checkpoint(name) or "{}")
    resume = 0
    rows_before = 0
    if saved.get("identity") == identity:
        if saved.get("done"):
            rows = saved.get("rows")
            bar.note(
                f"{view.name}: already materialized as of {as_of} ({rows} rows); nothing to do"
            )
            return MaterializeResult(view.name, as_of, buckets, 0, 0, 0.0, buckets, True)
        resume = int(saved.get("next_bucket", 0))
        rows_before = int(saved.get("rows", 0))
        bar.note(f"{view.name}: resuming at bucket {resume + 1}/{buckets}")
        bar.rebase(resume)

    began = time.monotonic()
    # The computed values wait in a folder of this run's own, named in its checkpoints
    # so a resumed run finds them (two runs of one view into two stores never share one).
    base = work_dir or Path(tempfile.gettempdir()) / "tierflow-materialize"
    work = base / str(saved["work"]) if resume and saved.get("work") else None
    if work is not None and (work / "_complete").exists():
        values = work / "values"
        bar.note(f"{view.name}: the values computed before are reused ({work})")
    else:
        # Bucket b holds the same entities and values whenever the same engine computes
        # them, so a resumed run may recompute them when the folder is gone.
        work = base / f"{identity}-{uuid.uuid4().hex[:8]}"
        values = work / "values"
        bar.note(f"{view.name}: computing every entity's values as of {as_of} ({engine.name})")
        frame = _values(view, source, engine, start, end_us, as_of)
        frame = engine.add_bucket(frame, view.entities, buckets, _BUCKET)
        sink = SinkConfig(format="parquet", path=str(values), partition_by=(_BUCKET,))
        engine.write(frame, sink, str(values))
        (work / "_complete").write_text(identity)
    loading = time.monotonic()
    written = 0
    for bucket in range(resume, buckets):
        files = sorted(str(f) for f in (values / f"{_BUCKET}={bucket}").glob("*.parquet"))
        checkpoint = {"identity": identity, "work": work.name, "next_bucket": bucket + 1,
                      "rows": rows_before + written, "done": bucket + 1 == buckets}  # fmt: skip
        loaded = _load_bucket(view, store, files, chunk_rows, (name, checkpoint))
        written += loaded
        elapsed = time.monotonic() - began
        bar.update(bucket + 1, f"{written:,} entities ({written / max(elapsed, 1e-9):,.0f} rows/s)")
    shutil.rmtree(work, ignore_errors=True)
    bar.close()  # the caller reports the result
    return MaterializeResult(
        view.name,
        as_of,
        buckets,
        buckets - resume,
        written,
        time.monotonic() - began,
        resume,
        False,
        time.monotonic() - loading,
    )


def _load_bucket(
    view: FeatureViewConfig,
    store: OnlineStore,
    files: list[str],
    chunk_rows: int,
    checkpoint: tuple[str, dict[str, Any]],
) -> int:
    """Write one bucket's values, ``chunk_rows`` at a time; the number of rows written.

    The checkpoint (its ``rows`` counting those before the bucket) rides on the bucket's
    last write: both land or neither.
    """
    name, state = checkpoint
    chunks = _chunks(view, files, chunk_rows)
    pending = next(chunks, [])
    loaded = 0
    while True:
        following = next(chunks, None)
        final = None
        if following is None:
            final = (name, json.dumps(state | {"rows": state["rows"] + loaded + len(pending)}))
        store.write(view.name, pending, ttl_us=view.ttl_us, checkpoint=final)
        loaded += len(pending)
        if following is None:
            return loaded
        pending = following


def _values(
    view: FeatureViewConfig,
    source: ResolvedSource,
    engine: Engine,
    start: datetime | None,
    end_us: int,
    as_of: int,
) -> Any:
    """Every entity's values as of ``as_of`` from the events before ``end_us``."""
    frame = read_source(engine, source, lineage=False)
    frame = engine.epoch_us(frame, view.event_time, _TS)
    frame = frame.filter(nw.col(_TS) < end_us)
    if start is not None:
        frame = frame.filter(nw.col(_TS) >= _us(start))
    return latest_values(frame.drop(_TS), view, engine, as_of)


def _chunks(view: FeatureViewConfig, files: list[str], rows: int) -> Iterator[list[OnlineRow]]:
    """A bucket's computed values as store rows, ``rows`` at a time, read in batches."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not files:
        return
    held: list[Any] = []
    count = 0
    for batch in ds.dataset(files, format="parquet").to_batches(batch_size=rows):
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held)
            yield _online_rows(view, table.slice(0, rows))
            rest = table.slice(rows)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield _online_rows(view, pa.Table.from_batches(held))


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
