"""Training data streamed from the snapshot: no process holds the whole table.

- **Blocks.** The snapshot's Parquet files at the recorded version, each row group cut
  into blocks of at most ``block_rows`` rows, in a fixed order (file, row group, offset).
  By default blocks are whole row groups, cut smaller only where the snapshot has fewer
  than 4 row groups per shard (a row group cut in k slices is decoded k times an epoch:
  with 16 a shard, a 2 M-row table's ingest went at half the speed). A block is the unit
  of the fitting pass, of the shards and of the shuffle; readers read only their blocks'
  row groups, only the run's columns.
- **Split.** A row's split is the portable split hash of the seed and its ``split_key``
  (:func:`split_codes`, vectorised: MD5 in DuckDB, the same values as
  :func:`tierflow.engines.base.split_hash`), else of its row number in the snapshot (in
  block order), or its ``split_column``'s value. Rows without a label take no part.
- **Fitting pass** (:func:`summarize`, :func:`fit`). Per block: labelled rows per split
  and, over its training rows, each numeric feature's count, mean and sum of squared
  deviations, each categorical feature's values and the label's sum; merged with Chan's
  pairwise update into the preprocessing (fitted on the training split only) and the
  training rows per block. On Ray the blocks are summarised by tasks on the cluster.
  Each row's split (or "no label") is kept too, two bits a row (:func:`pack`; a
  block of one split, one number): readers filter by it, they never hash again.
- **Shards and order** (:func:`deal`). The layout has ``shards`` shards (the config's
  ``workers``). In epoch ``e`` the blocks are permuted with ``seed + e`` and dealt, each
  to the shard with the fewest training rows so far; a shard's stream is its blocks'
  training rows in that order through a shuffle buffer seeded with ``(seed, e, shard)``
  (:func:`shard_batches`), cut into local batches of ``batch_size / shards`` rows. Global
  batch ``i`` is local batch ``i`` of every shard, in shard order, so it is the same rows
  whether a data-parallel worker reads each shard or one process reads them all. An
  epoch has as many steps as its smallest shard fills (the rest of the others' rows wait
  for the next epoch's permutation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tierflow.engines.base import HASH_SEPARATOR

if TYPE_CHECKING:
    from tierflow.config.training import TrainingConfig
    from tierflow.storage import ObjectStore
    from tierflow.train.data import Preprocessor, TrainingData

SPLITS = ("train", "valid", "test")
#: The code of a row without a label (it belongs to no split).
UNLABELLED = len(SPLITS)
#: Blocks per shard the default block size aims at at least (to balance and to shuffle).
BLOCKS_PER_SHARD = 4


@dataclass(frozen=True)
class Block:
    """A slice of one row group of one of the snapshot's files."""

    file: int  # index into :attr:`Snapshot.files`
    row_group: int
    start: int  # first row in the row group
    stop: int
    first_row: int  # the block's first row number in the snapshot

    @property
    def rows(self) -> int:
        """Rows in the block."""
        return self.stop - self.start


@dataclass(frozen=True)
class Snapshot:
    """The snapshot's files at one version, cut into blocks; what a reader needs."""

    version: int
    files: tuple[str, ...]  # absolute paths or URIs
    partitions: tuple[dict[str, Any], ...]  # each file's partition values
    blocks: tuple[Block, ...]
    columns: tuple[str, ...]  # the run's columns, each read once
    schema: pa.Schema
    store: ObjectStore | None = None  # handed to readers on other processes

    @property
    def rows(self) -> int:
        """Rows in the snapshot."""
        return sum(b.rows for b in self.blocks)


