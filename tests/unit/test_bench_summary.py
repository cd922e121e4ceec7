"""The benchmark summary's arithmetic: time ratios whatever the unit, targets, charts."""

from __future__ import annotations

import pytest
from benchmarks.summary import TARGETS, bars_svg, time_ratio


def test_time_ratio_turns_rates_around():
    assert time_ratio({"metric": "rows/s", "tierflow": 50.0, "peer": 100.0}) == 2.0
    assert time_ratio({"metric": "ms/step", "tierflow": 6.0, "peer": 5.0}) == pytest.approx(1.2)
    assert time_ratio({"metric": "p99 ms", "tierflow": 1.0, "peer": 2.0}) == 0.5
    assert time_ratio({"tierflow_s": 3.0, "native_s": 1.5}) == 2.0
    assert time_ratio({"metric": "entities/s", "tierflow": 10.0, "peer": None}) is None


def test_targets_read_the_rows_they_name():
    results = {
        "training": [{"metric": "ms/step", "tierflow": 6.0, "peer": 5.0}],
        "delta": [
            {
                "metric": "rows/s",
                "tierflow": 90.0,
                "peer": 100.0,
                "peer_name": "pyarrow.parquet.write_table",
            }
        ],
    }
    by_name = {t.what: t.measure(results) for t in TARGETS}
    assert by_name["Ray Train DDP step / torchrun"] == (pytest.approx(1.2), False)
    assert by_name["Delta write throughput: tierflow / pyarrow.parquet"] == (
        pytest.approx(0.9),
        True,
    )
    assert by_name["Online read p99, 1 entity, ms"] == (None, None)  # not measured: no verdict


def test_bars_svg_draws_one_bar_per_ratio():
    svg = bars_svg("etl", [("a", 0.5), ("b", 1.5)])
    assert svg.startswith("<svg") and svg.count("<rect") == 3  # background + 2 bars
    assert "#2ca02c" in svg and "#d62728" in svg  # faster green, slower red


def test_a_stopped_scale_run_keeps_what_it_finished_for_the_same_code_only(tmp_path):
    import json

    from benchmarks.bench_scale import Partial

    path = tmp_path / "scale-partial.json"
    first = Partial(path)
    first.add("sf1-q1", {"seconds": {"polars": [0.4]}})
    again = Partial(path)  # started again, the code unchanged: continues
    assert again.raw == {"sf1-q1": {"seconds": {"polars": [0.4]}}}
    assert len(again.sittings) == 2
    kept = json.loads(path.read_text())
    path.write_text(json.dumps(kept | {"code": "other code"}))
    assert Partial(path).raw == {}  # other code: starts over


def test_a_scale_run_carried_in_the_repository_continues_and_training_is_not_in_its_digest(
    tmp_path, monkeypatch
):
    from benchmarks import bench_scale
    from benchmarks.bench_scale import Partial

    carried = tmp_path / "carried" / "scale-partial.json"
    carried.parent.mkdir()
    Partial(carried).add("sf1-q6", {"seconds": {"duckdb": [0.1]}})
    local = tmp_path / "local" / "scale-partial.json"
    local.parent.mkdir()
    again = Partial(local, carried=carried)  # nothing local: the carried file continues
    assert again.raw == {"sf1-q6": {"seconds": {"duckdb": [0.1]}}}
    again.add("sf1-q1", {"seconds": {"duckdb": [0.2]}})
    assert local.is_file() and set(Partial(local, carried=carried).raw) == {"sf1-q6", "sf1-q1"}
    again.finish()
    assert not local.exists() and not carried.exists()

    # Training's code is outside the digest, the rest of tierflow inside it.
    root = tmp_path / "root"
    for name in ("lib/tierflow/train/loop.py", "lib/tierflow/engines/x.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("a = 1\n")
    monkeypatch.setattr(bench_scale, "ROOT", root)
    before = bench_scale.code_digest()
    (root / "lib/tierflow/train/loop.py").write_text("a = 2\n")
    assert bench_scale.code_digest() == before
    (root / "lib/tierflow/engines/x.py").write_text("a = 2\n")
    assert bench_scale.code_digest() != before
    before = bench_scale.code_digest()
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "bench_training.py").write_text("b = 1\n")
    assert bench_scale.code_digest() == before  # another benchmark
    (root / "benchmarks" / "bench_scale.py").write_text("b = 1\n")
    assert bench_scale.code_digest() != before
