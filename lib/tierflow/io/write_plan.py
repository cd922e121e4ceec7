"""What a sink write does to its table, decided once for every engine and format.

A sink's mode says what the user wants; the table's state (there or not, its schema)
says what that means now. :func:`plan_write` turns the two into a :class:`WriteAction`
after enforcing the table's schema, and the writers only carry the action out: delta-rs
and pyarrow (single-node and Dask tiers) and delta-spark and Spark's Parquet writer
(Spark tier). No writer decides anything about modes, creation or schemas itself.

=========================  ===============  ===============
sink mode                  table exists     table absent
=========================  ===============  ===============
``append``                 append           append (creates)
``overwrite``              overwrite        overwrite (creates)
``overwrite_partitions``   replace_partitions  overwrite (creates)
``merge``                  merge            append (creates)
=========================  ===============  ===============

Schema: ``replace_schema`` replaces it (overwrite only), ``schema_evolution`` adds new
nullable columns, otherwise the output must match the table column for column
(:func:`check_schema`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tierflow.config.jobs import SinkConfig, WriteMode
from tierflow.errors import DataError, TierflowError

if TYPE_CHECKING:
    import pyarrow as pa

Operation = Literal["append", "overwrite", "replace_partitions", "merge"]
SchemaMode = Literal["merge", "overwrite"]


class SchemaMismatchError(DataError):
    """The output does not fit the existing table's schema (and evolution does not allow it)."""


class ConcurrentWriteError(TierflowError):
    """Another writer committed a conflicting change first; nothing of this write landed.

    Retryable: running the write again reads the table's new state.
    """

    retryable = True


@dataclass(frozen=True)
class WriteAction:
    """One write, decided: the operation, and everything each writer needs to carry it out."""

    path: str
    format: Literal["delta", "parquet"]
    mode: WriteMode  # what the sink asked for (kept in run records)
    operation: Operation
    partition_by: tuple[str, ...] = ()
    merge_keys: tuple[str, ...] = ()
    schema_mode: SchemaMode | None = None
    commit_metadata: str | None = None
    #: Tags this write's commit, so its version is found in the history even when other
    #: writers commit to the table at the same time.
    write_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def creates(self) -> bool:
        """Whether the table may not exist yet (any operation but merge and replace)."""
        return self.operation in ("append", "overwrite")

    def merge_predicate(self, target: str = "t", source: str = "s") -> str:
        """``t.k1 = s.k1 AND ...`` over the merge keys."""
        return " AND ".join(f"{target}.{k} = {source}.{k}" for k in self.merge_keys)


def _comparable(dtype: pa.DataType) -> pa.DataType:
    """Collapse representations that mean the same column type."""
    import pyarrow as pa

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


def decide(
    sink: SinkConfig, path: str, *, exists: bool, commit_metadata: str | None = None
) -> WriteAction:
    """The action for ``sink`` on a table that ``exists`` or not (the table above)."""
    operation: Operation
    if sink.mode == "merge":
        operation = "merge" if exists else "append"
    elif sink.mode == "overwrite_partitions":
        operation = "replace_partitions" if exists else "overwrite"
    else:
        operation = sink.mode
    schema_mode: SchemaMode | None = None
    if sink.replace_schema:
        schema_mode = "overwrite"
    elif sink.schema_evolution:
        schema_mode = "merge"
    return WriteAction(
        path=path, format=sink.format, mode=sink.mode, operation=operation,
        partition_by=sink.partition_by, merge_keys=sink.merge_keys, schema_mode=schema_mode,
        commit_metadata=commit_metadata,
    )  # fmt: skip


def table_schema(path: str, fmt: str) -> pa.Schema | None:
    """The schema of the table at ``path``, or None when there is no table yet."""
    import pyarrow as pa

    from tierflow.config.jobs import is_uri

    if fmt == "delta":
        from tierflow.storage import delta_table, is_delta_table

        if not is_delta_table(path):
            return None
        # delta-rs returns an arro3 schema; pyarrow reads it through the C interface.
        return pa.schema(delta_table(path).schema().to_arrow())
    if is_uri(path) or not Path(path).exists():
        return None
    files = sorted(str(f) for f in Path(path).rglob("*.parquet"))
    if not files:
        return None
    from tierflow.io.arrow_sinks import unified_parquet_schema

    return unified_parquet_schema(files)


def plan_write(
    sink: SinkConfig, path: str, schema: pa.Schema, *, commit_metadata: str | None = None
) -> WriteAction:
    """Look at the table, enforce its schema, and decide the write.

    Raises:
        SchemaMismatchError: the output does not fit the table.
    """
    existing = table_schema(path, sink.format)
    check_schema(existing, schema, sink, path)
    return decide(sink, path, exists=existing is not None, commit_metadata=commit_metadata)


def find_commit(action: WriteAction, depth: int = 100) -> dict[str, Any]:
    """The ``commitInfo`` of ``action``'s commit, with its ``version``; empty if not found.

    Looked up by the write's id in the newest ``depth`` commit files, never as "the
    latest commit": other writers may have committed since. (The commit files are read
    here: delta-rs's ``history()`` numbers its entries by counting down from a latest
    version that other writers can move while it reads.)
    """
    import json

    from tierflow.storage import arrow_location, delta_table

    latest = delta_table(action.path).version()
    filesystem, log = arrow_location(action.path.rstrip("/") + "/_delta_log")
    for version in range(latest, max(-1, latest - depth), -1):
        name = f"{log}/{version:020d}.json"
        try:
            if filesystem is None:
                text = Path(name).read_text()
            else:
                with filesystem.open_input_stream(name) as stream:
                    text = stream.read().decode()
        except (FileNotFoundError, OSError):
            continue
        for line in text.splitlines():
            if '"commitInfo"' not in line:
                continue
            info = dict(json.loads(line)["commitInfo"])
            if info.get("tierflow.writeId") == action.write_id or (
                info.get("userMetadata") == spark_user_metadata(action)
            ):
                return {**info, "version": version}
    return {}


def spark_user_metadata(action: WriteAction) -> str:
    """What a Spark commit stores as ``userMetadata`` (Spark has no other free field)."""
    return action.commit_metadata or f"tierflow.writeId={action.write_id}"
