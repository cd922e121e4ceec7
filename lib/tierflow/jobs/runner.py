"""Run a job on an engine: read, validate and quarantine, transform, split, write, record.

The runner is engine-agnostic: it calls the :class:`~tierflow.engines.base.Engine`
contract and Narwhals, nothing else. Its guarantees:

- valid + quarantined = input, for every source, on every run (checked, not assumed);
- above the bad-row threshold the run fails before the sink is touched (the quarantine
  still receives the bad rows, so they can be inspected);
- a record of the run is written whatever happens, next to a log file of its stages.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import narwhals as nw

from tierflow.config.jobs import JobConfig, SinkConfig, SourceConfig
from tierflow.engines.base import Engine
from tierflow.errors import DataError, TierflowError
from tierflow.io.textdecode import META_FILE, META_RECORD, CsvOptions
from tierflow.jobs.contracts import REASON, rule_counts, rule_labels, validate
from tierflow.jobs.planner import TierPlan
from tierflow.jobs.records import RunRecord
from tierflow.jobs.registry import get_transform
from tierflow.jobs.sources import ResolvedSource
from tierflow.jobs.splits import add_split
from tierflow.progress import clear_line, ticking

QUARANTINE_COLUMNS = ("_tf_run_id", "_tf_job", "_tf_source", META_FILE, META_RECORD, REASON)


class BadRowThresholdError(DataError):
    """Too many rows failed their contracts; nothing was written to the sink."""


@dataclass(frozen=True)
class RunContext:
    """Where a run reads and writes."""

    data_dir: Path
    logs_dir: Path

    def locate(self, path: str) -> str:
        """A sink or quarantine path made absolute against the data folder."""
        from tierflow.storage import locate

        return locate(path, self.data_dir)


class StageLog:
    """Stage lines to stderr and to the run's log file, with elapsed times."""

    def __init__(self, path: Path, echo: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.echo = echo
        self.logger = logging.getLogger(f"tierflow.run.{path.stem}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.logger.addHandler(handler)
        if echo:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(logging.Formatter("[tierflow] %(message)s"))
            self.logger.addHandler(stream)
        self.started = time.monotonic()

    def info(self, message: str) -> None:
        """Log one line, prefixed with the time since the run started."""
        if self.echo:
            clear_line()  # a stage's ticking time, on a terminal
        self.logger.info("%7.1fs %s", time.monotonic() - self.started, message)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Log the start and end (with duration) of a stage."""
        began = time.monotonic()
        self.info(f"{name} ...")
        if self.echo:
            with ticking(f"[tierflow] {name}"):
                yield
        else:
            yield
        self.info(f"{name} done in {time.monotonic() - began:.1f}s")

    def close(self) -> None:
        """Detach the handlers."""
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)


def read_source(
    engine: Engine, source: ResolvedSource, *, lineage: bool = True
) -> nw.LazyFrame[Any]:
    """Read a resolved source with the engine (text through the shared decoder).

    With ``lineage``, every row carries its file (``_tf_file``) and record number, for
    quarantine; Parquet and Delta sources can be read without it, in the engine's own scan.
    """
    cfg: SourceConfig = source.config
    if cfg.format in ("csv", "jsonl"):
        types = {name: c.type for name, c in (cfg.columns or {}).items()}
        return engine.read_text(
            source.files,
            cfg.format,
            types,
            extra_columns=cfg.extra_columns,
            csv=CsvOptions(cfg.csv_delimiter, cfg.csv_null_values),
        )
    if cfg.format == "parquet":
        return engine.read_parquet(source.files, lineage=lineage)
    assert source.version is not None
    return engine.read_delta(source.location, source.version, lineage=lineage)


def normalize_for_table(frame: nw.LazyFrame[Any]) -> nw.LazyFrame[Any]:
    """Cast what tables cannot hold the same way on every engine: unsigned ints, categoricals."""
    schema = frame.collect_schema()
    casts = []
    for name, dtype in schema.items():
        if dtype in (nw.UInt8, nw.UInt16, nw.UInt32, nw.UInt64):
            casts.append(nw.col(name).cast(nw.Int64))
        elif dtype in (nw.Categorical, nw.Enum):
            casts.append(nw.col(name).cast(nw.String))
    return frame.with_columns(*casts) if casts else frame


def can_quarantine(source: SourceConfig) -> bool:
    """Whether any row of this source could fail its contract (and be quarantined)."""
    return bool(
        source.format in ("csv", "jsonl") or source.columns or source.checks or source.unique_key
    )


def _row_accounts(frame: nw.LazyFrame[Any]) -> tuple[int, int, int]:
    """Rows read, valid and quarantined, in one pass (one job on the distributed engines)."""
    reason = nw.col(REASON)
    row = (
        frame.select(
            nw.len().alias("total"),
            (reason == "").cast(nw.Int64).sum().alias("valid"),
            (reason != "").cast(nw.Int64).sum().alias("bad"),
        )
        .collect()
        .rows(named=True)[0]
    )
    return int(row["total"]), int(row["valid"] or 0), int(row["bad"] or 0)


def _run_step(
    job: JobConfig, engine: Engine, valid: dict[str, nw.LazyFrame[Any]]
) -> nw.LazyFrame[Any]:
    if job.sql is not None:
        return engine.sql(job.sql, valid)
    if job.transform is not None:
        fn = get_transform(job.transform.function)
        result = fn(**valid, **job.transform.params)
        if isinstance(result, nw.DataFrame):
            result = result.lazy()
        if not isinstance(result, nw.LazyFrame):
            raise TierflowError(
                f"transform {job.transform.function!r} returned {type(result).__name__}, "
                "not a Narwhals LazyFrame"
            )
        return result
    (only,) = valid.values()
    return only


def new_run_id(job: str) -> str:
    """``<job>-<UTC timestamp>-<random>``: sortable and unique."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{job}-{stamp}-{uuid.uuid4().hex[:6]}"


def run_job(
    job: JobConfig,
    plan: TierPlan,
    engine: Engine,
    context: RunContext,
    *,
    run_id: str | None = None,
    echo: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> RunRecord:
    """Run ``job`` as planned on ``engine``; returns the run record (also saved).

    Raises:
        BadRowThresholdError: too many bad rows (the record says how many, per rule).
        TierflowError: and others from the engines, after the record is saved.
    """
    run_id = run_id or new_run_id(job.name)
    log = StageLog(context.logs_dir / job.name / f"{run_id}.log", echo)
    record = RunRecord(
        run_id=run_id,
        job=job.name,
        engine=engine.describe(),
        started_at=datetime.now(timezone.utc).isoformat(),
        plan=plan.as_dict(),
        inputs=[
            {"source": s.name, "location": s.label, "version": s.version, "files": len(s.files)}
            for s in plan.sources
        ],
        log=str(log.path),
    )
    began = time.monotonic()
    persisted: list[nw.LazyFrame[Any]] = []
    try:
        log.info(f"run {run_id}: job {job.name} on {engine.describe()} ({plan.reason})")
        _execute(job, plan, engine, context, record, log, persisted, on_stage)
        record.status = "succeeded"
    except BaseException as exc:
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}"
        log.info(f"FAILED: {record.error}")
        raise
    finally:
        for frame in persisted:
            engine.release(frame)
        record.finished_at = datetime.now(timezone.utc).isoformat()
        record.duration_s = round(time.monotonic() - began, 3)
        record.save(context.logs_dir / "runs")
        log.info(f"{record.status} in {record.duration_s:.1f}s; record {record.run_id}")
        log.close()
    return record


def _read_and_validate(
    engine: Engine,
    source: ResolvedSource,
    stage: Callable[[str], Any],
    log: StageLog,
    persisted: list[nw.LazyFrame[Any]],
) -> tuple[nw.LazyFrame[Any], bool, int, int, Mapping[str, int]]:
    """A source's rows and its counts: ``(frame, flagged, read, quarantined, by rule)``.

    ``flagged`` frames carry each row's reason and lineage columns; a source whose
    contract cannot fail is returned as the engine's plain scan.
    """
    if not can_quarantine(source.config):
        # Nothing in the contract can fail (no columns, checks or keys declared, and not
        # text that must be decoded): read lazily and without lineage, so the engine's own
        # scan gets the transform's projections and filters. No copy; the row count comes
        # from the footers or the Delta log when they have it, else from one count.
        with stage(f"read {source.name} ({source.label}, no contract to check)"):
            frame = read_source(engine, source, lineage=False)
            exact = source.rows if source.rows_exact else None
            total = exact if exact is not None else engine.count(frame)
        log.info(f"{source.name}: {total:,} rows, no contract to check")
        return frame, False, total, 0, {}
    with stage(f"read and validate {source.name} ({source.label})"):
        # The source is read once: validation uses it twice (uniqueness counts are
        # joined back onto the rows), and a lazy engine would otherwise read it twice.
        size = source.in_memory_bytes
        raw = engine.persist(read_source(engine, source), size_hint=size)
        frame = engine.persist(validate(raw, source.name, source.config), size_hint=size)
        persisted.append(frame)
        total, valid_rows, bad = _row_accounts(frame)
        engine.release(raw)
        # The promise of quarantine: every row is either valid or quarantined, once.
        if valid_rows + bad != total:
            raise TierflowError(
                f"row accounting failed for {source.name}: {valid_rows} valid + {bad} "
                f"quarantined != {total} read"
            )
        counts = rule_counts(frame, rule_labels(source.config)) if bad else {}
    log.info(
        f"{source.name}: {total:,} rows, {total - bad:,} valid, {bad:,} quarantined {counts or ''}"
    )
    return frame, True, total, bad, counts


def _execute(
    job: JobConfig,
    plan: TierPlan,
    engine: Engine,
    context: RunContext,
    record: RunRecord,
    log: StageLog,
    persisted: list[nw.LazyFrame[Any]],
    on_stage: Callable[[str], None] | None,
) -> None:
    def stage(name: str) -> Any:
        if on_stage:
            on_stage(name)
        return log.stage(name)

    flagged: dict[str, nw.LazyFrame[Any]] = {}
    valid: dict[str, nw.LazyFrame[Any]] = {}
    bad_counts: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    for source in plan.sources:
        frame, checked, total, bad, counts = _read_and_validate(
            engine, source, stage, log, persisted
        )
        if checked:
            flagged[source.name] = frame
            frame = frame.filter(nw.col(REASON) == "").drop(META_FILE, META_RECORD, REASON)
        valid[source.name] = frame
        bad_counts[source.name] = bad
        record.rows_in += total
        record.rows_quarantined += bad
        for rule, n in counts.items():
            by_rule[f"{source.name}.{rule}"] = n
    record.rows_valid = record.rows_in - record.rows_quarantined
    record.quarantine_by_rule = by_rule

    if record.rows_quarantined:
        with stage(f"write {record.rows_quarantined:,} quarantined rows"):
            for name, frame in flagged.items():
                if bad_counts[name]:
                    record.quarantine_tables.append(
                        _write_quarantine(job, engine, context, record, name, frame)
                    )

    q = job.quarantine
    fraction = record.rows_quarantined / record.rows_in if record.rows_in else 0.0
    over_fraction = fraction > q.max_bad_fraction
    over_count = q.max_bad_rows is not None and record.rows_quarantined > q.max_bad_rows
    if over_fraction or over_count:
        limit = f"max_bad_fraction {q.max_bad_fraction:g}" + (
            f", max_bad_rows {q.max_bad_rows}" if q.max_bad_rows is not None else ""
        )
        raise BadRowThresholdError(
            f"{record.rows_quarantined:,} of {record.rows_in:,} rows ({fraction:.2%}) failed their "
            f"contracts, above {limit}; nothing was written to {job.sink.path}. "
            f"By rule: {by_rule}. Bad rows are in {', '.join(record.quarantine_tables)}"
        )

    with stage("transform" if job.transform else "sql" if job.sql else "pass-through"):
        output = _run_step(job, engine, valid)
        for column in job.timestamps_from_epoch_us:
            output = engine.from_epoch_us(output, column)
        if job.split is not None:
            output = add_split(output, job.split, engine)
        output = normalize_for_table(output)
    sink_path = context.locate(job.sink.path)
    with stage(f"write {job.sink.format} {job.sink.mode} to {sink_path}"):
        result = engine.write(output, job.sink, sink_path)
    record.rows_out = result.rows
    record.output = {
        "path": result.path,
        "format": result.format,
        "mode": result.mode,
        "rows": result.rows,
        "version": result.version,
        **dict(result.details),
    }
    log.info(
        f"wrote {result.rows:,} rows to {result.path}"
        + (f" (version {result.version})" if result.version is not None else "")
    )


def _write_quarantine(
    job: JobConfig,
    engine: Engine,
    context: RunContext,
    record: RunRecord,
    name: str,
    frame: nw.LazyFrame[Any],
) -> str:
    bad = frame.filter(nw.col(REASON) != "").with_columns(
        nw.lit(record.run_id).alias("_tf_run_id"),
        nw.lit(job.name).alias("_tf_job"),
        nw.lit(name).alias("_tf_source"),
    )
    data_columns = [c for c in bad.collect_schema().names() if c not in QUARANTINE_COLUMNS]
    bad = normalize_for_table(bad.select(*QUARANTINE_COLUMNS, *data_columns))
    path = context.locate(f"{job.quarantine_path()}/{name}")
    sink = SinkConfig(format="delta", path=path, mode="append", schema_evolution=True)
    engine.write(bad, sink, path)
    return path
