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
    monkeypatch.setattr(polars_engine, "_ENTITY_BUCKET_ROWS", 40)
    assert rows(table) == whole
    assert len(whole) > 200
