"""Write Arrow streams to Delta (through delta-rs) and Parquet (through pyarrow.dataset).

The single-node and Dask tiers both hand their output here as a stream of record
batches, so a table is written the same way whichever of the two computed it; Spark
writes through delta-spark and its own Parquet writer. Arrow is the interchange. What a
write does is decided in :mod:`tierflow.io.write_plan`; here it is only carried out.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from tierflow.config.jobs import SinkConfig, is_uri
from tierflow.engines.base import WriteResult
from tierflow.errors import TierflowError
from tierflow.io.write_plan import (
    ConcurrentWriteError,
    SchemaMismatchError,
    WriteAction,
    find_commit,
    plan_write,
)
from tierflow.io.writers import writer_slot

__all__ = ["SchemaMismatchError", "parquet_schemas", "unified_parquet_schema", "write_arrow"]

#: The MERGE metrics a write result reports (delta-rs's names).
MERGE_METRICS = ("num_target_rows_updated", "num_target_rows_inserted", "num_source_rows")


class _Counter:
    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self._batches = batches
        self.rows = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self._batches:
            self.rows += batch.num_rows
            yield batch


def _reader(schema: pa.Schema, counter: _Counter) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(schema, iter(counter))


def sql_literal(value: Any) -> str:
    """A value as a SQL literal for a Delta predicate."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    text = str(value).replace("'", "''")
    return f"'{text}'"


def partition_predicate(columns: Sequence[str], values: Iterable[Sequence[Any]]) -> str:
    """``(a = 1 AND b = 'x') OR ...`` matching exactly the given partition value tuples."""
    terms = []
    for row in values:
        parts = [
            f"{col} IS NULL" if v is None else f"{col} = {sql_literal(v)}"
            for col, v in zip(columns, row, strict=True)
        ]
        terms.append("(" + " AND ".join(parts) + ")")
    return " OR ".join(terms) if terms else "false"


def _commit_properties(action: WriteAction) -> Any:
    from deltalake import CommitProperties

    custom = {"tierflow.writeId": action.write_id}
    if action.commit_metadata:
        custom["userMetadata"] = action.commit_metadata
    return CommitProperties(custom_metadata=custom)


def write_delta(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    action: WriteAction,
    *,
    partition_values: Callable[[], list[tuple[Any, ...]]] | None = None,
) -> WriteResult:
    """Carry out ``action`` on a Delta table with delta-rs.

    Args:
        batches: The output, streamed.
        schema: Its Arrow schema.
        action: What to do (see :mod:`tierflow.io.write_plan`).
        partition_values: For ``replace_partitions``: the distinct partition tuples of
            the output (computed by the engine before the stream is consumed).

    Raises:
        SchemaMismatchError: delta-rs refused the output's schema.
        ConcurrentWriteError: another writer's commit conflicts with this one (retryable).
    """
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError

    from tierflow.storage import delta_path, delta_table, storage_options

    path = action.path
    counter = _Counter(batches)
    commit = _commit_properties(action)
    partition_by = list(action.partition_by) or None
    details: dict[str, Any] = {}
    try:
        match action.operation:
            case "merge":
                metrics = (
                    delta_table(path)
                    .merge(
                        _reader(schema, counter),
                        predicate=action.merge_predicate(),
                        source_alias="s",
                        target_alias="t",
                        merge_schema=action.schema_mode == "merge",
                        commit_properties=commit,
                    )
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute()
                )
                details = {k: metrics.get(k) for k in MERGE_METRICS}
            case "replace_partitions":
                if partition_values is None:
                    raise TierflowError("overwrite_partitions needs the output's partition values")
                predicate = partition_predicate(action.partition_by, partition_values())
                details = {"replaced": predicate}
                write_deltalake(
                    delta_path(path), _reader(schema, counter), mode="overwrite",
                    predicate=predicate, partition_by=partition_by, schema_mode=action.schema_mode,
                    commit_properties=commit, storage_options=storage_options(path),
                )  # fmt: skip
            case "append" | "overwrite":
                write_deltalake(
                    delta_path(path), _reader(schema, counter), mode=action.operation,
                    partition_by=partition_by, schema_mode=action.schema_mode,
                    commit_properties=commit, storage_options=storage_options(path),
                )  # fmt: skip
    except CommitFailedError as exc:
        raise ConcurrentWriteError(
            f"{path}: another writer committed a conflicting change first ({exc}); nothing of "
            "this write was committed. Run it again."
        ) from exc
    except DeltaError as exc:
        message = str(exc)
        if "schema" in message.lower():
            raise SchemaMismatchError(f"{path}: {message}") from exc
        raise
    version = find_commit(action).get("version")
    return WriteResult(path, "delta", action.mode, counter.rows, version, details)


