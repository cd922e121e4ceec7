"""Write Arrow streams to Delta (through delta-rs) and Parquet (through pyarrow.dataset).

The single-node and Dask tiers both hand their output here as a stream of record
batches, so a table is written the same way whichever of the two computed it; Spark
writes through delta-spark and its own Parquet writer. Arrow is the interchange.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads

from tierflow.config.jobs import SinkConfig, is_uri
from tierflow.engines.base import WriteResult
from tierflow.errors import TierflowError


class SchemaMismatchError(TierflowError):
    """The output does not fit the existing table's schema (and evolution does not allow it)."""


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


def _delta_exists(path: str) -> bool:
    from tierflow.storage import is_delta_table

    return is_delta_table(path)


def write_delta(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    sink: SinkConfig,
    path: str,
    *,
    partition_values: Callable[[], list[tuple[Any, ...]]] | None = None,
    commit_metadata: str | None = None,
) -> WriteResult:
    """Write to a Delta table with delta-rs in the sink's mode.

    Args:
        batches: The output, streamed.
        schema: Its Arrow schema.
        sink: Mode, partitioning, merge keys, schema evolution.
        path: Table location.
        partition_values: For ``overwrite_partitions``: the distinct partition tuples of
            the output (computed by the engine before the stream is consumed).
        commit_metadata: Stored as the commit's ``userMetadata``.
    """
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import DeltaError

    from tierflow.storage import delta_path, delta_table, storage_options

    options = storage_options(path)
    target = delta_path(path)
    counter = _Counter(batches)
    commit = (
        CommitProperties(custom_metadata={"userMetadata": commit_metadata})
        if commit_metadata
        else None
    )
    schema_mode: Literal["merge", "overwrite"] | None = "merge" if sink.schema_evolution else None
    if sink.replace_schema:
        schema_mode = "overwrite"
    partition_by = list(sink.partition_by) or None
    exists = _delta_exists(path)
    details: dict[str, Any] = {}
    try:
        if sink.mode == "merge" and exists:
            predicate = " AND ".join(f"t.{k} = s.{k}" for k in sink.merge_keys)
            metrics = (
                delta_table(path)
                .merge(
                    _reader(schema, counter),
                    predicate=predicate,
                    source_alias="s",
                    target_alias="t",
                    merge_schema=sink.schema_evolution,
                    commit_properties=commit,
                )
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
            details = {
                k: metrics.get(k)
                for k in ("num_target_rows_updated", "num_target_rows_inserted", "num_source_rows")
            }
        elif sink.mode == "overwrite_partitions" and exists:
            if partition_values is None:
                raise TierflowError("overwrite_partitions needs the output's partition values")
            predicate = partition_predicate(sink.partition_by, partition_values())
            details = {"replaced": predicate}
            write_deltalake(
                target,
                _reader(schema, counter),
                mode="overwrite",
                predicate=predicate,
                partition_by=partition_by,
                schema_mode=schema_mode,
                commit_properties=commit,
                storage_options=options,
            )
        elif sink.mode in ("append", "merge"):
            write_deltalake(
                target,
                _reader(schema, counter),
                mode="append",
                partition_by=partition_by,
                schema_mode=schema_mode,
                commit_properties=commit,
                storage_options=options,
            )
        else:
            write_deltalake(
                target,
                _reader(schema, counter),
                mode="overwrite",
                partition_by=partition_by,
                schema_mode=schema_mode,
                commit_properties=commit,
                storage_options=options,
            )
    except DeltaError as exc:
        message = str(exc)
        if "schema" in message.lower():
            raise SchemaMismatchError(f"{path}: {message}") from exc
        raise
    version = delta_table(path).version()
    return WriteResult(path, "delta", sink.mode, counter.rows, version, details)


def _comparable(dtype: pa.DataType) -> pa.DataType:
    """Collapse representations that mean the same column type."""
    if pa.types.is_dictionary(dtype):
        return _comparable(dtype.value_type)
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype):
        return pa.binary()
    if pa.types.is_timestamp(dtype):
        return pa.timestamp(dtype.unit, tz="UTC" if dtype.tz else None)
    return dtype


