"""The Dask tier: a distributed scheduler, a LocalCluster by default or an existing one.

Partitions are pandas frames with Arrow-backed dtypes, so nulls are real nulls (not NaN)
and types match the other tiers. Text files are decoded one task per file; Parquet files
and Delta fragments are read one task per file. Output is streamed partition by partition
from the workers into the shared Arrow sinks (delta-rs, pyarrow), so the client never
holds the whole table.

SQL steps run in DuckDB on the client: Dask has no SQL engine of its own, and DuckDB
executes out of core (spilling to a scratch database on disk) over the validated
partitions that Dask streams into it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import narwhals as nw

from tierflow.config.jobs import ExtraPolicy, SinkConfig
from tierflow.engines.base import (
    ENTITY_CHUNK_ROWS,
    HASH_SEPARATOR,
    ArrowFunction,
    Engine,
    EngineOptions,
    EntityFunction,
    Reducer,
    Reduction,
    WriteResult,
    run_on_polars,
)
from tierflow.engines.dask_plan import optimized
from tierflow.io.arrow_sinks import parquet_schemas, write_arrow
from tierflow.io.textdecode import (
    META_FILE,
    META_RECORD,
    CsvOptions,
    decode_to_table,
    output_schema,
)
from tierflow.storage import ObjectStore, adopt, arrow_location, delta_table, for_workers

# Narwhals announces that Dask support will move to a separate package; the built-in
# support is what we use and test.
warnings.filterwarnings("ignore", message=".*narwhals-dask.*", category=FutureWarning)
# P2P shuffles log every start and stop at WARNING; they are routine here.
logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)


def _to_pandas(table: Any) -> Any:
    import pandas as pd

    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _decode_task(
    path: str,
    fmt: str,
    types: dict[str, str],
    extra: ExtraPolicy,
    csv: CsvOptions,
    store: ObjectStore | None = None,
) -> Any:
    adopt(store)
    table = decode_to_table([path], fmt, types, extra_columns=extra, csv=csv)
    return _to_pandas(table)


def _tag(table: Any, label: str) -> Any:
    import pyarrow as pa

    table = table.append_column(META_FILE, pa.array([label] * table.num_rows, pa.string()))
    return table.append_column(META_RECORD, pa.nulls(table.num_rows, pa.int64()))


def _tagged_schema(schema: Any) -> Any:
    import pyarrow as pa

    return schema.append(pa.field(META_FILE, pa.string())).append(pa.field(META_RECORD, pa.int64()))


def _parquet_task(path: str, schema: Any, store: ObjectStore | None = None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    adopt(store)
    filesystem, inner = arrow_location(path)
    table = pq.read_table(inner, filesystem=filesystem)
    # Files written before a column was added lack it: fill it with nulls.
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return _to_pandas(_tag(pa.Table.from_arrays(columns, schema=schema), path))


def _delta_task(
    index: int, path: str, version: int, lineage: bool, store: ObjectStore | None = None
) -> Any:
    adopt(store)
    dataset = delta_table(path, version).to_pyarrow_dataset()
    fragment = list(dataset.get_fragments())[index]
    table = fragment.to_table(schema=dataset.schema)
    return _to_pandas(_tag(table, f"{path}@v{version}") if lineage else table)


def _arrow_dtype(arrow_type: Any) -> Any:
    import pandas as pd

    return pd.ArrowDtype(arrow_type)


def _hash_partition(frame: Any, columns: list[str], seed: int, name: str) -> Any:
    import pandas as pd
    import pyarrow as pa

    texts = [frame[c].astype("string[pyarrow]").fillna("") for c in columns]
    values = []
    for parts in zip(*texts, strict=True) if texts else []:
        text = HASH_SEPARATOR.join([str(seed), *parts])
        values.append(
            int(hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:8], 16) / 2**32
        )
    out = frame.copy()
    out[name] = pd.Series(values, index=frame.index, dtype=pd.ArrowDtype(pa.float64()))
    return out


def _epoch_partition(frame: Any, column: str, name: str) -> Any:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array(frame[column]).cast(pa.timestamp("us", tz="UTC"))
    out = frame.copy()
    out[name] = pd.Series(
        pd.arrays.ArrowExtensionArray(pc.cast(values, pa.int64())), index=frame.index
    )
    return out


def _from_epoch_partition(frame: Any, column: str) -> Any:
    import pandas as pd
    import pyarrow as pa

    values = pa.array(frame[column]).cast(pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    out = frame.copy()
    out[column] = pd.Series(pd.arrays.ArrowExtensionArray(values), index=frame.index)
    return out


def _bucket_partition(frame: Any, columns: list[str], buckets: int, name: str) -> Any:
    import pandas as pd
    import pyarrow as pa

    hashed = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy() % buckets
    out = frame.copy()
    out[name] = pd.Series(
        hashed.astype("int64"), index=frame.index, dtype=pd.ArrowDtype(pa.int64())
    )
    return out


def _by_entity_partition(frame: Any, fn: EntityFunction) -> Any:
    import pandas as pd
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    return run_on_polars(fn, table).to_pandas(types_mapper=pd.ArrowDtype)


def _reduced(frame: nw.LazyFrame[Any], engine: Engine, *, reducer: Reducer) -> nw.LazyFrame[Any]:
    del engine
    return reducer(frame)


def _combined(
    frame: nw.LazyFrame[Any], engine: Engine, *, combine: Reducer, fn: EntityFunction
) -> nw.LazyFrame[Any]:
    return fn(combine(frame), engine)


def _polars_meta(native: Any, fn: EntityFunction) -> Any:
    """The empty pandas frame ``fn`` gives on Polars for ``native``'s columns."""
    import pandas as pd
    import pyarrow as pa

    empty = pa.Table.from_pandas(native._meta, preserve_index=False)
    return run_on_polars(fn, empty).to_pandas(types_mapper=pd.ArrowDtype)


