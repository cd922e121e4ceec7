"""The engine contract: what a tier must do so that a job runs on it unchanged.

A job talks to one :class:`Engine` and to Narwhals frames; it never asks which engine it
has. Engines read sources into Narwhals lazy frames (text through the shared decoder,
Parquet and Delta natively), run SQL, materialise a frame once, compute the portable
split hash, and write Parquet or Delta tables. Everything between reading and writing
(validation, transforms, splits) is engine-agnostic Narwhals code.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import narwhals as nw

from tierflow.config.jobs import EngineName, ExtraPolicy, SinkConfig

if TYPE_CHECKING:
    from tierflow.io.textdecode import CsvOptions

#: Separator between key values when hashing for splits (a control character, so it does
#: not occur in ordinary keys).
HASH_SEPARATOR = "\x1f"


def split_hash(seed: int, values: Sequence[str]) -> float:
    """The portable split hash in [0, 1): the first 32 bits of MD5 over seed and key text.

    Every engine implements exactly this (Spark with its built-in ``md5``), so a row lands
    in the same split whichever tier runs the job.
    """
    text = HASH_SEPARATOR.join([str(seed), *values])
    return int(hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:8], 16) / 2**32


@dataclass(frozen=True)
class EngineOptions:
    """How to reach (or start) the engine's cluster."""

    dask_scheduler: str | None = None
    spark_master: str | None = None
    spark_session: Any = None
    workers: int | None = None
    #: Bytes the planner found this job may use on this machine (the single-node tier
    #: spills frames it must keep above a quarter of it).
    memory_budget: int | None = None
    #: Estimated in-memory bytes of the job's inputs (sizes Spark's shuffle partitions).
    input_bytes: int | None = None


@dataclass(frozen=True)
class WriteResult:
    """What a sink write did."""

    path: str
    format: str
    mode: str
    rows: int
    version: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


EntityFunction = Callable[["nw.LazyFrame[Any]", "Engine"], "nw.LazyFrame[Any]"]
# Shrinks each key's rows without mixing keys (a group-by on the keys and more).
Reducer = Callable[["nw.LazyFrame[Any]"], "nw.LazyFrame[Any]"]


@dataclass(frozen=True)
class Reduction:
    """Shrinks each key's rows without mixing keys, in two steps an engine may place apart.

    ``partial`` of any group of rows gives rows that ``combine`` merges: for the same
    keys, ``combine(concat(partial(a), partial(b)))`` equals ``partial(a + b)``. A cluster
    runs ``partial`` where the rows are (a hot key arrives as a few rows per source
    partition, not as all of its rows) and ``combine`` once the key's rows are together.
    Both are Narwhals functions.
    """

    partial: Reducer
    combine: Reducer


#: A function of an Arrow table to an Arrow table of the same rows (a model's scores...).
ArrowFunction = Callable[[Any], Any]


#: Rows a distributed tier hands to one call of an entity function: its window steps hold
#: a few times their input in memory (about 1.3 GB for 2 M tiles).
ENTITY_CHUNK_ROWS = 2_000_000


