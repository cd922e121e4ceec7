"""The Spark tier: a local session by default, a ``--master``, or spark-submit's session.

Text sources are decoded by the shared decoder inside ``mapInArrow``, one file per task,
so quarantine decisions match the other tiers exactly; Parquet and Delta are read by
Spark natively. Delta is written (and MERGEd) through delta-spark, Parquet by Spark's
own writer; frames that several actions use are persisted with MEMORY_AND_DISK, so a
lost executor's share is recomputed from lineage rather than lost.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    entity_chunks,
    run_on_polars,
)
from tierflow.io.arrow_sinks import unified_parquet_schema
from tierflow.io.textdecode import (
    META_FILE,
    META_RECORD,
    CsvOptions,
    decode_file,
    output_schema,
)
from tierflow.io.write_plan import (
    ConcurrentWriteError,
    SchemaMismatchError,
    WriteAction,
    find_commit,
    plan_write,
    spark_user_metadata,
)
from tierflow.io.writers import writer_slot
from tierflow.storage import ObjectStore, adopt, for_workers

log = logging.getLogger(__name__)


def _decode_partition(
    batches: Iterator[Any],
    fmt: str,
    types: dict[str, str],
    extra: ExtraPolicy,
    csv: CsvOptions,
    store: ObjectStore | None = None,
) -> Iterator[Any]:
    adopt(store)
    for batch in batches:
        for path in batch.column(0).to_pylist():
            yield from decode_file(path, fmt, types, extra_columns=extra, csv=csv)


_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
_SHUFFLE_BYTES = 128 * 1024**2
_MAX_SHUFFLE_PARTITIONS = 4000


def _conflicts() -> tuple[type[BaseException], ...]:
    from delta import exceptions as e

    return (
        e.ConcurrentAppendException, e.ConcurrentDeleteReadException,
        e.ConcurrentDeleteDeleteException, e.ConcurrentTransactionException,
        e.ConcurrentWriteException, e.MetadataChangedException, e.ProtocolChangedException,
    )  # fmt: skip


@contextmanager
def _session_conf(spark: Any, key: str, value: str) -> Iterator[None]:
    """Set a runtime SQL setting for the block, then restore what was there."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def _delta_writer(native: Any, action: WriteAction, tag: str) -> Any:
    """A DataFrameWriter that carries out an append, overwrite or partition replacement."""
    writer = native.write.format("delta").option("userMetadata", tag)
    if action.partition_by:
        writer = writer.partitionBy(*action.partition_by)
    if action.schema_mode == "merge":
        writer = writer.option("mergeSchema", "true")
    elif action.schema_mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    if action.operation == "replace_partitions":
        return writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
    return writer.mode(action.operation)


def _delta_result(action: WriteAction, commit: Mapping[str, Any]) -> WriteResult:
    """Rows and MERGE counts from the write's own commit (Spark's metric names)."""
    metrics = {
        k: int(v)
        for k, v in (commit.get("operationMetrics") or {}).items()
        if isinstance(v, int) or (isinstance(v, str) and v.isdigit())
    }
    if action.operation == "merge":
        rows = metrics.get("numSourceRows", 0)
        details = {
            "num_target_rows_updated": metrics.get("numTargetRowsUpdated", 0),
            "num_target_rows_inserted": metrics.get("numTargetRowsInserted", 0),
            "num_source_rows": rows,
        }
    else:
        rows, details = metrics.get("numOutputRows", 0), {}
    return WriteResult(action.path, "delta", action.mode, rows, commit.get("version"), details)


def _parquet_rows(path: str, files: set[str] | None = None) -> tuple[int, set[str]]:
    import pyarrow.parquet as pq

    found = {str(p) for p in Path(path).rglob("*.parquet")} if not is_uri(path) else set()
    new = found - files if files is not None else found
    return sum(pq.read_metadata(f).num_rows for f in new), found


#: Functions broadcast by :meth:`SparkEngine.map_arrow`, unpickled once per Python worker
#: (Spark reuses its Python workers across tasks), by the token they were sent with.
_UNPICKLED: dict[str, Any] = {}


def unpickled(shared: Any) -> Any:
    """The function a broadcast ``(token, pickled)`` holds, unpickled once per worker."""
    token, pickled = shared.value
    if token not in _UNPICKLED:
        from pyspark.serializers import CloudPickleSerializer

        _UNPICKLED[token] = CloudPickleSerializer().loads(pickled)
    return _UNPICKLED[token]


