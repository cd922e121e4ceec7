"""`tierflow spark-submit` (spark-submit plus our jars) runs a job on the standalone cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from deltalake import DeltaTable

pytestmark = [pytest.mark.spark, pytest.mark.spark_cluster, pytest.mark.slow]

JOB = Path(__file__).parent / "jobs" / "spark_submit_job.py"


def test_spark_submit_runs_on_the_standalone_master(spark_cluster, tmp_path):
    master = spark_cluster.endpoints()["master"]
    out, report = tmp_path / "agg", tmp_path / "report.json"
    tierflow = Path(sys.executable).parent / "tierflow"
    result = subprocess.run(
        [str(tierflow), "spark-submit", "--master", master, "--total-executor-cores", "1",
         "--executor-memory", "1g", str(JOB), str(out), str(report)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]

    info = json.loads(report.read_text())
    assert info["master"] == master
    # Besides the driver, an executor on the worker took part.
    assert info["executors"].count("127.0.0.1:") >= 2

    table = DeltaTable(str(out)).to_pyarrow_table().sort_by("bucket")
    assert table["n"].to_pylist() == [10_000] * 10
    assert table["total"].to_pylist() == [sum(range(b, 100_000, 10)) for b in range(10)]

    with urllib.request.urlopen(spark_cluster.endpoints()["ui"] + "/json/") as resp:
        state = json.load(resp)
    apps = {a["id"]: a for a in state["completedapps"] + state["activeapps"]}
    assert info["app_id"] in apps
    assert apps[info["app_id"]]["name"] == "tierflow-submit-test"