def entity_chunks(batches: Iterable[Any], keys: Sequence[str], rows: int) -> Iterator[Any]:
    """Arrow tables of about ``rows`` rows, each of whole entities, from sorted batches.

    The batches are sorted by ``keys``; an entity larger than ``rows`` comes whole, in
    one table. The rows of the last entity seen are held back until its end shows: sorted input
    puts them at the end of what is held.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    held: list[Any] = []
    count = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        held.append(batch)
        count += batch.num_rows
        if count < rows:
            continue
        table = pa.Table.from_batches(held)
        last = table.slice(table.num_rows - 1)
        same = None
        for key in keys:
            column, value = table.column(key), last.column(key)[0]
            equal = pc.is_null(column) if not value.is_valid else pc.equal(column, value)
            same = equal if same is None else pc.and_(same, equal)
        tail = pc.sum(pc.fill_null(same, False)).as_py() or 0
        if tail == table.num_rows:  # one entity so far: keep reading
            continue
        yield table.slice(0, table.num_rows - tail)
        held = table.slice(table.num_rows - tail).to_batches()
        count = tail
    if count:
        yield pa.Table.from_batches(held)


def run_on_polars(fn: EntityFunction, table: Any) -> Any:
    """``fn`` on an Arrow table with the single-node engine; the result as Arrow.

    Strings come back as ``string`` (Polars hands out ``large_string``), as the
    distributed engines' Arrow exchanges expect.
    """
    import pyarrow as pa

    from tierflow.engines.polars_engine import PolarsEngine

    engine = PolarsEngine()
    result = fn(engine.from_arrow(table), engine).to_native().collect().to_arrow()
    fields = [
        pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type)
        for f in result.schema
    ]
    return result.cast(pa.schema(fields))


class Engine(ABC):
    """One tier. Implementations live in one module each; :func:`create_engine` picks."""

    name: ClassVar[EngineName]

    @abstractmethod
    def read_text(
        self,
        files: Sequence[str],
        fmt: str,
        types: Mapping[str, str],
        *,
        extra_columns: ExtraPolicy,
        csv: CsvOptions,
    ) -> nw.LazyFrame[Any]:
        """Decode CSV/JSON lines with :mod:`tierflow.io.textdecode`, one unit of work per file."""

    @abstractmethod
    def read_parquet(self, files: Sequence[str], *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """Read Parquet files (the union of their schemas).

        With ``lineage``, ``_tf_file`` is each row's file and ``_tf_record`` null (rows that
        may be quarantined say where they came from). Without, only the files' columns, in
        the engine's own fastest scan, so projections and filters reach the files.
        """

    @abstractmethod
    def read_delta(self, path: str, version: int, *, lineage: bool = True) -> nw.LazyFrame[Any]:
        """Read a Delta table at ``version``; with ``lineage``, ``_tf_file`` is ``path@vN``."""

    @abstractmethod
    def from_arrow(self, table: Any) -> nw.LazyFrame[Any]:
        """A small Arrow table (a lookup, a list of offsets) as a frame of this engine."""

    @abstractmethod
    def sql(self, query: str, tables: Mapping[str, nw.LazyFrame[Any]]) -> nw.LazyFrame[Any]:
        """Run a SQL statement over named frames."""

    @abstractmethod
    def persist(
        self, frame: nw.LazyFrame[Any], *, size_hint: int | None = None
    ) -> nw.LazyFrame[Any]:
        """Compute ``frame`` once and keep it, so several actions do not recompute it.

        ``size_hint`` is the planner's estimate of its in-memory bytes: an engine that
        would hold it in one process's memory keeps a large frame on disk instead.
        """

    def release(self, frame: nw.LazyFrame[Any]) -> None:  # noqa: B027 - optional hook
        """Drop what :meth:`persist` kept (default: nothing to do)."""

    @abstractmethod
    def add_split_hash(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], seed: int, name: str
    ) -> nw.LazyFrame[Any]:
        """Add column ``name`` = :func:`split_hash` of the key ``columns``."""

    @abstractmethod
    def add_bucket(
        self, frame: nw.LazyFrame[Any], columns: Sequence[str], buckets: int, name: str
    ) -> nw.LazyFrame[Any]:
        """Add column ``name`` in ``[0, buckets)``: a fast, engine-native hash of ``columns``.

        Stable within an engine (used to cut work into chunks), not across engines.
        """

    @abstractmethod
    def collect_arrow(self, frame: nw.LazyFrame[Any]) -> Any:
        """Compute ``frame`` into one Arrow table on the driver (for bounded results)."""

    @abstractmethod
    def write(
        self,
        frame: nw.LazyFrame[Any],
        sink: SinkConfig,
        path: str,
        *,
        commit_metadata: str | None = None,
    ) -> WriteResult:
        """Write ``frame`` to the table at ``path`` as ``sink`` says.

        Args:
            frame: The output.
            sink: Format, mode, partitioning, merge keys, schema evolution.
            path: Table location.
            commit_metadata: Text stored with a Delta commit (``userMetadata``).
        """

    def epoch_us(self, frame: nw.LazyFrame[Any], column: str, name: str) -> nw.LazyFrame[Any]:
        """Add column ``name``: timestamp ``column`` as microseconds since the epoch (UTC)."""
        return frame.with_columns(nw.col(column).dt.timestamp("us").alias(name))

    def from_epoch_us(self, frame: nw.LazyFrame[Any], column: str) -> nw.LazyFrame[Any]:
        """Replace int64 ``column`` (microseconds since the epoch) by a UTC timestamp."""
        return frame.with_columns(nw.col(column).cast(nw.Datetime("us", "UTC")))

    @abstractmethod
    def by_entity(
        self,
        frame: nw.LazyFrame[Any],
        keys: Sequence[str],
        fn: EntityFunction,
        *,
        reduce: Reduction | None = None,
    ) -> nw.LazyFrame[Any]:
        """``fn(reduce(rows))`` for groups of whole entities: every row of a key in one call.

        ``fn(frame, engine)`` is written with Narwhals expressions and may read its input
        several times. The single-node engine runs it in buckets of entities; distributed
        engines move each key's rows into one partition and run ``fn`` per partition on
        Polars (:func:`run_on_polars`).

        ``reduce`` runs where it is cheapest, and never holds the whole input at once:
        the single-node engine runs its ``partial`` per bucket (a bucket holds every row
        of its keys); Spark runs ``partial`` natively before moving rows (its group-by
        combines map-side); Dask runs ``partial`` per source partition, moves what it
        gives, and ``combine`` per partition after the move. Either way a hot key's rows
        never all reach one task.
        """

    @abstractmethod
    def map_arrow(self, frame: nw.LazyFrame[Any], fn: ArrowFunction) -> nw.LazyFrame[Any]:
        """``fn`` over ``frame``'s rows, a batch at a time, in the engine's own workers.

        ``fn`` takes an Arrow table and returns one of the same rows (and any columns);
        its output's schema is what ``fn`` returns for an empty table of the input's.
        It is sent to each worker once (a model inside it is loaded once per worker),
        and the single-node engine streams batches through it.
        """

    def count(self, frame: nw.LazyFrame[Any]) -> int:
        """Number of rows."""
        return int(frame.select(nw.len()).collect().item())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the cluster or session this engine started (default: nothing)."""

    def describe(self) -> str:
        """One line for logs and run records."""
        return self.name