class SparkEngine(Engine):
    """Runs a job on Spark with Delta and Kafka support (see :mod:`tierflow.spark`)."""

    name = "spark"

    def __init__(self, options: EngineOptions) -> None:
        from pyspark.sql import SparkSession

        from tierflow.spark import apply_object_store, get_spark

        # A session someone else started (a notebook's, a test's) is used, never stopped.
        existing = options.spark_session or SparkSession.getActiveSession()
        self._owned = existing is None
        self.spark = existing or get_spark("tierflow-job", master=options.spark_master)
        if existing is not None:
            apply_object_store(self.spark)
        self._restore: dict[str, str | None] = {}
        if options.input_bytes:
            self._size_shuffles(options.input_bytes)

    def _size_shuffles(self, input_bytes: int) -> None:
        """Shuffle partitions for this job's size; adaptive execution coalesces small ones.

        Spark's default of 200 is sized for nobody in particular: hundreds of tiny tasks
        for a small job, partitions of gigabytes for a large one. One partition per 128 MiB
        of input (at least two per core) keeps large shuffles in memory-sized pieces, and
        AQE merges what turns out small. A shared session gets its settings back at close.
        """
        cores = int(self.spark.sparkContext.defaultParallelism)
        partitions = max(2 * cores, min(_MAX_SHUFFLE_PARTITIONS, -(-input_bytes // _SHUFFLE_BYTES)))
        for key, value in {
            "spark.sql.shuffle.partitions": str(partitions),
            "spark.sql.adaptive.enabled": "true",
            "spark.sql.adaptive.coalescePartitions.enabled": "true",
        }.items():
            self._restore.setdefault(key, self.spark.conf.get(key, None))
            self.spark.conf.set(key, value)

    def describe(self) -> str:
        """``spark (master, version)``."""
        return f"spark ({self.spark.sparkContext.master}, {self.spark.version})"

    def read_text(
        self,
        files: Sequence[str],
        fmt: str,
        types: Mapping[str, str],
        *,
        extra_columns: ExtraPolicy,
        csv: CsvOptions,
    ) -> nw.LazyFrame[Any]:
        """Decode with the shared decoder in ``mapInArrow``, one file per task."""
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(output_schema(types))
        paths = self.spark.sparkContext.parallelize([(f,) for f in files], len(files)).toDF(
            "path string"
        )
        decode = functools.partial(
            _decode_partition, fmt=fmt, types=dict(types), extra=extra_columns, csv=csv,
            store=for_workers(list(files)),
        )  # fmt: skip
        return nw.from_native(paths.mapInArrow(decode, schema))

    def read_parquet(self, files: Sequence[str], *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """Spark's Parquet reader; with lineage, ``_tf_file`` from the file metadata column."""
        from pyspark.sql import functions as F

        frame = self._parquet_reader(files).parquet(*files)
        if not lineage:
            return nw.from_native(frame)
        file_path = F.regexp_replace(F.col("_metadata.file_path"), "^file:(//)?", "")
        return nw.from_native(
            frame.select(
                "*", file_path.alias(META_FILE), F.lit(None).cast("long").alias(META_RECORD)
            )
        )

    def _parquet_reader(self, files: Sequence[str]) -> Any:
        """A reader given the union of the files' schemas, read from their footers here.

        Files written before a column was added lack it. Spark's own ``mergeSchema`` runs
        a job over every footer; the driver reads them (the planner already has) and hands
        Spark the schema, so no inference job runs at all.
        """
        from pyspark.sql.pandas.types import from_arrow_schema

        try:
            schema = from_arrow_schema(unified_parquet_schema(files))
        except (TypeError, ValueError) as exc:  # a type Spark's converter does not know
            log.debug("reading %s with Spark's mergeSchema: %s", files[0], exc)
            return self.spark.read.option("mergeSchema", "true")
        return self.spark.read.schema(schema)

    def read_delta(self, path: str, version: int, *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """delta-spark at ``versionAsOf``."""
        from pyspark.sql import functions as F

        frame = self.spark.read.format("delta").option("versionAsOf", version).load(path)
        if not lineage:
            return nw.from_native(frame)
        return nw.from_native(
            frame.withColumn(META_FILE, F.lit(f"{path}@v{version}")).withColumn(
                META_RECORD, F.lit(None).cast("long")
            )
        )

    def from_arrow(self, table: Any) -> nw.LazyFrame[Any]:
        """A Spark DataFrame of the (small) Arrow table."""
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(table.schema)
        return nw.from_native(self.spark.createDataFrame(table.to_pylist(), schema))

    def sql(self, query: str, tables: Mapping[str, nw.LazyFrame[Any]]) -> nw.LazyFrame[Any]:
        """Spark SQL over temporary views named after the sources."""
        for name, frame in tables.items():
            frame.to_native().createOrReplaceTempView(name)
        return nw.from_native(self.spark.sql(query))

    def by_entity(
        self,
        frame: nw.LazyFrame[Any],
        keys: Sequence[str],
        fn: EntityFunction,
        *,
        reduce: Reduction | None = None,
    ) -> nw.LazyFrame[Any]:
        """``fn`` on Polars in the executors' Python, over chunks of whole entities.

        The frame is repartitioned by key and sorted within partitions.
        A partition is read as a stream of sorted batches and cut at entity boundaries
        into chunks of about :data:`ENTITY_CHUNK_ROWS` rows, so an executor's Python
        memory follows a chunk however large the partition (Spark's sort spills).
        """
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

        if reduce is not None:  # Spark's group-by combines map-side by itself
            frame = reduce.partial(frame)
        native = frame.to_native()
        schema = to_arrow_schema(native.schema)
        out = run_on_polars(fn, schema.empty_table()).schema
        names = list(keys)

        def apply(batches: Iterator[Any]) -> Iterator[Any]:
            for chunk in entity_chunks(batches, names, ENTITY_CHUNK_ROWS):
                yield from run_on_polars(fn, chunk).cast(out).to_batches()

        partitioned = native.repartition(*keys).sortWithinPartitions(*keys)
        return nw.from_native(partitioned.mapInArrow(apply, from_arrow_schema(out)))

    def map_arrow(self, frame: nw.LazyFrame[Any], fn: ArrowFunction) -> nw.LazyFrame[Any]:
        """``mapInArrow``; ``fn`` is broadcast, so each executor receives it once."""
        import pyarrow as pa
        from pyspark.serializers import CloudPickleSerializer
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

        native = frame.to_native()
        out = fn(to_arrow_schema(native.schema).empty_table()).schema
        # Pickled by value (a function defined anywhere travels), sent once per executor.
        payload = (uuid.uuid4().hex, CloudPickleSerializer().dumps(fn))
        shared = native.sparkSession.sparkContext.broadcast(payload)

        def apply(batches: Iterator[Any]) -> Iterator[Any]:
            run = unpickled(shared)  # by reference: the worker's own module and its cache
            for batch in batches:
                yield from run(pa.Table.from_batches([batch])).cast(out).to_batches()

        return nw.from_native(native.mapInArrow(apply, from_arrow_schema(out)))

    def persist(
        self, frame: nw.LazyFrame[Any], *, size_hint: int | None = None
    ) -> nw.LazyFrame[Any]:
        """Persist (memory, spilling to disk); the next action fills the cache."""
        del size_hint  # Spark spills on its own
        from pyspark import StorageLevel

        return nw.from_native(frame.to_native().persist(StorageLevel.MEMORY_AND_DISK))

    def release(self, frame: nw.LazyFrame[Any]) -> None:
        """Unpersist."""
        frame.to_native().unpersist()

    def add_split_hash(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], seed: int, name: str
    ) -> nw.LazyFrame[Any]:
        """Spark's built-in ``md5`` over the same text the other engines hash."""
        from pyspark.sql import functions as F

        parts = [F.lit(str(seed))] + [
            F.coalesce(F.col(c).cast("string"), F.lit("")) for c in columns
        ]
        digest = F.md5(F.concat_ws(HASH_SEPARATOR, *parts))
        bucket = F.conv(F.substring(digest, 1, 8), 16, 10).cast("double") / float(2**32)
        return nw.from_native(frame.to_native().withColumn(name, bucket))

    def add_bucket(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], buckets: int, name: str
    ) -> nw.LazyFrame[Any]:
        """Spark's xxhash64 of the key columns, modulo ``buckets``."""
        from pyspark.sql import functions as F

        bucket = F.pmod(F.xxhash64(*columns), F.lit(buckets)).cast("long")
        return nw.from_native(frame.to_native().withColumn(name, bucket))

    def epoch_us(self, frame: nw.LazyFrame[Any], column: str, name: str) -> nw.LazyFrame[Any]:
        """``unix_micros`` (Narwhals has no epoch conversion for Spark)."""
        from pyspark.sql import functions as F

        return nw.from_native(frame.to_native().withColumn(name, F.unix_micros(F.col(column))))

    def from_epoch_us(self, frame: nw.LazyFrame[Any], column: str) -> nw.LazyFrame[Any]:
        """``timestamp_micros`` (a cast of a long would read seconds)."""
        from pyspark.sql import functions as F

        native = frame.to_native()
        return nw.from_native(native.withColumn(column, F.timestamp_micros(F.col(column))))

    def collect_arrow(self, frame: nw.LazyFrame[Any]) -> Any:
        """``toArrow`` on the driver."""
        return frame.to_native().toArrow()

    def write(
        self,
        frame: nw.LazyFrame[Any],
        sink: SinkConfig,
        path: str,
        *,
        commit_metadata: str | None = None,
    ) -> WriteResult:
        """delta-spark for Delta (MERGE included), Spark's writer for Parquet."""
        from pyspark.sql.pandas.types import to_arrow_schema

        native = frame.to_native()
        arrow = to_arrow_schema(native.schema, timezone="UTC")
        if sink.format == "delta":
            # Spark's Delta log stores are safe only within one driver: the table is this
            # writer's alone while it writes (see tierflow.io.writers).
            with writer_slot(path, exclusive=True):
                action = plan_write(sink, path, arrow, commit_metadata=commit_metadata)
                return self._write_delta(native, action)
        return self._write_parquet(native, plan_write(sink, path, arrow))

    def _write_delta(self, native: Any, action: WriteAction) -> WriteResult:
        from delta.tables import DeltaTable
        from pyspark.errors import AnalysisException

        path, tag = action.path, spark_user_metadata(action)
        try:
            match action.operation:
                case "merge":
                    merge = (
                        DeltaTable.forPath(self.spark, path)
                        .alias("t")
                        .merge(native.alias("s"), action.merge_predicate())
                        .whenMatchedUpdateAll()
                        .whenNotMatchedInsertAll()
                    )
                    if action.schema_mode == "merge":
                        merge = merge.withSchemaEvolution()
                    # A MERGE has no writer options: its commit is tagged through the session.
                    with _session_conf(self.spark, _USER_METADATA, tag):
                        merge.execute()
                case "append" | "overwrite" | "replace_partitions":
                    _delta_writer(native, action, tag).save(path)
        except _conflicts() as exc:
            raise ConcurrentWriteError(
                f"{path}: another writer committed a conflicting change first "
                f"({type(exc).__name__}); nothing of this write was committed. Run it again."
            ) from exc
        except AnalysisException as exc:
            text = str(exc)
            if "schema" in text.lower():
                raise SchemaMismatchError(f"{path}: {text.splitlines()[0]}") from exc
            raise
        return _delta_result(action, find_commit(action))

    def _write_parquet(self, native: Any, action: WriteAction) -> WriteResult:
        path = action.path
        remote = is_uri(path)
        if remote:
            # No local footers to count from: count the output itself, persisted so that
            # the write does not compute it a second time.
            native = native.persist()
            rows = native.count()
        else:
            _, before = _parquet_rows(path)
        writer = native.write
        if action.partition_by:
            writer = writer.partitionBy(*action.partition_by)
        if action.operation == "replace_partitions":
            writer = writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
        else:
            writer = writer.mode(action.operation)
        writer.parquet(path)
        if remote:
            native.unpersist()
        elif action.operation == "replace_partitions":
            rows = native.count()
        else:
            rows, _ = _parquet_rows(path, None if action.operation == "overwrite" else before)
        return WriteResult(path, "parquet", action.mode, rows)

    def close(self) -> None:
        """Stop the session if this engine made it (a shared one gets its settings back)."""
        if self._owned:
            self.spark.stop()
            return
        for key, value in self._restore.items():
            if value is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, value)
