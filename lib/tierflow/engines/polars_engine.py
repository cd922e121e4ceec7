"""The single-node tier: Polars' streaming engine, in this process, out of core.

Polars rather than pandas: it is multi-threaded, lazy (projections and filters are pushed
into the Parquet scan), Arrow-native (no copy into and out of Delta) and its streaming
engine processes data larger than memory in batches. Nothing here collects a large frame:

- the output is computed by the streaming engine and handed to the Delta/Parquet writer
  batch by batch (the same writer as the Dask tier);
- a frame read more than once (a source under a contract) is kept in memory only while
  it is small; a large one is streamed to a scratch Parquet file and scanned from there;
- SQL steps run in DuckDB on a database file of its own (it spills to disk): sources read
  straight from Parquet files are scanned by DuckDB itself, other frames are streamed in,
  and the result is written to a scratch Parquet file that Polars scans lazily.

Scratch files live in a temporary folder that :meth:`PolarsEngine.close` removes.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import narwhals as nw

from tierflow.config.jobs import ExtraPolicy, SinkConfig, is_uri
from tierflow.engines.base import (
    ENTITY_CHUNK_ROWS,
    HASH_SEPARATOR,
    ArrowFunction,
    Engine,
    EngineOptions,
    EntityFunction,
    Reduction,
    WriteResult,
)
from tierflow.io.arrow_sinks import parquet_schemas, write_arrow
from tierflow.io.textdecode import META_FILE, META_RECORD, CsvOptions, decode_to_table
from tierflow.paths import scratch_dir
from tierflow.storage import polars_options

#: Without a memory budget from the planner, frames above this are spilled, not kept.
_DEFAULT_SPILL_BYTES = 2 * 1024**3


def _md5_bucket(texts: Any) -> Any:
    import polars as pl

    values = [
        int(hashlib.md5(t.encode(), usedforsecurity=False).hexdigest()[:8], 16) / 2**32
        for t in texts.to_list()
    ]
    return pl.Series(values, dtype=pl.Float64)


@dataclass(frozen=True)
class _Scan:
    """A frame read straight from files, which DuckDB can scan itself."""

    frame: Any  # the Polars LazyFrame handed out (identity matters)
    files: tuple[str, ...]


class PolarsEngine(Engine):
    """Runs a job in this process with Polars' streaming engine (and DuckDB for SQL)."""

    name = "single"

    def __init__(self, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        budget = options.memory_budget
        self._spill_bytes = budget // 4 if budget else _DEFAULT_SPILL_BYTES
        self._scratch: Path | None = None
        self._scans: dict[int, _Scan] = {}

    def _scratch_file(self, suffix: str) -> Path:
        if self._scratch is None:
            self._scratch = scratch_dir("tierflow-single-")
        return self._scratch / f"{uuid.uuid4().hex}{suffix}"

    def read_text(
        self,
        files: Sequence[str],
        fmt: str,
        types: Mapping[str, str],
        *,
        extra_columns: ExtraPolicy,
        csv: CsvOptions,
    ) -> nw.LazyFrame[Any]:
        """Decode every file in this process into one Polars frame."""
        import polars as pl

        table = decode_to_table(
            files,
            fmt,
            types,
            extra_columns=extra_columns,
            csv=csv,
        )
        return nw.from_native(pl.from_arrow(table).lazy())  # type: ignore[union-attr]

    def read_parquet(self, files: Sequence[str], *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """Scan the files lazily (with lineage, tagging rows with their file)."""
        import polars as pl
        import pyarrow as pa

        # Files written before a column was added lack it: scan with the union of their
        # schemas. Only then: a given schema costs Polars' scan a quarter of its speed.
        schemas = parquet_schemas(files)
        unified = None
        if len(schemas) > 1:
            unified = pl.DataFrame(pa.unify_schemas(schemas).empty_table()).schema
        frame = pl.scan_parquet(
            list(files), schema=unified, missing_columns="insert" if unified else "raise",
            include_file_paths=META_FILE if lineage else None,
            storage_options=polars_options(files[0]),
        )  # fmt: skip
        if not lineage:
            self._scans[id(frame)] = _Scan(frame, tuple(files))
            return nw.from_native(frame)
        return nw.from_native(frame.with_columns(pl.lit(None, pl.Int64).alias(META_RECORD)))

    def read_delta(self, path: str, version: int, *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """Polars' own scan of the table's files at ``version``."""
        import polars as pl

        from tierflow.storage import delta_table

        frame = pl.scan_delta(delta_table(path, version))
        if not lineage:
            return nw.from_native(frame)
        return nw.from_native(
            frame.with_columns(
                pl.lit(f"{path}@v{version}").alias(META_FILE),
                pl.lit(None, pl.Int64).alias(META_RECORD),
            )
        )

    def from_arrow(self, table: Any) -> nw.LazyFrame[Any]:
        """A Polars lazy frame over the Arrow table."""
        import polars as pl

        return nw.from_native(pl.DataFrame(table).lazy())

    def sql(self, query: str, tables: Mapping[str, nw.LazyFrame[Any]]) -> nw.LazyFrame[Any]:
        """DuckDB on a scratch database (it spills), the result scanned back from Parquet."""
        import duckdb
        import polars as pl

        result = self._scratch_file(".parquet")
        database = self._scratch_file(".duckdb")
        con = duckdb.connect(str(database))
        try:
            con.execute(f"SET temp_directory = '{database.parent}'")
            # Output order carries no meaning in a table; keeping it costs memory.
            con.execute("SET preserve_insertion_order = false")
            for name, frame in tables.items():
                self._duckdb_table(con, name, frame.to_native())
            # Source names are identifiers (validated in the job config); the query is the job's.
            con.execute(f"COPY ({query}) TO '{result}' (FORMAT parquet)")
        finally:
            con.close()
            database.unlink(missing_ok=True)
        return nw.from_native(pl.scan_parquet(result))

    def _duckdb_table(self, con: Any, name: str, native: Any) -> None:
        """``name`` in DuckDB: its own scan of the files where it can, else streamed in."""
        import pyarrow as pa

        scan = self._scans.get(id(native))
        if scan is not None and scan.frame is native and not any(map(is_uri, scan.files)):
            files = ", ".join("'" + f.replace("'", "''") + "'" for f in scan.files)
            reader = f"read_parquet([{files}], union_by_name = true)"
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {reader}')  # noqa: S608
            return
        stream = pa.RecordBatchReader.from_stream(
            native.collect_batches(maintain_order=False, lazy=True)
        )
        con.register(f"_tf_stream_{name}", stream)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM "_tf_stream_{name}"')  # noqa: S608
        con.unregister(f"_tf_stream_{name}")

    def persist(
        self, frame: nw.LazyFrame[Any], *, size_hint: int | None = None
    ) -> nw.LazyFrame[Any]:
        """Keep in memory while small; stream a large frame to a scratch file and scan that."""
        import polars as pl

        native = frame.to_native()
        if size_hint is None or size_hint <= self._spill_bytes:
            return nw.from_native(native.collect(engine="streaming").lazy())
        path = self._scratch_file(".parquet")
        native.sink_parquet(path, engine="streaming")
        return nw.from_native(pl.scan_parquet(path))

    def by_entity(
        self,
        frame: nw.LazyFrame[Any],
        keys: Sequence[str],
        fn: EntityFunction,
        *,
        reduce: Reduction | None = None,
    ) -> nw.LazyFrame[Any]:
        """``fn`` over the frame spilled to scratch files, in buckets of entities.

        ``fn`` reads its input several times and its ordered window steps run in memory,
        so a large input is cut into buckets of whole entities (a hash of the key), each
        computed and spilled in turn: memory follows one bucket, not the whole frame.
        The input is written twice at most: once to count it, and, when it needs more
        than one bucket, once more split into a file per bucket (each bucket then reads
        its own file, not the whole input again). ``reduce.partial`` runs per bucket (a
        bucket holds all of its keys' rows: nothing to combine), by the streaming engine.
        """
        import polars as pl

        def apply(rows: nw.LazyFrame[Any]) -> nw.LazyFrame[Any]:
            if reduce is not None:
                # By the streaming engine: the bucket's rows are read in batches, and
                # only what they reduce to (fewer rows) is held for ``fn``.
                reduced = reduce.partial(rows).to_native().collect(engine="streaming")
                rows = nw.from_native(reduced.lazy())
            return fn(rows, self)

        rows = int(frame.to_native().select(pl.len()).collect(engine="streaming").item())
        buckets = max(1, -(-rows // ENTITY_CHUNK_ROWS))
        if buckets == 1:
            if reduce is not None:  # read once, by the reduce step
                return apply(frame)
            spilled = self._scratch_file(".parquet")
            frame.to_native().sink_parquet(spilled, engine="streaming")
            return apply(nw.from_native(pl.scan_parquet(spilled)))
        split = self._scratch_file("")
        bucketed = self.add_bucket(frame, keys, buckets, "_tf_entity_bucket").to_native()
        bucketed.sink_parquet(
            pl.PartitionBy(split, key="_tf_entity_bucket", include_key=False),
            mkdir=True,
            engine="streaming",
        )
        outputs = []
        for bucket in range(buckets):
            files = sorted(str(f) for f in split.glob(f"_tf_entity_bucket={bucket}/*.parquet"))
            if not files:  # no entity hashed here
                continue
            out = self._scratch_file(".parquet")
            apply(nw.from_native(pl.scan_parquet(files))).to_native().sink_parquet(
                out, engine="streaming"
            )
            outputs.append(out)
        return nw.from_native(pl.scan_parquet(outputs))

    def add_split_hash(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], seed: int, name: str
    ) -> nw.LazyFrame[Any]:
        """MD5 of the seed and key text, row by row."""
        import polars as pl

        native = frame.to_native()
        parts = [pl.lit(str(seed))] + [pl.col(c).cast(pl.String).fill_null("") for c in columns]
        text = pl.concat_str(parts, separator=HASH_SEPARATOR)
        return nw.from_native(
            native.with_columns(text.map_batches(_md5_bucket, return_dtype=pl.Float64).alias(name))
        )

    def add_bucket(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], buckets: int, name: str
    ) -> nw.LazyFrame[Any]:
        """Polars' own hash of the key columns, modulo ``buckets``."""
        import polars as pl

        bucket = (pl.struct(list(columns)).hash(seed=0) % buckets).cast(pl.Int64)
        return nw.from_native(frame.to_native().with_columns(bucket.alias(name)))

    def map_arrow(self, frame: nw.LazyFrame[Any], fn: ArrowFunction) -> nw.LazyFrame[Any]:
        """``fn`` per batch of Polars' streaming engine."""
        import polars as pl

        native = frame.to_native()
        empty = native.clear().collect().to_arrow()
        schema = pl.from_arrow(fn(empty)).schema  # type: ignore[union-attr]

        def batch(df: pl.DataFrame) -> pl.DataFrame:
            out = pl.from_arrow(fn(df.to_arrow()))
            assert isinstance(out, pl.DataFrame)
            return out

        return nw.from_native(native.map_batches(batch, schema=schema, streamable=True))

    def collect_arrow(self, frame: nw.LazyFrame[Any]) -> Any:
        """Collect with Polars' streaming engine, so scans and filters run in batches."""
        return frame.to_native().collect(engine="streaming").to_arrow()

    def count(self, frame: nw.LazyFrame[Any]) -> int:
        """Rows, counted by the streaming engine (from Parquet metadata where it can)."""
        import polars as pl

        return int(frame.to_native().select(pl.len()).collect(engine="streaming").item())

    def write(
        self,
        frame: nw.LazyFrame[Any],
        sink: SinkConfig,
        path: str,
        *,
        commit_metadata: str | None = None,
    ) -> WriteResult:
        """Stream the output from Polars' streaming engine into the shared Arrow sinks."""
        import pyarrow as pa

        native = frame.to_native()
        # Lazy: nothing runs until the writer asks for the first batch, after the write
        # has been decided and the table's schema checked.
        stream = pa.RecordBatchReader.from_stream(
            native.collect_batches(maintain_order=False, lazy=True)
        )

        def partition_values() -> list[tuple[Any, ...]]:
            keys = list(sink.partition_by)
            distinct = native.select(keys).unique().collect(engine="streaming")
            return [tuple(row) for row in distinct.rows()]

        return write_arrow(
            stream, stream.schema, sink, path, partition_values=partition_values,
            commit_metadata=commit_metadata,
        )  # fmt: skip

    def close(self) -> None:
        """Remove the scratch folder (spilled frames, SQL results)."""
        self._scans.clear()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
