"""The tier planner: predictions per tier, the fastest tier that holds the job, clusters,
fixed thresholds, the explanation, the override; cgroup limits; calibration fits."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from tierflow.config.jobs import JobConfig
from tierflow.config.project import GiB, TierThresholds
from tierflow.jobs.calibration import DEFAULT_COSTS, Calibration, TierCost, _fit
from tierflow.jobs.planner import Resources, choose, choose_by_thresholds, plan_job
from tierflow.jobs.resources import Place, cgroup_limits
from tierflow.jobs.sources import SourceError, resolve_source

MEMORY = 16 * GiB
#: Costs of the shape measured on one machine: Polars fast and lean, Dask and Spark slow
#: to start and to run, Spark's workers lean on memory because they spill.
COSTS = {
    "single": TierCost(0.0, 0.05, 1.0, 300 * 2**20, 0.25 * GiB),
    "dask": TierCost(6.0, 0.8, 12.0, 350 * 2**20, 1.5 * GiB),
    "spark": TierCost(12.0, 1.5, 14.0, 1200 * 2**20, 0.3 * GiB),
}


def resources(
    memory: int = MEMORY,
    cores: int = 2,
    spark: Place | None = None,
    dask: Place | None = None,
    costs: dict | None = None,
) -> Resources:
    machine = Place("this machine", cores, memory, source="test")
    places = {
        "single": machine,
        "dask": dask or Place("LocalCluster on this machine", cores, memory, workers=cores),
        "spark": spark or Place("local[*] on this machine", cores, memory),
    }
    calibration = Calibration("test", costs or COSTS, source="test costs")
    return Resources(machine, places, dict.fromkeys(places, calibration), 0.5)


@pytest.mark.parametrize("size_gb", [0.01, 0.5, 2, 10, 20])
def test_on_one_machine_the_fastest_tier_that_holds_the_job_wins(size_gb):
    engine, reason, estimates = choose(int(size_gb * GiB), resources())
    by = {e.engine: e for e in estimates}
    assert engine == "single", reason
    assert by["single"].fits
    assert by["single"].seconds < min(by["dask"].seconds, by["spark"].seconds)
    assert "fastest predicted" in reason and "dask" in reason and "spark" in reason


def test_a_job_too_big_for_one_process_goes_to_a_tier_that_spills():
    # 40 GiB of input: Polars' predicted peak (10 GiB + its base) is above half of 16 GiB.
    engine, reason, estimates = choose(40 * GiB, resources())
    by = {e.engine: e for e in estimates}
    assert not by["single"].fits
    assert engine == "spark" and by["spark"].fits
    assert "single cannot hold it" in reason


def test_a_configured_cluster_holds_what_this_machine_cannot():
    small = 256 * 2**20  # the client host may use 256 MiB
    cluster = Place("spark spark://h1:7077", 2, 2 * GiB, workers=2, address="spark://h1:7077")
    plan_resources = resources(memory=small, spark=cluster)
    engine, reason, estimates = choose(600 * 2**20, plan_resources)
    by = {e.engine: e for e in estimates}
    assert engine == "spark", reason
    assert not by["single"].fits and not by["dask"].fits  # local tiers share the 256 MiB
    assert by["spark"].place.address == "spark://h1:7077"


def test_a_faster_cluster_wins_even_when_one_process_could_hold_the_job():
    big = Place("dask tcp://c:8786", 400, 1600 * GiB, workers=100, address="tcp://c:8786")
    engine, _, _ = choose(2000 * GiB, resources(memory=4096 * GiB, dask=big))
    assert engine == "dask"


def test_an_unreachable_cluster_is_never_chosen_and_says_why():
    gone = Place("spark spark://x:7077", 0, 0, 0, "spark://x:7077", "connection refused")
    engine, _, estimates = choose(GiB, resources(spark=gone))
    assert engine == "single"
    line = next(e for e in estimates if e.engine == "spark").describe()
    assert "unreachable (connection refused)" in line


def test_nothing_holds_the_job_then_the_most_memory_wins():
    tiny = resources(memory=64 * 2**20)
    engine, reason, _ = choose(GiB, tiny)
    assert "no tier is predicted to hold" in reason and engine in ("dask", "spark", "single")


@pytest.mark.parametrize(
    ("size_gb", "engine"),
    [(0.01, "single"), (0.99, "single"), (1.5, "dask"), (80, "dask"), (100.5, "spark")],
)
def test_fixed_thresholds_follow_the_checklist(size_gb, engine):
    thresholds = TierThresholds(single_max_gb=1.0, dask_max_gb=100.0)
    chosen, reason, _ = choose_by_thresholds(int(size_gb * GiB), thresholds, MEMORY)
    assert chosen == engine
    assert "GiB" in reason or "MiB" in reason


def test_fixed_single_node_limit_shrinks_with_the_machine():
    thresholds = TierThresholds(single_max_gb=1.0)
    chosen, reason, limit = choose_by_thresholds(GiB // 2, thresholds, 1 * GiB)
    assert chosen == "dask" and limit == GiB // 4
    assert "above the single-node limit of 0.25 GiB" in reason


def test_cgroup_v2_v1_and_hybrid_limits(tmp_path):
    proc = tmp_path / "cgroup"
    # v2 alone: the tightest level wins, "max" is no limit.
    v2 = tmp_path / "v2"
    (v2 / "slice" / "job").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "slice" / "memory.max").write_text("4294967296\n")
    (v2 / "slice" / "job" / "memory.max").write_text("max\n")
    (v2 / "slice" / "job" / "cpu.max").write_text("150000 100000\n")
    proc.write_text("0::/slice/job\n")
    assert cgroup_limits(v2, proc) == (4 * GiB, 1.5)
    # v1 controllers (and a hybrid layout's empty unified hierarchy beside them).
    v1 = tmp_path / "v1"
    (v1 / "memory" / "box").mkdir(parents=True)
    (v1 / "cpu").mkdir()
    (v1 / "unified").mkdir()
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    (v1 / "memory" / "box" / "memory.limit_in_bytes").write_text(str(2 * GiB))
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    proc.write_text("4:memory:/box\n1:cpu:/\n0::/\n")
    assert cgroup_limits(v1, proc) == (2 * GiB, None)
    (v1 / "memory" / "box" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert cgroup_limits(v1, proc) == (None, None)


def test_calibration_fit_separates_fixed_cost_from_work():
    points = [(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)]
    assert _fit(points) == pytest.approx((1.0, 2.0))
    assert _fit([(1.0, 5.0), (2.0, 4.0)])[1] == 0.0  # never a negative cost per byte
    assert set(DEFAULT_COSTS) == {"single", "dask", "spark"}


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
    plan = plan_job(job, data, TierThresholds(), resources())
    by_name = {s.name: s for s in plan.sources}
    assert by_name["p"].rows == 150_000 and len(by_name["p"].files) == 3
    assert by_name["p"].in_memory_bytes >= 150_000 * 16  # two 8-byte columns, uncompressed
    assert by_name["d"].version == 0 and by_name["d"].rows == 50_000  # pinned version, not latest
    assert by_name["c"].rows == pytest.approx(1001, rel=0.01)
    assert plan.engine == "single" and not plan.overridden and plan.rule == "measured"
    assert plan.total_in_memory_bytes == sum(s.in_memory_bytes for s in plan.sources)


def test_the_measured_plan_explains_every_tier(tmp_path):
    job, data = make_job(tmp_path)
    text = plan_job(job, data, TierThresholds(), resources()).explain()
    for expected in ("job sizes", "inputs:", "pq/*.parquet", "dt@v0", "~150,000 rows",
                     "Parquet footers", "Delta log", "estimated in-memory input:",
                     "this machine: 2 cores", "calibration: test costs", "single ", "dask ",
                     "spark ", "planner's choice: single (fastest predicted", "engine: single",
                     "SQL steps run in DuckDB"):  # fmt: skip
        assert expected in text, expected


def test_thresholds_replace_the_prediction_and_say_so(tmp_path):
    job, data = make_job(tmp_path)
    total_gb = plan_job(job, data, TierThresholds(), resources()).total_in_memory_bytes / GiB
    medium = plan_job(
        job, data, TierThresholds(single_max_gb=total_gb / 2, dask_max_gb=total_gb * 2),
        resources(),
    )  # fmt: skip
    assert medium.engine == "dask" and medium.rule == "thresholds"
    large = plan_job(
        job, data, TierThresholds(single_max_gb=total_gb / 4, dask_max_gb=total_gb / 2),
        resources(),
    )  # fmt: skip
    assert large.engine == "spark"
    text = large.explain()
    for expected in ("thresholds (conf/tierflow.yaml", "dask up to", "planner's choice: spark",
                     "engine: spark"):  # fmt: skip
        assert expected in text, expected


def test_override_is_recorded(tmp_path):
    job, data = make_job(tmp_path)
    plan = plan_job(job, data, TierThresholds(), resources(), engine="spark")
    assert plan.engine == "spark" and plan.recommended == "single" and plan.overridden
    assert "engine: spark (overridden with --engine)" in plan.explain()
    record = plan.as_dict()
    assert record["recommended"] == "single" and record["rule"] == "measured"
    assert {e["engine"] for e in record["estimates"]} == {"single", "dask", "spark"}


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