def open_snapshot(
    path: str, version: int, columns: Sequence[str], shards: int, block_rows: int | None = None
) -> Snapshot:
    """List the snapshot's files and row groups at ``version`` and cut them into blocks.

    Raises:
        ValueError: a column is missing, or the table uses deletion vectors or column
            mapping (its Parquet files alone are not its rows).
    """
    import pyarrow.parquet as pq

    from tierflow.storage import delta_table, for_workers

    table = delta_table(path, version)
    features = set(table.protocol().reader_features or [])
    unsupported = features & {"deletionVectors", "columnMapping"}
    if unsupported:
        raise ValueError(
            f"training snapshot {path} v{version} uses {', '.join(sorted(unsupported))}: "
            "training reads its Parquet files directly (rewrite the table without them)"
        )
    schema = pa.schema(table.schema())
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(f"training snapshot {path} v{version} has no column(s) {missing}")
    partition_columns = set(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    actions.sort(key=lambda a: str(a["path"]))
    root = table.table_uri.rstrip("/")
    files = tuple(f"{root}/{unquote(str(a['path']))}" for a in actions)
    partitions = tuple(
        {c: a.get(f"partition.{c}") for c in partition_columns if c in columns} for a in actions
    )
    row_groups: list[tuple[int, int, int]] = []  # (file, row group, rows)
    for index, uri in enumerate(files):
        meta = pq.ParquetFile(_source(uri)).metadata
        row_groups += [(index, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    total = sum(r for _, _, r in row_groups)
    size = block_rows or max(1, math.ceil(total / (shards * BLOCKS_PER_SHARD)))
    blocks: list[Block] = []
    first = 0
    for file, group, rows in row_groups:
        for start in range(0, rows, size):
            stop = min(rows, start + size)
            blocks.append(Block(file, group, start, stop, first + start))
        first += rows
    return Snapshot(version, files, partitions, tuple(blocks), tuple(columns), schema,
                    for_workers(path))  # fmt: skip


@dataclass
class Reader:
    """Reads blocks of a snapshot.

    It keeps the last row group it read: blocks of one row group often come in a row.
    """

    snapshot: Snapshot
    _last: tuple[tuple[int, int], pa.Table] | None = None
    _file: tuple[int, Any] | None = None  # (file index, its pyarrow ParquetFile)

    def read(self, block: Block) -> pa.Table:
        """The block's rows, the run's columns (partition columns filled in)."""
        import pyarrow.parquet as pq

        from tierflow.storage import adopt

        key = (block.file, block.row_group)
        if self._last is None or self._last[0] != key:
            adopt(self.snapshot.store)
            if self._file is None or self._file[0] != block.file:
                # One open file and its footer, parsed once, for its row groups in a row.
                self._file = (block.file, pq.ParquetFile(_source(self.snapshot.files[block.file])))
            parts = self.snapshot.partitions[block.file]
            stored = [c for c in self.snapshot.columns if c not in parts]
            group = self._file[1].read_row_group(block.row_group, columns=stored)
            for name, value in parts.items():
                kind = self.snapshot.schema.field(name).type
                group = group.append_column(
                    name, pa.array([value] * group.num_rows, pa.string()).cast(kind)
                )
            self._last = (key, _no_views(group.select(list(self.snapshot.columns))))
        return self._last[1].slice(block.start, block.rows)


def _source(uri: str) -> Any:
    """A snapshot file for pyarrow: opened on the store's filesystem, or a local path."""
    from tierflow.storage import arrow_location

    filesystem, inner = arrow_location(uri.removeprefix("file://"))
    return filesystem.open_input_file(inner) if filesystem is not None else inner


def _no_views(table: pa.Table) -> pa.Table:
    """String and binary views as plain (large) strings and binaries.

    Arrow's take and filter have no kernels for views (Polars writes strings as views).
    """
    wanted = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    if not any(f.type in wanted for f in table.schema):
        return table
    fields = [f.with_type(wanted.get(f.type, f.type)) for f in table.schema]
    return table.cast(pa.schema(fields))


# --- the split ---------------------------------------------------------------------------


def key_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value as Python's ``str()`` spells it (the text the split hash is over).

    Integers and strings are cast in Arrow (the same text); other types go through
    Python. A missing value is ``"None"``, as ``str(None)``.
    """
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = values.cast(pa.string())
        return pc.fill_null(text, "None")
    return pa.array([str(v) for v in values.to_pylist()], pa.string())


def split_hashes(seed: int, texts: pa.Array) -> np.ndarray:
    """The portable split hash of each text in [0, 1) (MD5's first 32 bits, in DuckDB)."""
    import duckdb

    with duckdb.connect() as con:
        con.register("texts", pa.table({"t": texts}))
        hashed = con.execute(
            "select ('0x' || left(md5($prefix || t), 8))::UBIGINT as h from texts",
            {"prefix": f"{seed}{HASH_SEPARATOR}"},
        ).fetchnumpy()["h"]
    return np.asarray(hashed, dtype=np.float64) / 2**32


def split_codes(table: pa.Table, first_row: int, config: TrainingConfig) -> np.ndarray:
    """Each row's split as an index into :data:`SPLITS`.

    Raises:
        ValueError: a ``split_column`` value that is not train, valid or test.
    """
    if config.split_column:
        named = table.column(config.split_column).cast(pa.string())
        found = pc.unique(named).to_pylist()
        if set(found) - set(SPLITS):
            raise ValueError(
                f"split column {config.split_column!r} must hold train (and valid, test), "
                f"found {sorted(map(str, found))}"
            )
        codes = pc.index_in(named, value_set=pa.array(SPLITS))
        return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int8)
    if config.split_key:
        texts = key_text(table.column(config.split_key))
    else:
        rows = np.arange(first_row, first_row + table.num_rows)
        texts = pa.array(rows).cast(pa.string())
    hashes = split_hashes(config.seed, texts)
    names = list(config.split)
    uppers = np.cumsum([config.split[n] for n in names])
    chosen = np.minimum(np.searchsorted(uppers, hashes, side="right"), len(names) - 1)
    return np.array([SPLITS.index(n) for n in names], dtype=np.int8)[chosen]


def row_codes(table: pa.Table, first_row: int, config: TrainingConfig) -> np.ndarray:
    """Each row's split as an index into :data:`SPLITS`, :data:`UNLABELLED` without a label."""
    codes = split_codes(table, first_row, config)
    labelled = pc.is_valid(table.column(config.label)).to_numpy(zero_copy_only=False)
    codes[~labelled] = UNLABELLED
    return codes


def by_split(table: pa.Table, codes: np.ndarray | int) -> dict[str, pa.Table]:
    """The block's labelled rows per split, given each row's code (or the block's one)."""
    if isinstance(codes, int):
        return {SPLITS[codes]: table} if codes != UNLABELLED and table.num_rows else {}
    parts = {}
    for index, name in enumerate(SPLITS):
        mask = codes == index
        if mask.all():
            return {name: table}
        if mask.any():
            parts[name] = table.filter(pa.array(mask))
    return parts


def labelled_rows(table: pa.Table, first_row: int, config: TrainingConfig) -> dict[str, pa.Table]:
    """The block's labelled rows per split (the split decided on the whole block)."""
    return by_split(table, row_codes(table, first_row, config))


def pack(codes: np.ndarray) -> bytes | int:
    """Row codes (0-3) in two bits each; a block of one code, the code alone."""
    if len(codes) and (codes == codes[0]).all():
        return int(codes[0])
    padded = np.zeros(-(-len(codes) // 4) * 4, dtype=np.uint8)
    padded[: len(codes)] = codes
    quads = padded.reshape(-1, 4)
    return (quads[:, 0] | quads[:, 1] << 2 | quads[:, 2] << 4 | quads[:, 3] << 6).tobytes()


def unpack(packed: bytes | int, rows: int) -> np.ndarray | int:
    """The inverse of :func:`pack`."""
    if isinstance(packed, int):
        return packed
    quads = np.frombuffer(packed, dtype=np.uint8)
    codes = np.stack([(quads >> shift) & 3 for shift in (0, 2, 4, 6)], axis=1)
    return codes.reshape(-1)[:rows].astype(np.int8)


# --- the fitting pass ----------------------------------------------------------------------


@dataclass
class Summary:
    """What a fitting pass learned from some blocks (mergeable)."""

    rows: dict[int, dict[str, int]] = field(default_factory=dict)  # block -> split -> rows
    codes: dict[int, bytes | int] = field(default_factory=dict)  # block -> packed row codes
    numeric: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # n, mean, m2
    categories: dict[str, set[str]] = field(default_factory=dict)
    label: tuple[int, float] = (0, 0.0)  # training rows with a label, their sum

    def merge(self, other: Summary) -> Summary:
        """Both summaries in one (Chan et al.'s update for the means and squares)."""
        numeric = dict(self.numeric)
        for name, (nb, mb, m2b) in other.numeric.items():
            na, ma, m2a = numeric.get(name, (0, 0.0, 0.0))
            n = na + nb
            if n == 0:
                numeric[name] = (0, 0.0, 0.0)
                continue
            delta = mb - ma
            numeric[name] = (n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n)
        categories = {k: set(v) for k, v in self.categories.items()}
        for name, values in other.categories.items():
            categories.setdefault(name, set()).update(values)
        label = (self.label[0] + other.label[0], self.label[1] + other.label[1])
        return Summary({**self.rows, **other.rows}, {**self.codes, **other.codes}, numeric,
                       categories, label)  # fmt: skip


def summarize(snapshot: Snapshot, indices: Sequence[int], config: TrainingConfig) -> Summary:
    """The fitting pass over some of the snapshot's blocks (see the module doc)."""
    reader = Reader(snapshot)
    total = Summary()
    for index in indices:
        block = snapshot.blocks[index]
        rows = reader.read(block)
        codes = row_codes(rows, block.first_row, config)
        parts = by_split(rows, codes)
        one = Summary(rows={index: {n: t.num_rows for n, t in parts.items()}},
                      codes={index: pack(codes)})  # fmt: skip
        train = parts.get("train")
        if train is not None:
            for name in config.features:
                column = train.column(name)
                if name in config.categorical:
                    values = pc.unique(pc.drop_null(column.cast(pa.string()))).to_pylist()
                    one.categories[name] = set(values)
                elif not pa.types.is_boolean(column.type):
                    values = pc.drop_null(column.cast(pa.float64())).to_numpy()
                    mean = float(values.mean()) if len(values) else 0.0
                    m2 = float(((values - mean) ** 2).sum()) if len(values) else 0.0
                    one.numeric[name] = (len(values), mean, m2)
            label = train.column(config.label).cast(pa.float64()).to_numpy()
            one.label = (len(label), float(label.sum()))
        total = total.merge(one)
    return total


def fit(snapshot: Snapshot, summary: Summary, config: TrainingConfig) -> Preprocessor:
    """The preprocessing from a whole snapshot's summary.

    Numbers are standardised (population standard deviation), booleans 0/1, categories
    one-hot over those seen in training.
    """
    from tierflow.train.data import Preprocessor

    numeric: dict[str, tuple[float, float]] = {}
    boolean: list[str] = []
    categories: dict[str, list[str]] = {}
    for name in config.features:
        if name in config.categorical:
            categories[name] = sorted(summary.categories.get(name, set()))
        elif pa.types.is_boolean(snapshot.schema.field(name).type):
            boolean.append(name)
        else:
            n, mean, m2 = summary.numeric.get(name, (0, 0.0, 0.0))
            std = math.sqrt(m2 / n) if n else 0.0
            good = n and math.isfinite(std) and std > 0
            numeric[name] = (mean if math.isfinite(mean) else 0.0, std if good else 1.0)
    return Preprocessor(numeric, boolean, categories)


# --- shards and batches --------------------------------------------------------------------


def deal(train_rows: Sequence[int], seed: int, epoch: int, shards: int) -> list[list[int]]:
    """Epoch ``epoch``'s blocks of each shard, in reading order (see the module doc)."""
    order = np.random.default_rng(seed + epoch).permutation(len(train_rows))
    dealt: list[list[int]] = [[] for _ in range(shards)]
    held = [0] * shards
    for index in order.tolist():
        if train_rows[index] == 0:
            continue
        shard = min(range(shards), key=lambda s: (held[s], s))
        dealt[shard].append(index)
        held[shard] += train_rows[index]
    return dealt


def steps_in_epoch(
    train_rows: Sequence[int], seed: int, epoch: int, shards: int, local_batch: int
) -> int:
    """Global batches in epoch ``epoch``: as many as its smallest shard fills."""
    dealt = deal(train_rows, seed, epoch, shards)
    return min(sum(train_rows[i] for i in blocks) for blocks in dealt) // local_batch


def split_rows(reader: Reader, data: TrainingData, index: int, split: str) -> pa.Table | None:
    """Block ``index``'s labelled rows of ``split`` (by the codes of the fitting pass)."""
    block = data.snapshot.blocks[index]
    codes = unpack(data.codes[index], block.rows)
    if isinstance(codes, int) and codes != SPLITS.index(split):
        return None  # not read at all
    return by_split(reader.read(block), codes).get(split)


def shard_batches(
    data: TrainingData,
    blocks: Sequence[int],
    config: TrainingConfig,
    *,
    seed: Any,
    local_batch: int,
    buffer_rows: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A shard's training rows as ``(features, labels)`` batches of ``local_batch`` rows.

    Blocks are read in the order given; their training rows pass through a shuffle
    buffer: when a block arrives the buffered rows are permuted (``seed``) and batches
    are taken from the front while more than ``buffer_rows`` rows stay behind. What is
    left at the end is shuffled once more and cut; a last partial batch is dropped.
    """
    rng = np.random.default_rng(seed)
    reader = Reader(data.snapshot)
    held_x: list[np.ndarray] = []
    held_y: list[np.ndarray] = []

    def take(keep: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        x = held_x[0] if len(held_x) == 1 else np.concatenate(held_x)
        y = held_y[0] if len(held_y) == 1 else np.concatenate(held_y)
        order = rng.permutation(len(y))
        # np.take along rows: half the time of fancy indexing for a wide float32 matrix.
        x, y = np.take(x, order, axis=0), np.take(y, order)
        cut = max(0, (len(y) - keep) // local_batch) * local_batch
        for start in range(0, cut, local_batch):
            yield x[start : start + local_batch], y[start : start + local_batch]
        held_x[:], held_y[:] = [x[cut:]], [y[cut:]]

    for index in blocks:
        train = split_rows(reader, data, index, "train")
        if train is None:
            continue
        held_x.append(data.preprocessor.transform(train))
        held_y.append(labels(train, config))
        if sum(len(y) for y in held_y) >= buffer_rows + local_batch:
            yield from take(buffer_rows)
    if held_y and sum(len(y) for y in held_y) >= local_batch:
        yield from take(0)


def split_chunks(
    data: TrainingData, blocks: Sequence[int], config: TrainingConfig, split: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split's rows in ``blocks`` as ``(features, labels)``, a block at a time."""
    reader = Reader(data.snapshot)
    for index in blocks:
        part = split_rows(reader, data, index, split)
        if part is not None:
            yield data.preprocessor.transform(part), labels(part, config)


def labels(table: pa.Table, config: TrainingConfig) -> np.ndarray:
    """The label column as float32."""
    values = table.column(config.label).cast(pa.float32())
    return np.array(values.to_numpy(), dtype=np.float32)  # a copy: tensors want writable arrays
