"""The single-node tier's feature windows in buckets of entities equal one pass.

Large inputs are computed bucket by bucket (memory follows one bucket); the buckets must
hold whole entities, so the result cannot depend on how many there are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.unit.test_stream_state import VIEW, events
from tierflow.engines import polars_engine
from tierflow.engines.polars_engine import PolarsEngine
from tierflow.features.batch import WINDOW_END, feature_rows

if TYPE_CHECKING:
    import pytest


def rows(table: object) -> list[tuple[object, ...]]:
    engine = PolarsEngine()
    out = engine.collect_arrow(feature_rows(engine.from_arrow(table), VIEW, engine))
    names = ["k", WINDOW_END, *[f.name for f in VIEW.features]]
    return sorted(tuple(r[n] for n in names) for r in out.to_pylist())


def test_buckets_of_entities_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    table = events(7, 600)
    whole = rows(table)
    # A bucket size far below the input's tile count: several buckets.
    monkeypatch.setattr(polars_engine, "ENTITY_CHUNK_ROWS", 40)
    assert rows(table) == whole
    assert len(whole) > 200


def test_entity_chunks_cut_sorted_batches_between_entities() -> None:
    """What a Spark partition's sorted stream is cut into: whole entities, in order."""
    import random

    import pyarrow as pa

    from tierflow.engines.base import entity_chunks

    rng = random.Random(4)
    # Two-column keys with nulls, one entity far larger than a chunk, many tiny ones.
    keys = sorted(
        [(rng.choice([None, "a", "b", "c"]), rng.randrange(40)) for _ in range(3000)]
        + [("h", 1)] * 900,
        key=lambda k: (k[0] is not None, k[0] or "", k[1]),
    )
    table = pa.table({"s": [k[0] for k in keys], "n": [k[1] for k in keys],
                      "i": list(range(len(keys)))})  # fmt: skip
    batches = table.to_batches(max_chunksize=97)
    chunks = list(entity_chunks(batches, ["s", "n"], 250))
    assert pa.concat_tables(chunks).column("i").to_pylist() == list(range(len(keys)))
    seen: set[tuple[object, object]] = set()
    for chunk in chunks:
        here = set(zip(chunk.column("s").to_pylist(), chunk.column("n").to_pylist(), strict=True))
        assert not here & seen  # no entity in two chunks
        seen |= here
        # Small entities: a chunk stops within one batch of the target size.
        assert chunk.num_rows < 250 + 97 + 30 or ("h", 1) in here
    assert len(chunks) > 10