def parquet_schemas(files: Sequence[str]) -> list[pa.Schema]:
    """The distinct schemas of the files (one, unless columns were added over time)."""
    import pyarrow.parquet as pq

    from tierflow.storage import arrow_location

    schemas = []
    seen = set()
    for file in files:
        filesystem, inner = arrow_location(file)
        schema = pq.read_schema(inner, filesystem=filesystem).remove_metadata()
        key = schema.to_string()
        if key not in seen:
            seen.add(key)
            schemas.append(schema)
    return schemas


def unified_parquet_schema(files: Sequence[str]) -> pa.Schema:
    """The union of the files' schemas (files written before a column was added lack it)."""
    schemas = parquet_schemas(files)
    return pa.unify_schemas(schemas) if len(schemas) > 1 else schemas[0]


def _without_views(schema: pa.Schema) -> pa.Schema:
    plain = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    return pa.schema([f.with_type(plain.get(f.type, f.type)) for f in schema], schema.metadata)


def write_parquet(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, action: WriteAction
) -> WriteResult:
    """Carry out ``action`` on a Hive-partitioned Parquet dataset with pyarrow.

    A local overwrite writes beside the table and swaps the folders, so readers never see
    a half-written table; partitions are replaced by deleting the folders written to.
    """
    # Imported here: pyarrow.dataset pulls in pandas, which a Delta write never needs.
    import pyarrow.dataset as pads

    if action.partition_by:
        # Splitting rows by partition takes them by index, which pyarrow cannot do on
        # the view types Polars hands out.
        plain = _without_views(schema)
        if plain != schema:
            batches, schema = (b.cast(plain) for b in batches), plain
    counter = _Counter(batches)
    partitioning = (
        pads.partitioning(pa.schema([schema.field(c) for c in action.partition_by]), flavor="hive")
        if action.partition_by
        else None
    )
    token = uuid.uuid4().hex[:12]
    target = Path(action.path)
    if action.operation == "overwrite" and not is_uri(action.path):
        staging = target.with_name(f".{target.name}.{token}.staging")
        pads.write_dataset(
            _reader(schema, counter), staging, format="parquet", partitioning=partitioning,
            basename_template=f"part-{token}-{{i}}.parquet", max_partitions=_MAX_PARTITIONS,
        )  # fmt: skip
        old = target.with_name(f".{target.name}.{token}.old")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        from tierflow.storage import arrow_location

        behavior = "overwrite_or_ignore" if action.operation == "append" else "delete_matching"
        filesystem, base = arrow_location(action.path)
        pads.write_dataset(
            _reader(schema, counter), base, format="parquet", partitioning=partitioning,
            basename_template=f"part-{token}-{{i}}.parquet", existing_data_behavior=behavior,
            filesystem=filesystem, max_partitions=_MAX_PARTITIONS,
        )  # fmt: skip
    return WriteResult(action.path, "parquet", action.mode, counter.rows)


# pyarrow stops a write at 1,024 partitions by default; Spark and Polars have no such limit.
_MAX_PARTITIONS = 1 << 20


def write_arrow(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    sink: SinkConfig,
    path: str,
    *,
    partition_values: Callable[[], list[tuple[Any, ...]]] | None = None,
    commit_metadata: str | None = None,
) -> WriteResult:
    """Decide the write (schema enforced), then carry it out in the sink's format.

    A Delta write holds the table's shared writer slot (:mod:`tierflow.io.writers`):
    delta-rs writers share a table, a Spark writer does not.
    """
    if sink.format == "delta":
        with writer_slot(path, exclusive=False):
            action = plan_write(sink, path, schema, commit_metadata=commit_metadata)
            return write_delta(batches, schema, action, partition_values=partition_values)
    action = plan_write(sink, path, schema, commit_metadata=commit_metadata)
    return write_parquet(batches, schema, action)
