"""Losing a Dask worker or a Spark executor mid-job still writes the correct table, once.

The Spark case is also the test of ``tierflow spark-submit`` on the standalone cluster
writing to the object store: one application there costs a minute on a two-core machine,
so it is submitted once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from tests.support import assert_same_rows, copy_data, normalise, project_for, read_table
from tierflow import storage
from tierflow.engines.base import EngineOptions
from tierflow.examples.retail import generate
from tierflow.jobs.runner import RunContext, run_job
from tierflow.services.process import read_stat

PROJECT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def big_data(tmp_path_factory):
    # Enough files that the job is still running when a process is killed; small enough
    # for a 2-core machine.
    return generate(tmp_path_factory.mktemp("faults") / "data", orders=12_000, files=16)


@pytest.fixture(scope="module")
def expected(big_data, tmp_path_factory):
    """The undisturbed result, from the single-node tier."""
    data = copy_data(big_data, tmp_path_factory.mktemp("expected") / "data")
    project = project_for(data)
    record = project.run(project.load_job("orders_clean"), engine="single", echo=False)
    assert record.status == "succeeded"
    return normalise(read_table(data / "silver" / "orders"))


@pytest.mark.dask
def test_killing_a_dask_worker_mid_job(big_data, expected, tmp_path):
    from tierflow.engines.dask_engine import DaskEngine

    data = copy_data(big_data, tmp_path / "data")
    project = project_for(data)
    job = project.load_job("orders_clean")
    plan = project.plan(job, "dask")
    engine = DaskEngine(EngineOptions(workers=2))
    killed: list[int] = []

    def on_stage(name: str) -> None:
        # The orders are validated and persisted on the workers by now: losing a worker
        # loses part of them, and Dask must recompute that part from the graph.
        if name.startswith("read and validate customers") and not killed:
            pids = engine.client.run(os.getpid)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    try:
        record = run_job(
            job,
            plan,
            engine,
            RunContext(project.data_dir, project.logs_dir),
            echo=False,
            on_stage=on_stage,
        )
    finally:
        engine.close()
    assert killed, "the worker was never killed"
    assert record.status == "succeeded"
    assert record.rows_quarantined == 10
    assert_same_rows(
        normalise(read_table(data / "silver" / "orders")), expected, "orders after a worker died"
    )


def _executor_pids(worker_session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is None or stat.session != worker_session or stat.state == "Z":
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"CoarseGrainedExecutorBackend" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.spark
@pytest.mark.spark_cluster
@pytest.mark.minio
def test_spark_submit_on_the_cluster_writes_to_the_store_through_a_killed_executor(
    big_data, expected, tmp_path, spark_cluster, services, minio, object_store
):
    """``tierflow spark-submit`` of ``jobs/run.py`` (the project's code shipped with
    ``--py-files``) runs as an application of the standalone master, whose executors write
    the table and its quarantine to the object store (S3A from the classpath the driver
    names, the keys in the job's Hadoop settings, never on a command line). An executor
    SIGKILLed mid-job is replaced, and the table equals the single-node tier's, without
    duplicates."""
    data = copy_data(big_data, tmp_path / "data")
    table = f"{object_store}/silver/orders"
    job = yaml.safe_load((PROJECT / "conf" / "jobs" / "orders_clean.yaml").read_text())
    job["sink"]["path"] = table
    job["quarantine"]["path"] = f"{object_store}/_quarantine"
    job_file = tmp_path / "orders_clean.yaml"
    job_file.write_text(yaml.safe_dump(job))
    worker = next(r for r in services.manager.records("spark") if r.name == "worker")
    master = spark_cluster.endpoints()["master"]
    subprocess.run(
        [sys.executable, "scripts/build_dist.py"], cwd=PROJECT, check=True, capture_output=True
    )
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tierflow"), "spark-submit", "--master", master,
         "--total-executor-cores", "1", "--executor-memory", "1g",
         # Spark waits spark.network.timeout (120 s by default) before it gives up on a
         # lost executor's blocks; a shorter one keeps the test short, not different.
         "--conf", "spark.network.timeout=10s", "--conf", "spark.network.timeoutInterval=5s",
         "--conf", "spark.executor.heartbeatInterval=2s",
         "--conf", "spark.sql.shuffle.partitions=4", "--py-files", "dist/tierflow.zip",
         "jobs/run.py", str(job_file), "--engine", "spark", "--data-dir", str(data)],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=os.environ | minio.client_env() | {"TIERFLOW_LOGS_DIR": str(tmp_path / "logs")},
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    killed = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not killed:
        executors = _executor_pids(worker.pid)
        text = "".join(output)
        # Kill once the job is past its first stage: work is done and partly persisted.
        if executors and "read and validate customers" in text:
            os.kill(executors[0], signal.SIGKILL)
            killed.append(executors[0])
        time.sleep(0.2)
    rc = proc.wait(timeout=400)
    reader.join(timeout=10)
    log = "".join(output)
    assert killed, f"no executor was killed while the job ran:\n{log[-3000:]}"
    assert rc == 0, log[-4000:]
    assert ": succeeded, 11,994 rows to s3://" in log, log[-3000:]
    (record,) = (json.loads(p.read_text()) for p in (tmp_path / "logs" / "runs").glob("*.json"))
    assert record["engine"].startswith(f"spark ({master}"), record["engine"]
    assert record["rows_quarantined"] == 10
    work = Path(spark_cluster.home) / "data" / "work"
    app = max(work.glob("app-*"), key=lambda p: p.stat().st_mtime)
    assert len([d for d in app.iterdir() if d.is_dir()]) >= 2, (
        "no replacement executor was launched"
    )
    # An application of the standalone master, not a local-mode run.
    with urllib.request.urlopen(spark_cluster.endpoints()["ui"] + "/json/") as resp:
        state = json.load(resp)
    assert app.name in {a["id"] for a in state["completedapps"] + state["activeapps"]}
    written = pa.table(storage.delta_table(table).to_pyarrow_table())
    ids = written["order_id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicate rows after the executor was lost"
    assert_same_rows(normalise(written), expected, "orders on the store after an executor died")
    # The bad rows, with their reasons, beside it on the store.
    quarantined = storage.delta_table(f"{object_store}/_quarantine/orders").to_pyarrow_table()
    assert quarantined.num_rows > 0 and "_tf_reason" in quarantined.column_names
    secret = Path(minio.client_env()["TIERFLOW_S3_SECRET_ACCESS_KEY_FILE"]).read_text().strip()
    assert secret not in log
