"""The single-node tier: Polars, in this process.

Polars rather than pandas: it is multi-threaded, lazy (projections and filters are pushed
into the Parquet scan), Arrow-native (no copy into and out of Delta) and far lighter on
memory than pandas for the same frame. SQL steps run in DuckDB over the same Arrow data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import narwhals as nw

from tierflow.config.jobs import ExtraPolicy, SinkConfig
from tierflow.engines.base import HASH_SEPARATOR, Engine, WriteResult
from tierflow.io.arrow_sinks import unified_parquet_schema, write_arrow
from tierflow.io.textdecode import META_FILE, META_RECORD, CsvOptions, decode_to_table
from tierflow.storage import polars_options


def _md5_bucket(texts: Any) -> Any:
    import polars as pl

    values = [
        int(hashlib.md5(t.encode(), usedforsecurity=False).hexdigest()[:8], 16) / 2**32
        for t in texts.to_list()
    ]
    return pl.Series(values, dtype=pl.Float64)


class PolarsEngine(Engine):
    """Runs a job in this process with Polars (and DuckDB for SQL)."""

    name = "single"

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

    def read_parquet(self, files: Sequence[str]) -> nw.LazyFrame[Any]:
        """Scan the files lazily, tagging rows with their file."""
        import polars as pl

        # Files written before a column was added lack it: scan with the union of schemas.
        unified = pl.DataFrame(unified_parquet_schema(files).empty_table()).schema
        frame = pl.scan_parquet(
            list(files), schema=unified, missing_columns="insert", include_file_paths=META_FILE,
            storage_options=polars_options(files[0]),
        )  # fmt: skip
        return nw.from_native(frame.with_columns(pl.lit(None, pl.Int64).alias(META_RECORD)))

    def read_delta(self, path: str, version: int) -> nw.LazyFrame[Any]:
        """Scan the table at ``version`` through delta-rs's Arrow dataset."""
        import polars as pl

        from tierflow.storage import delta_table

        dataset = delta_table(path, version).to_pyarrow_dataset()
        frame = pl.scan_pyarrow_dataset(dataset).with_columns(
            pl.lit(f"{path}@v{version}").alias(META_FILE), pl.lit(None, pl.Int64).alias(META_RECORD)
        )
        return nw.from_native(frame)

    def from_arrow(self, table: Any) -> nw.LazyFrame[Any]:
        """A Polars lazy frame over the Arrow table."""
        import polars as pl

        return nw.from_native(pl.DataFrame(table).lazy())

    def sql(self, query: str, tables: Mapping[str, nw.LazyFrame[Any]]) -> nw.LazyFrame[Any]:
        """Run ``query`` in an in-memory DuckDB over the collected frames."""
        import duckdb
        import polars as pl

        con = duckdb.connect()
        try:
            for name, frame in tables.items():
                con.register(name, frame.collect().to_arrow())
            result = con.sql(query).arrow()
        finally:
            con.close()
        table = result.read_all() if hasattr(result, "read_all") else result
        return nw.from_native(pl.from_arrow(table).lazy())  # type: ignore[union-attr]

    def persist(self, frame: nw.LazyFrame[Any]) -> nw.LazyFrame[Any]:
        """Collect into memory once."""
        return frame.collect().lazy()

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

    def collect_arrow(self, frame: nw.LazyFrame[Any]) -> Any:
        """Collect with Polars' streaming engine, so scans and filters run in batches."""
        return frame.to_native().collect(engine="streaming").to_arrow()

    def write(
        self,
        frame: nw.LazyFrame[Any],
        sink: SinkConfig,
        path: str,
        *,
        commit_metadata: str | None = None,
    ) -> WriteResult:
        """Collect to Arrow and write through the shared Arrow sinks."""
        table = frame.collect().to_arrow()

        def partition_values() -> list[tuple[Any, ...]]:
            distinct = (
                table.select(list(sink.partition_by))
                .group_by(list(sink.partition_by))
                .aggregate([])
            )
            return [tuple(row.values()) for row in distinct.to_pylist()]

        return write_arrow(
            table.to_batches(), table.schema, sink, path, partition_values=partition_values,
            commit_metadata=commit_metadata,
        )  # fmt: skip
