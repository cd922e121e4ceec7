"""Streaming training data: blocks of a snapshot, the vectorised split, the fitting pass,
shards and their batches, on a small local Delta table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tierflow.config.training import TrainingConfig
from tierflow.engines.base import split_hash
from tierflow.train import ingest
from tierflow.train.data import TrainingData, prepare, training_columns

ROWS = 3000


def config(**changes) -> TrainingConfig:
    doc = {
        "name": "t", "snapshot": {"path": "gold/x"}, "features": ["a", "b", "flag", "c"],
        "categorical": ["c"], "label": "y", "split_key": "id", "model": {"name": "mlp"},
        "workers": 2, "batch_size": 32, "seed": 3,
    } | changes  # fmt: skip
    return TrainingConfig.model_validate(doc)


def table(rows: int = ROWS, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    a = rng.normal(3.0, 2.0, rows)
    label = pa.array((a + rng.normal(size=rows) > 3).astype(float))
    label = pa.compute.if_else(
        pa.array(np.arange(rows) % 97 == 0), pa.nulls(rows, pa.float64()), label
    )
    return pa.table({
        "id": pa.array(np.arange(rows) * 7 + 11),
        "a": a,
        "b": pa.array([None if i % 13 == 0 else float(i % 5) for i in range(rows)]),
        "flag": pa.array(np.arange(rows) % 3 == 0),
        "c": pa.array([["x", "y", "z", None][i % 4] for i in range(rows)]),
        "y": label,
    })  # fmt: skip


@pytest.fixture(scope="module")
def snapshot_path(tmp_path_factory) -> Path:
    from deltalake import WriterProperties, write_deltalake

    path = tmp_path_factory.mktemp("snap") / "t"
    data = table()
    props = WriterProperties(max_row_group_size=400)
    # Two commits: two files, each of several row groups.
    write_deltalake(str(path), data.slice(0, 1700), writer_properties=props)
    write_deltalake(str(path), data.slice(1700), mode="append", writer_properties=props)
    return path


def columns(cfg: TrainingConfig) -> list[str]:
    return training_columns(cfg)


def test_the_vectorised_split_is_the_split_hash_row_by_row() -> None:
    cfg = config()
    keys = pa.table({"id": pa.array([11, -4, None, 2**40, 0], pa.int64())})
    names = list(cfg.split)
    uppers = np.cumsum([cfg.split[n] for n in names])

    def by_hand(key: str) -> str:
        h = split_hash(cfg.seed, [key])
        return next((n for n, u in zip(names, uppers, strict=True) if h < u), names[-1])

    codes = ingest.split_codes(keys, 0, cfg)
    assert [ingest.SPLITS[c] for c in codes] == [by_hand(str(v)) for v in keys["id"].to_pylist()]
    strings = pa.table({"id": pa.array(["a", "é", "", None])})
    codes = ingest.split_codes(strings, 0, cfg)
    assert [ingest.SPLITS[c] for c in codes] == [by_hand(str(v)) for v in strings["id"].to_pylist()]
    # Without a key: the row's number in the snapshot.
    rows = pa.table({"z": pa.array(range(500))})
    codes = ingest.split_codes(rows.slice(100, 300), 100, config(split_key=None))
    assert [ingest.SPLITS[c] for c in codes] == [by_hand(str(i)) for i in range(100, 400)]
    hashes = ingest.split_hashes(cfg.seed, pa.array([str(i) for i in range(2000)]))
    assert hashes.tolist() == [split_hash(cfg.seed, [str(i)]) for i in range(2000)]


def test_a_split_column_decides_and_a_stray_value_is_refused() -> None:
    cfg = config(split_key=None, split_column="s")
    named = pa.table({"s": ["train", "test", "valid", "train"]})
    assert ingest.split_codes(named, 0, cfg).tolist() == [0, 2, 1, 0]
    with pytest.raises(ValueError, match="holdout"):
        ingest.split_codes(pa.table({"s": ["train", "holdout"]}), 0, cfg)


def test_blocks_cover_the_snapshot_once_in_file_and_row_group_order(snapshot_path) -> None:
    cfg = config()
    snap = ingest.open_snapshot(str(snapshot_path), 1, columns(cfg), shards=2)
    assert len(snap.files) == 2 and snap.rows == ROWS
    assert [b.first_row for b in snap.blocks] == list(
        np.cumsum([0] + [b.rows for b in snap.blocks[:-1]])
    )
    reader = ingest.Reader(snap)
    whole = pa.concat_tables(reader.read(b) for b in snap.blocks)
    ids = sorted(whole["id"].to_pylist())
    assert ids == sorted(table()["id"].to_pylist()) and whole.column_names == columns(cfg)
    # 9 row groups of at most 400 rows: fewer than 4 per shard for 2 shards, so blocks of
    # at most 3000 / 8 rows are cut from them, never across row groups...
    assert len(snap.blocks) >= 8 and max(b.rows for b in snap.blocks) <= 375
    # ...and for one shard, 4 row groups or more: blocks are whole row groups.
    one = ingest.open_snapshot(str(snapshot_path), 1, columns(cfg), shards=1)
    assert len(one.blocks) == 9 and all(b.start == 0 for b in one.blocks)


def test_the_fitting_pass_equals_fitting_the_whole_training_split(snapshot_path) -> None:
    cfg = config()
    snap = ingest.open_snapshot(str(snapshot_path), 1, columns(cfg), shards=2)
    half = len(snap.blocks) // 2
    summary = ingest.summarize(snap, range(half), cfg).merge(
        ingest.summarize(snap, range(half, len(snap.blocks)), cfg)
    )
    fitted = ingest.fit(snap, summary, cfg)
    reader = ingest.Reader(snap)
    train = pa.concat_tables(
        ingest.labelled_rows(reader.read(b), b.first_row, cfg).get(
            "train", table().schema.empty_table().select(columns(cfg))
        )
        for b in snap.blocks
    )
    assert fitted.boolean == ["flag"]
    assert fitted.categories == {"c": sorted(set(train["c"].drop_null().to_pylist()))}
    for name in ("a", "b"):
        values = np.asarray(train[name].drop_null().to_pylist())
        assert fitted.numeric[name] == pytest.approx((values.mean(), values.std()), rel=1e-12)
    counts = {n: sum(r.get(n, 0) for r in summary.rows.values()) for n in ingest.SPLITS}
    labelled = table().filter(pa.compute.is_valid(table()["y"])).num_rows
    assert sum(counts.values()) == labelled and counts["train"] == train.num_rows
    assert summary.label == (train.num_rows, pytest.approx(sum(train["y"].to_pylist())))


def test_shards_split_each_epoch_and_batches_are_the_same_for_the_same_seed(snapshot_path) -> None:
    cfg = config()
    snap = ingest.open_snapshot(str(snapshot_path), 1, columns(cfg), shards=2)
    summary = ingest.summarize(snap, range(len(snap.blocks)), cfg)
    pre = ingest.fit(snap, summary, cfg)
    train_rows = [summary.rows[i].get("train", 0) for i in range(len(snap.blocks))]
    first, second = ingest.deal(train_rows, cfg.seed, 0, 2), ingest.deal(train_rows, cfg.seed, 1, 2)
    assert first != second and first == ingest.deal(train_rows, cfg.seed, 0, 2)
    for dealt in (first, second):
        assert sorted(dealt[0] + dealt[1]) == [i for i, r in enumerate(train_rows) if r]
        held = [sum(train_rows[i] for i in shard) for shard in dealt]
        assert abs(held[0] - held[1]) <= max(train_rows)  # balanced to within a block
    steps = ingest.steps_in_epoch(train_rows, cfg.seed, 0, 2, 16)

    data = TrainingData(snap, pre, tuple(train_rows),
                        tuple(summary.codes[i] for i in range(len(snap.blocks))), {}, 0.0)  # fmt: skip

    def batches(shard: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(ingest.shard_batches(data, first[shard], cfg, seed=(3, 0, shard),
                                         local_batch=16, buffer_rows=100))  # fmt: skip

    zero, one = batches(0), batches(1)
    assert min(len(zero), len(one)) == steps
    assert all(x.shape == (16, pre.width) and y.shape == (16,) for x, y in zero + one)
    again = batches(0)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(zero, again, strict=True))
    # Every training row of the shard at most once; all of them but a last partial batch.
    rows = np.concatenate([x for x, _ in zero])
    assert len({r.tobytes() for r in rows}) == len(rows)
    assert sum(train_rows[i] for i in first[0]) - len(rows) < 16


def test_row_codes_pack_two_bits_a_row_and_a_one_split_block_is_one_number() -> None:
    rng = np.random.default_rng(5)
    for rows in (0, 1, 3, 4, 5, 1001):
        codes = rng.integers(0, 4, rows).astype(np.int8)
        packed = ingest.pack(codes)
        if rows > 1 and len(set(codes.tolist())) > 1:
            assert isinstance(packed, bytes) and len(packed) == -(-rows // 4)
        assert np.array_equal(ingest.unpack(packed, rows), codes) or ingest.unpack(
            packed, rows
        ) == int(codes[0])
    assert ingest.pack(np.zeros(5000, np.int8)) == 0


def test_readers_take_the_fitting_pass_codes_the_same_rows_as_hashing_again(snapshot_path) -> None:
    cfg = config(split={"train": 0.6, "valid": 0.3, "test": 0.1})
    data = prepare(str(snapshot_path), 1, cfg)
    reader = ingest.Reader(data.snapshot)
    for split in ingest.SPLITS:
        for index, block in enumerate(data.snapshot.blocks):
            again = ingest.labelled_rows(reader.read(block), block.first_row, cfg).get(split)
            kept = ingest.split_rows(reader, data, index, split)
            assert (again is None) == (kept is None)
            if kept is not None:
                assert kept.equals(again)
    # The matrix is the same whether a block or the whole split is transformed.
    chunks = list(ingest.split_chunks(data, range(len(data.snapshot.blocks)), cfg, "valid"))
    whole = pa.concat_tables(
        t for i in range(len(data.snapshot.blocks))
        if (t := ingest.split_rows(reader, data, i, "valid")) is not None
    )  # fmt: skip
    matrix = np.concatenate([x for x, _ in chunks])
    assert matrix.flags.c_contiguous and matrix.dtype == np.float32
    assert np.array_equal(matrix, data.preprocessor.transform(whole))
    assert sum(len(y) for _, y in chunks) == data.rows["valid"]


def test_the_matrix_is_float64_scaling_rounded_once_to_float32() -> None:
    from tierflow.train.data import Preprocessor

    rows = table(500)
    pre = Preprocessor({"a": (3.0, 2.0), "b": (1.5, 0.7)}, ["flag"], {"c": ["x", "z"]})
    a = (np.asarray(rows["a"].to_pylist(), dtype=np.float64) - 3.0) / 2.0
    b = np.array([np.nan if v is None else v for v in rows["b"].to_pylist()], dtype=np.float64)
    b = np.nan_to_num((b - 1.5) / 0.7, nan=0.0)
    flag = np.asarray(rows["flag"].to_pylist(), dtype=np.float64)
    c = rows["c"].to_pylist()
    onehot = [np.array([v == cat for v in c], dtype=np.float64) for cat in ("x", "z")]
    expected = np.stack([a, b, flag, *onehot], axis=1).astype(np.float32)
    got = pre.transform(rows)
    assert got.shape == (500, pre.width) and got.flags.c_contiguous
    assert np.array_equal(got, expected)
