"""The tier planner: small, medium and large inputs, its explanation, the override."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from tierflow.config.jobs import JobConfig
from tierflow.config.project import GiB, TierThresholds
from tierflow.jobs.planner import choose_engine, plan_job
from tierflow.jobs.sources import SourceError, resolve_source

MEMORY = 16 * GiB


@pytest.mark.parametrize(
    ("size_gb", "engine"),
    [
        (0.01, "single"),
        (0.99, "single"),
        (1.5, "dask"),
        (80, "dask"),
        (100.5, "spark"),
        (5000, "spark"),
    ],
)
def test_checklist_tiers(size_gb, engine):
    chosen, reason, _ = choose_engine(int(size_gb * GiB), TierThresholds(), MEMORY)
    assert chosen == engine
    assert "GiB" in reason or "MiB" in reason


def test_single_node_tier_shrinks_with_the_machine():
    # 0.5 GiB fits 1 GiB of the checklist, but not a quarter of a 1 GiB machine.
    chosen, reason, limit = choose_engine(GiB // 2, TierThresholds(), 1 * GiB)
    assert chosen == "dask"
    assert limit == GiB // 4
    assert "above the single-node limit of 0.25 GiB" in reason


def make_job(tmp_path: Path) -> tuple[JobConfig, Path]:
    data = tmp_path / "data"
    (data / "pq").mkdir(parents=True)
    table = pa.table({"id": list(range(50_000)), "v": [float(i) for i in range(50_000)]})
    for i in range(3):
        pq.write_table(table, data / "pq" / f"part-{i}.parquet")
    write_deltalake(str(data / "dt"), table)
    write_deltalake(str(data / "dt"), table, mode="append")
    (data / "c.csv").write_text("id\n" + "\n".join(str(i) for i in range(1000)) + "\n")
    job = JobConfig.model_validate({
        "name": "sizes",
        "sources": {
            "p": {"format": "parquet", "path": "pq/*.parquet"},
            "d": {"format": "delta", "path": "dt", "version": 0},
            "c": {"format": "csv", "path": "c.csv", "columns": {"id": {"type": "int64"}}},
        },
        "sql": "select 1",
        "sink": {"format": "delta", "path": "out"},
    })  # fmt: skip
    return job, data


def test_estimates_come_from_footers_delta_log_and_file_sizes(tmp_path):
    job, data = make_job(tmp_path)
    plan = plan_job(job, data, TierThresholds(), memory=MEMORY)
    by_name = {s.name: s for s in plan.sources}
    assert by_name["p"].rows == 150_000 and len(by_name["p"].files) == 3
    assert by_name["p"].in_memory_bytes >= 150_000 * 16  # two 8-byte columns, uncompressed
    assert by_name["d"].version == 0 and by_name["d"].rows == 50_000  # pinned version, not latest
    assert by_name["c"].rows == pytest.approx(1001, rel=0.01)
    assert plan.engine == "single" and not plan.overridden
    assert plan.total_in_memory_bytes == sum(s.in_memory_bytes for s in plan.sources)


def test_medium_and_large_through_thresholds_and_the_explanation(tmp_path):
    job, data = make_job(tmp_path)
    total_gb = plan_job(job, data, TierThresholds(), memory=MEMORY).total_in_memory_bytes / GiB
    medium = plan_job(
        job,
        data,
        TierThresholds(single_max_gb=total_gb / 2, dask_max_gb=total_gb * 2),
        memory=MEMORY,
    )
    assert medium.engine == "dask"
    large = plan_job(
        job,
        data,
        TierThresholds(single_max_gb=total_gb / 4, dask_max_gb=total_gb / 2),
        memory=MEMORY,
    )
    assert large.engine == "spark"
    text = large.explain()
    for expected in ("job sizes", "inputs:", "pq/*.parquet", "dt@v0", "~150,000 rows", "Parquet footers",
                     "Delta log", "estimated in-memory input:", "thresholds:", "dask up to",
                     "planner's choice: spark", "engine: spark"):  # fmt: skip
        assert expected in text, expected
    note = medium.explain()
    assert "SQL step runs in DuckDB on the client" in note


def test_override_is_recorded(tmp_path):
    job, data = make_job(tmp_path)
    plan = plan_job(job, data, TierThresholds(), engine="spark", memory=MEMORY)
    assert plan.engine == "spark" and plan.recommended == "single" and plan.overridden
    assert "engine: spark (overridden with --engine)" in plan.explain()
    assert plan.as_dict()["recommended"] == "single"


def test_missing_sources_are_clear_errors(tmp_path):
    job, data = make_job(tmp_path)
    with pytest.raises(SourceError, match="no parquet files match"):
        resolve_source("x", job.sources["p"].model_copy(update={"path": "nope/*.parquet"}), data)
    with pytest.raises(SourceError, match="no Delta table"):
        resolve_source(
            "x", job.sources["d"].model_copy(update={"path": "nope", "version": None}), data
        )
    with pytest.raises(SourceError):
        resolve_source("x", job.sources["d"].model_copy(update={"version": 99}), data)