def check_schema(existing: pa.Schema | None, new: pa.Schema, sink: SinkConfig, path: str) -> None:
    """Schema enforcement, the same for every engine and format.

    The output must carry every column of the existing table with the same type; new
    columns are allowed only with ``schema_evolution: true`` (they are null in old rows).

    Raises:
        SchemaMismatchError: naming the table and each offending column.
    """
    if existing is None or sink.replace_schema:
        return
    # Parquet partition values live in folder names, not in the files' schemas.
    skip = set(sink.partition_by) if sink.format == "parquet" else set()
    old = {f.name: _comparable(f.type) for f in existing if f.name not in skip}
    fresh = {f.name: _comparable(f.type) for f in new if f.name not in skip}
    changed = {n: (old[n], fresh[n]) for n in old.keys() & fresh.keys() if old[n] != fresh[n]}
    missing = sorted(old.keys() - fresh.keys())
    added = sorted(fresh.keys() - old.keys())
    problems = []
    if changed:
        problems.append(
            "changed types: "
            + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in sorted(changed.items()))
        )
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    if added and not sink.schema_evolution:
        problems.append(f"new columns {', '.join(added)} (set schema_evolution: true to add them)")
    if problems:
        raise SchemaMismatchError(
            f"{path}: the output does not fit the table's schema: " + "; ".join(problems)
        )


def existing_schema(path: str, fmt: str) -> pa.Schema | None:
    """The schema of the table at ``path``, or None when there is no table yet."""
    if fmt == "delta":
        from tierflow.storage import delta_table, is_delta_table

        if not is_delta_table(path):
            return None
        # delta-rs returns an arro3 schema; pyarrow reads it through the C interface.
        return pa.schema(delta_table(path).schema().to_arrow())
    if is_uri(path) or not Path(path).exists():
        return None
    files = sorted(Path(path).rglob("*.parquet"))
    if not files:
        return None
    return unified_parquet_schema([str(f) for f in files])


def unified_parquet_schema(files: Sequence[str]) -> pa.Schema:
    """The union of the files' schemas (files written before a column was added lack it)."""
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
    return pa.unify_schemas(schemas) if len(schemas) > 1 else schemas[0]


def write_parquet(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, sink: SinkConfig, path: str
) -> WriteResult:
    """Write a Hive-partitioned Parquet dataset; overwrite swaps in a complete new folder."""
    counter = _Counter(batches)
    partitioning = (
        pads.partitioning(pa.schema([schema.field(c) for c in sink.partition_by]), flavor="hive")
        if sink.partition_by
        else None
    )
    token = uuid.uuid4().hex[:12]
    target = Path(path)
    if sink.mode == "overwrite" and not is_uri(path):
        # Write beside the table, then swap: readers never see a half-written table.
        staging = target.with_name(f".{target.name}.{token}.staging")
        pads.write_dataset(
            _reader(schema, counter), staging, format="parquet", partitioning=partitioning,
            basename_template=f"part-{token}-{{i}}.parquet",
        )  # fmt: skip
        old = target.with_name(f".{target.name}.{token}.old")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        from tierflow.storage import arrow_location

        behavior = (
            "delete_matching"
            if sink.mode in ("overwrite_partitions", "overwrite")
            else "overwrite_or_ignore"
        )
        filesystem, base = arrow_location(path)
        pads.write_dataset(
            _reader(schema, counter), base, format="parquet", partitioning=partitioning,
            basename_template=f"part-{token}-{{i}}.parquet", existing_data_behavior=behavior,
            filesystem=filesystem,
        )  # fmt: skip
    return WriteResult(path, "parquet", sink.mode, counter.rows)


def write_arrow(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    sink: SinkConfig,
    path: str,
    *,
    partition_values: Callable[[], list[tuple[Any, ...]]] | None = None,
    commit_metadata: str | None = None,
) -> WriteResult:
    """Write an Arrow stream in the sink's format, after enforcing the table's schema."""
    check_schema(existing_schema(path, sink.format), schema, sink, path)
    if sink.format == "delta":
        return write_delta(
            batches, schema, sink, path, partition_values=partition_values,
            commit_metadata=commit_metadata,
        )  # fmt: skip
    return write_parquet(batches, schema, sink, path)
