"""The real entry points: `tierflow plan|run|runs|profile|table`, and a run on the
distributed Dask scheduler. (`tierflow spark-submit` of jobs/run.py on the standalone
cluster: test_fault_tolerance, where the application also loses an executor.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.support import (
    copy_data,
)
from tierflow.examples.retail import generate

PROJECT = Path(__file__).resolve().parents[2]
TIERFLOW = str(Path(sys.executable).parent / "tierflow")


@pytest.fixture(scope="module")
def example_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("entry") / "data", orders=4_000, files=4)


@pytest.fixture(autouse=True)
def private_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_LOGS_DIR", str(tmp_path / "logs"))


def tierflow(
    *args: str, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TIERFLOW, *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT,
        env=dict(os.environ) | (env or {}),
    )  # fmt: skip


def test_plan_run_runs_profile_and_table_commands(example_data, tmp_path):
    data = copy_data(example_data, tmp_path / "data")
    logs = {"TIERFLOW_DATA_DIR": str(data)}
    plan = tierflow("plan", "orders_clean", env=logs)
    assert plan.returncode == 0, plan.stderr
    assert "planner's choice: single" in plan.stdout and "raw/orders/*.csv" in plan.stdout
    as_json = json.loads(
        tierflow("plan", "orders_clean", "--engine", "dask", "--json", env=logs).stdout
    )
    assert as_json["engine"] == "dask" and as_json["recommended"] == "single"

    run = tierflow("run", "orders_clean", env=logs)
    assert run.returncode == 0, run.stderr
    assert "succeeded on single" in run.stdout and "10 quarantined" in run.stdout
    # Stage lines go to stderr while the run progresses.
    assert "read and validate orders" in run.stderr and "write delta overwrite" in run.stderr
    run_id = run.stdout.split(":")[0]
    listing = tierflow("runs", "--job", "orders_clean", "--json", env=logs)
    records = json.loads(listing.stdout)
    record = next(r for r in records if r["run_id"] == run_id)
    assert record["status"] == "succeeded" and record["rows_quarantined"] == 10
    assert record["inputs"][0]["location"].endswith("raw/orders/*.csv")
    assert record["output"]["version"] == 0
    assert Path(record["log"]).read_text().count("done in") >= 4

    tierflow("run", "orders_clean", env=logs)  # a second version, so vacuum has something
    history = tierflow("table", "history", "silver/orders", env=logs)
    assert [json.loads(line)["version"] for line in history.stdout.splitlines()] == [1, 0]
    optimize = tierflow("table", "optimize", "silver/orders", env=logs)
    assert optimize.returncode == 0 and "numFilesRemoved" in optimize.stdout
    refused = tierflow("table", "vacuum", "silver/orders", "--retention-hours", "0", env=logs)
    assert refused.returncode == 2 and "below the 168h guard" in refused.stderr
    dry = tierflow(
        "table",
        "vacuum",
        "silver/orders",
        "--retention-hours",
        "0",
        "--allow-short-retention",
        env=logs,
    )
    assert dry.returncode == 0 and "would delete" in dry.stdout
    files_before = len(list((data / "silver" / "orders").rglob("*.parquet")))
    done = tierflow(
        "table",
        "vacuum",
        "silver/orders",
        "--retention-hours",
        "0",
        "--allow-short-retention",
        "--apply",
        env=logs,
    )
    assert done.returncode == 0 and "deleted" in done.stdout
    assert len(list((data / "silver" / "orders").rglob("*.parquet"))) < files_before
    assert DeltaTable(str(data / "silver" / "orders")).to_pyarrow_table().num_rows == 3_994

    report = tmp_path / "orders.html"
    prof = tierflow("profile", "silver/orders", "--target", "total", "--out", str(report), env=logs)
    assert prof.returncode == 0, prof.stderr
    html = report.read_text()
    for expected in (
        "3,994 rows",
        "corr with target",
        "<svg",
        "histogram",
        "top 6 values",
        "outliers",
        "planner&#x27;s choice",
    ):
        assert expected in html, expected


def test_malformed_job_yaml_is_a_clear_cli_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nsources:\n  a: {format: csv, path: x.csv, columns: {id: {type: int99}}}\nsink: {format: delta, path: o}\n"
    )
    result = tierflow("plan", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "sources.a.columns.id.type = 'int99'" in result.stderr


@pytest.mark.dask
@pytest.mark.slow
def test_a_dask_run_uses_the_distributed_scheduler(example_data, tmp_path, dask_scheduler):
    data = copy_data(example_data, tmp_path / "data")
    result = tierflow(
        "run",
        "orders_clean",
        "--engine",
        "dask",
        "--scheduler",
        dask_scheduler,
        "--data-dir",
        str(data),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"on dask ({dask_scheduler}, 1 workers)" in result.stdout