def _arrow_partition(frame: Any, fn: ArrowFunction) -> Any:
    import pandas as pd
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    return fn(table).to_pandas(types_mapper=pd.ArrowDtype)


class DaskEngine(Engine):
    """Runs a job on a Dask distributed cluster."""

    name = "dask"

    def __init__(self, options: EngineOptions) -> None:
        from distributed import Client, LocalCluster

        self._cluster = None
        self._owned = True
        if options.dask_scheduler:
            # A client of this process already connected to that scheduler (a notebook's,
            # a service's) is used, never closed: connecting again costs a handshake.
            existing = _connected_client(options.dask_scheduler)
            self._owned = existing is None
            self.client = existing or Client(options.dask_scheduler, set_as_default=True)
        else:
            workers = options.workers or os.cpu_count() or 2
            self._cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            self.client = Client(self._cluster, set_as_default=True)

    def describe(self) -> str:
        """``dask (scheduler address, N workers)``."""
        info = self.client.scheduler_info()
        return f"dask ({info.get('address')}, {len(info.get('workers', {}))} workers)"

    def _meta(self, schema: Any) -> Any:
        return _to_pandas(schema.empty_table())

    def read_text(
        self,
        files: Sequence[str],
        fmt: str,
        types: Mapping[str, str],
        *,
        extra_columns: ExtraPolicy,
        csv: CsvOptions,
    ) -> nw.LazyFrame[Any]:
        """One decode task per file."""
        import dask.dataframe as dd

        frame = dd.from_map(
            _decode_task, list(files), fmt=fmt, types=dict(types), extra=extra_columns,
            csv=csv, store=for_workers(list(files)), meta=self._meta(output_schema(types)),
            enforce_metadata=False,
        )  # fmt: skip
        return nw.from_native(frame)

    def read_parquet(self, files: Sequence[str], *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """``dd.read_parquet`` (dask-expr's optimiser); with lineage, one tagging task per file."""
        import dask.dataframe as dd
        import pyarrow as pa

        schemas = parquet_schemas(files)
        unified = pa.unify_schemas(schemas) if len(schemas) > 1 else schemas[0]
        store = for_workers(list(files))
        if not lineage:
            # dask-expr pushes the transform's projections and filters into this scan and
            # combines small files into partitions. Arrow dtypes, like every other frame
            # of this engine; the union of the files' schemas, like the other engines.
            paths, filesystem = list(files), None
            if store is not None:  # an object store: pyarrow's filesystem, paths inside it
                filesystem = arrow_location(files[0])[0]
                paths = [arrow_location(f)[1] for f in files]
            return nw.from_native(
                dd.read_parquet(
                    paths,
                    dtype_backend="pyarrow",
                    arrow_to_pandas={"types_mapper": _arrow_dtype},
                    # The union of schemas only where files differ (it slows the scan).
                    dataset={"schema": unified} if len(schemas) > 1 else {},
                    **({"filesystem": filesystem} if filesystem is not None else {}),
                )
            )
        frame = dd.from_map(
            _parquet_task, list(files), schema=unified, store=store,
            meta=self._meta(_tagged_schema(unified)), enforce_metadata=False,
        )  # fmt: skip
        return nw.from_native(frame)

    def read_delta(self, path: str, version: int, *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """The table's files at ``version``.

        Through ``dd.read_parquet`` when no partition column lives in folder names (and
        without lineage), else one read task per file.
        """
        import dask.dataframe as dd

        table = delta_table(path, version)
        if not lineage and not table.metadata().partition_columns:
            files = table.file_uris()
            if files:
                return self.read_parquet(files, lineage=False)
        dataset = table.to_pyarrow_dataset()
        count = len(list(dataset.get_fragments()))
        schema = _tagged_schema(dataset.schema) if lineage else dataset.schema
        if count == 0:
            return nw.from_native(dd.from_pandas(self._meta(schema), npartitions=1))
        frame = dd.from_map(
            _delta_task, list(range(count)), path=path, version=version, lineage=lineage,
            store=for_workers(path), meta=self._meta(schema), enforce_metadata=False,
        )  # fmt: skip
        return nw.from_native(frame)

    def from_arrow(self, table: Any) -> nw.LazyFrame[Any]:
        """One partition holding the Arrow table (Arrow dtypes)."""
        import dask.dataframe as dd

        return nw.from_native(dd.from_pandas(_to_pandas(table), npartitions=1))

    def _batches(self, frame: Any) -> Iterator[Any]:
        """Compute partitions on the cluster and yield them as Arrow batches, as they finish."""
        import pyarrow as pa
        from distributed import as_completed, futures_of

        schema = pa.Schema.from_pandas(frame._meta, preserve_index=False)
        # ``frame`` comes optimised (``optimized``), and is persisted as it is: every
        # partition of the result is one of its futures. (dask-expr picks a grouped
        # aggregation's output partitions while it optimises: an unoptimised collection
        # can count fewer partitions than it computes, and splitting it with
        # to_delayed() silently drops the others.)
        persisted = self.client.persist(frame)
        for future in as_completed(futures_of(persisted)):
            part = future.result()
            future.release()
            yield from pa.Table.from_pandas(part, schema=schema, preserve_index=False).to_batches()

    def sql(self, query: str, tables: Mapping[str, nw.LazyFrame[Any]]) -> nw.LazyFrame[Any]:
        """DuckDB on the client, out of core, over the partitions streamed from the cluster."""
        import dask.dataframe as dd
        import duckdb
        import pyarrow as pa

        with tempfile.TemporaryDirectory(prefix="tierflow-duckdb-") as scratch:
            con = duckdb.connect(str(Path(scratch) / "sql.duckdb"))
            try:
                con.execute(f"SET temp_directory = '{scratch}'")
                for name, frame in tables.items():
                    native = optimized(frame.to_native())
                    schema = pa.Schema.from_pandas(native._meta, preserve_index=False)
                    reader = pa.RecordBatchReader.from_batches(schema, self._batches(native))
                    con.register(f"_tf_stream_{name}", reader)
                    # Source names are identifiers (validated in the job config).
                    copy = f'CREATE TABLE "{name}" AS SELECT * FROM "_tf_stream_{name}"'  # noqa: S608
                    con.execute(copy)
                    con.unregister(f"_tf_stream_{name}")
                result = con.sql(query).arrow()
                table = result.read_all() if hasattr(result, "read_all") else result
            finally:
                con.close()
        partitions = max(
            1, min(len(self.client.scheduler_info()["workers"]), table.num_rows // 100_000 + 1)
        )
        return nw.from_native(dd.from_pandas(_to_pandas(table), npartitions=partitions))

    def persist(
        self, frame: nw.LazyFrame[Any], *, size_hint: int | None = None
    ) -> nw.LazyFrame[Any]:
        """Persist on the workers (they spill to disk; recomputed if a worker dies)."""
        from distributed import wait

        del size_hint  # the workers spill on their own

        native = self.client.persist(optimized(frame.to_native()))
        wait(native)
        return nw.from_native(native)

    def add_split_hash(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], seed: int, name: str
    ) -> nw.LazyFrame[Any]:
        """MD5 of the seed and key text, row by row in each partition."""
        import pandas as pd
        import pyarrow as pa

        native = frame.to_native()
        meta = native._meta.copy()
        meta[name] = pd.Series([], dtype=pd.ArrowDtype(pa.float64()))
        return nw.from_native(
            native.map_partitions(_hash_partition, list(columns), seed, name, meta=meta)
        )

    def add_bucket(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], buckets: int, name: str
    ) -> nw.LazyFrame[Any]:
        """Pandas' row hash of the key columns, modulo ``buckets``, per partition."""
        import pandas as pd
        import pyarrow as pa

        native = frame.to_native()
        meta = native._meta.copy()
        meta[name] = pd.Series([], dtype=pd.ArrowDtype(pa.int64()))
        return nw.from_native(
            native.map_partitions(_bucket_partition, list(columns), buckets, name, meta=meta)
        )

    def by_entity(
        self,
        frame: nw.LazyFrame[Any],
        keys: Sequence[str],
        fn: EntityFunction,
        *,
        reduce: Reduction | None = None,
    ) -> nw.LazyFrame[Any]:
        """Shuffle so each key's rows share a partition; ``fn`` per partition on Polars.

        With ``reduce``, its ``partial`` runs on Polars in each source partition (what
        moves is a few rows per key and partition: a hot key's rows are combined before
        the shuffle), and its ``combine`` after the shuffle, before ``fn``. Nothing is
        persisted: the source is counted once (an upper bound of what the partials hold)
        to size the shuffle's partitions at about :data:`ENTITY_CHUNK_ROWS` rows, as the
        partition count Dask gives a group-by's output (a tenth of its input's) would put
        most of a large input in one task.
        """
        native = optimized(frame.to_native())
        rows = int(self.client.compute(native.map_partitions(len).sum()).result())
        after = fn
        if reduce is not None:
            before = partial(_reduced, reducer=reduce.partial)
            native = native.map_partitions(_by_entity_partition, before,
                                           meta=_polars_meta(native, before))  # fmt: skip
            after = partial(_combined, combine=reduce.combine, fn=fn)
        parts = max(native.npartitions, -(-rows // ENTITY_CHUNK_ROWS))
        meta = _polars_meta(native, after)
        shuffled = native.shuffle(on=list(keys), npartitions=parts)
        return nw.from_native(shuffled.map_partitions(_by_entity_partition, after, meta=meta))

    def map_arrow(self, frame: nw.LazyFrame[Any], fn: ArrowFunction) -> nw.LazyFrame[Any]:
        """``fn`` per partition on the workers (one copy of ``fn`` in the task graph)."""
        import pandas as pd
        import pyarrow as pa

        native = optimized(frame.to_native())
        empty = pa.Table.from_pandas(native._meta, preserve_index=False)
        meta = fn(empty).to_pandas(types_mapper=pd.ArrowDtype)
        return nw.from_native(native.map_partitions(_arrow_partition, fn, meta=meta))

    def epoch_us(self, frame: nw.LazyFrame[Any], column: str, name: str) -> nw.LazyFrame[Any]:
        """Microseconds since the epoch as an Arrow-backed int64 (like every other column)."""
        import pandas as pd
        import pyarrow as pa

        native = frame.to_native()
        meta = native._meta.copy()
        meta[name] = pd.Series([], dtype=pd.ArrowDtype(pa.int64()))
        return nw.from_native(native.map_partitions(_epoch_partition, column, name, meta=meta))

    def from_epoch_us(self, frame: nw.LazyFrame[Any], column: str) -> nw.LazyFrame[Any]:
        """Arrow's int64 to timestamp cast per partition (pandas would take nanoseconds)."""
        import pandas as pd
        import pyarrow as pa

        native = frame.to_native()
        meta = native._meta.copy()
        meta[column] = pd.Series([], dtype=pd.ArrowDtype(pa.timestamp("us", tz="UTC")))
        return nw.from_native(native.map_partitions(_from_epoch_partition, column, meta=meta))

    def collect_arrow(self, frame: nw.LazyFrame[Any]) -> Any:
        """Gather the partitions' Arrow batches on the client."""
        import pyarrow as pa

        native = optimized(frame.to_native())
        schema = pa.Schema.from_pandas(native._meta, preserve_index=False)
        return pa.Table.from_batches(list(self._batches(native)), schema=schema)

    def count(self, frame: nw.LazyFrame[Any]) -> int:
        """Rows, counted on the cluster."""
        return int(self.client.compute(optimized(frame.to_native()).shape[0]).result())

    def write(
        self,
        frame: nw.LazyFrame[Any],
        sink: SinkConfig,
        path: str,
        *,
        commit_metadata: str | None = None,
    ) -> WriteResult:
        """Stream partitions from the workers into the Arrow sink."""
        import pyarrow as pa

        native = optimized(frame.to_native())
        schema = pa.Schema.from_pandas(native._meta, preserve_index=False)

        def partition_values() -> list[tuple[Any, ...]]:
            distinct = native[list(sink.partition_by)].drop_duplicates().compute()
            return [
                tuple(None if pd_isna(v) else v for v in row)
                for row in distinct.itertuples(index=False)
            ]

        return write_arrow(
            self._batches(native), schema, sink, path, partition_values=partition_values,
            commit_metadata=commit_metadata,
        )  # fmt: skip

    def close(self) -> None:
        """Close the client if this engine made it, and the LocalCluster if it started it."""
        if self._owned:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _connected_client(address: str) -> Any:
    """This process's default client when it is connected to ``address``, else None."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    connected = client.status == "running" and client.scheduler.address == address
    return client if connected else None


def pd_isna(value: Any) -> bool:
    """True for pandas' missing-value markers (NA, NaT, None)."""
    import pandas as pd

    return bool(pd.isna(value))
