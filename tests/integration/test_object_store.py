"""Tables on S3-compatible object storage (the session's MinIO), on every engine.

Jobs read and write ``s3://`` paths exactly as they do local ones: text from the data
folder into a Delta table on the store with its quarantine beside it, MERGE into it,
time travel back out of it into Parquet on the store, and that Parquet back into a local
Delta table. The store refuses anonymous and wrongly keyed clients, and a job with wrong
keys fails without writing anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import yaml

from tests.support import ENGINES, engine_options, normalise, project_for, read_table
from tierflow import storage

pytestmark = [pytest.mark.minio, pytest.mark.spark, pytest.mark.dask, pytest.mark.slow]

TIERFLOW = str(Path(sys.executable).parent / "tierflow")
PROJECT = Path(__file__).resolve().parents[2]

CSV = "k,name,v\n1,a,1.5\n2,b,2.5\n3,c,-1\n4,d,4.5\n"
COLUMNS = {
    "k": {"type": "int64", "nullable": False},
    "name": {"type": "string"},
    "v": {"type": "float64", "min": 0},
}


def s3_rows(uri: str, fmt: str = "delta", version: int | None = None) -> list[tuple]:
    """A table on the store, read back independently of the engines' readers."""
    if fmt == "delta":
        return normalise(pa.table(storage.delta_table(uri, version).to_pyarrow_table()))
    filesystem, inner = storage.arrow_location(uri)
    return normalise(pads.dataset(inner, filesystem=filesystem, format="parquet").to_table())


def write_job(folder: Path, name: str, doc: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **doc}))
    return str(path)


def csv_job(folder: Path, name: str, sink: dict, quarantine: dict) -> tuple[Path, str]:
    """The rows CSV in ``folder/data/raw`` and a job reading it into ``sink``."""
    data = folder / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "rows.csv").write_text(CSV)
    job = write_job(folder, name, {
        "sources": {"rows": {"format": "csv", "path": "raw/rows.csv", "columns": COLUMNS}},
        "sink": sink, "quarantine": quarantine,
    })  # fmt: skip
    return data, job


@pytest.mark.parametrize("engine", ENGINES)
def test_jobs_read_and_write_tables_on_the_store(
    engine, object_store, tmp_path, spark, dask_scheduler
):
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "rows.csv").write_text(CSV)
    project = project_for(data)
    options = engine_options(engine, spark=spark, dask_scheduler=dask_scheduler)
    table, quarantine = f"{object_store}/silver/rows", f"{object_store}/_quarantine"

    def run(name: str, doc: dict):
        job = project.load_job(write_job(tmp_path, name, doc))
        return project.run(job, engine=engine, options=options, echo=False)

    ingest = {
        "sources": {"rows": {"format": "csv", "path": "raw/rows.csv", "columns": COLUMNS}},
        "sink": {"format": "delta", "path": table, "mode": "overwrite"},
        "quarantine": {"path": quarantine, "max_bad_fraction": 0.5},
    }
    first = run("ingest", ingest)
    assert (first.rows_in, first.rows_quarantined, first.rows_out) == (4, 1, 3)
    assert first.output["version"] == 0
    assert s3_rows(table) == [(1, "a", 1.5), (2, "b", 2.5), (4, "d", 4.5)]
    bad = pa.table(storage.delta_table(f"{quarantine}/rows").to_pyarrow_table())
    assert bad.column("k").to_pylist() == [3]
    assert bad.column("_tf_reason").to_pylist() == ["range: v outside [0, inf]"]

    # A second drop MERGEd on the key: one row updated, one inserted (version 1).
    (data / "raw" / "rows.csv").write_text("k,name,v\n2,B,20.5\n5,e,5.5\n")
    merged = run("ingest", ingest | {"sink": {"format": "delta", "path": table, "mode": "merge",
                                              "merge_keys": ["k"]}})  # fmt: skip
    assert merged.output["version"] == 1
    assert s3_rows(table) == [(1, "a", 1.5), (2, "B", 20.5), (4, "d", 4.5), (5, "e", 5.5)]

    # Time travel out of the store into Parquet on the store ...
    parquet = f"{object_store}/gold/rows_v0"
    back = run("snapshot", {
        "sources": {"rows": {"format": "delta", "path": table, "version": 0}},
        "sink": {"format": "parquet", "path": parquet, "mode": "overwrite"},
    })  # fmt: skip
    assert back.rows_out == 3
    assert back.inputs[0]["location"] == f"{table}@v0"
    assert s3_rows(parquet, "parquet") == [(1, "a", 1.5), (2, "b", 2.5), (4, "d", 4.5)]

    # ... and that Parquet (listed from the store) into a local Delta table.
    local = run("download", {
        "sources": {"rows": {"format": "parquet", "path": parquet}},
        "sink": {"format": "delta", "path": "local/rows"},
    })  # fmt: skip
    assert local.rows_in == 3
    assert normalise(read_table(data / "local" / "rows")) == s3_rows(parquet, "parquet")


def test_command_line_jobs_and_table_maintenance_on_the_store(minio, object_store, tmp_path):
    """`tierflow run` and `tierflow table` in a fresh process that knows the store only
    from its environment (what `tierflow services env minio` prints)."""
    table = f"{object_store}/cli/rows"
    data, job = csv_job(
        tmp_path, "cli_rows", {"format": "delta", "path": table, "mode": "append"},
        {"path": f"{object_store}/cli/_quarantine", "max_bad_fraction": 0.5},
    )  # fmt: skip
    env = os.environ | minio.client_env() | {"TIERFLOW_DATA_DIR": str(data),
                                            "TIERFLOW_LOGS_DIR": str(tmp_path / "logs")}  # fmt: skip
    for _ in range(2):
        done = subprocess.run(
            [TIERFLOW, "run", job, "--engine", "single"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert len(s3_rows(table)) == 6

    history = subprocess.run(
        [TIERFLOW, "table", "history", table], env=env, capture_output=True, text=True, timeout=60
    )
    assert history.returncode == 0, history.stderr
    versions = [yaml.safe_load(line)["version"] for line in history.stdout.splitlines()]
    assert versions == [1, 0]
    compact = subprocess.run(
        [TIERFLOW, "table", "optimize", table], env=env, capture_output=True, text=True, timeout=60
    )
    assert compact.returncode == 0, compact.stderr
    assert storage.delta_table(table).version() == 2
    assert len(s3_rows(table)) == 6
    # The keys came from files; neither the logs nor the output carry them.
    secret = Path(minio.client_env()["TIERFLOW_S3_SECRET_ACCESS_KEY_FILE"]).read_text().strip()
    logged = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*") if p.is_file())
    assert secret not in logged + done.stdout + done.stderr + history.stdout


def test_the_store_refuses_clients_without_the_right_keys(minio, object_store, tmp_path):
    endpoint = minio.endpoints()["s3"].split("://")[1]
    bucket = minio.endpoints()["bucket"].removeprefix("s3://")
    anonymous = pafs.S3FileSystem(
        anonymous=True, endpoint_override=endpoint, scheme="http", region="us-east-1"
    )
    with pytest.raises(OSError, match=r"(?i)access ?denied|forbidden"):
        anonymous.get_file_info(pafs.FileSelector(bucket))

    table = f"{object_store}/refused/rows"
    data, job = csv_job(
        tmp_path, "refused", {"format": "delta", "path": table}, {"max_bad_fraction": 0.5}
    )
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret\n")
    env = os.environ | minio.client_env() | {
        "TIERFLOW_S3_SECRET_ACCESS_KEY_FILE": str(wrong), "TIERFLOW_DATA_DIR": str(data),
        "TIERFLOW_LOGS_DIR": str(tmp_path / "logs"),
    }  # fmt: skip
    done = subprocess.run(
        [TIERFLOW, "run", job, "--engine", "single"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    # The first request with the wrong key (the writer's marker, or the table's log).
    assert re.search(r"(?i)signature_?does_?not_?match|\b403\b", done.stderr), done.stderr
    assert not storage.is_delta_table(table)

    # Only one of the two keys is a configuration error that names both variables.
    half = os.environ | minio.client_env() | {"TIERFLOW_DATA_DIR": str(data)}
    del half["TIERFLOW_S3_SECRET_ACCESS_KEY_FILE"]
    done = subprocess.run(
        [TIERFLOW, "run", job, "--engine", "single"],
        env=half, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert (
        "TIERFLOW_S3_ACCESS_KEY_ID is set but TIERFLOW_S3_SECRET_ACCESS_KEY is not" in done.stderr
    )


@pytest.mark.kafka
def test_replay_from_and_event_log_into_the_store(
    minio, object_store, kafka_bootstrap, unique_name, tmp_path
):
    """`tierflow replay` reads a table on the store; `tierflow event-log` appends the
    topic to a Delta table on the store, each offset once."""
    import signal
    import time

    from deltalake import write_deltalake

    from tierflow.examples.flights import flights_table
    from tierflow.project import Project

    topic = Project.load().feature_views()["carrier_delays"].source.topic
    source = f"{object_store}/silver/flights"
    write_deltalake(source, flights_table((1,)), storage_options=storage.storage_options(source))
    env = os.environ | minio.client_env() | {
        "TIERFLOW_STREAM_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TIERFLOW_STREAM_TOPIC_PREFIX": unique_name("s3") + ".",
        "TIERFLOW_STREAM_GROUP_ID": unique_name("group"),
        "TIERFLOW_STREAM_EVENT_LOG_INTERVAL_S": "1",
    }  # fmt: skip
    replay = subprocess.run(
        [TIERFLOW, "replay", source, "--topic", topic, "--limit", "3000", "--partitions", "2",
         "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    sent = int(replay.stdout.split()[1].replace(",", ""))
    assert sent == 3000

    log = f"{object_store}/events/arrivals"
    output = tmp_path / "event-log.out"
    logger = subprocess.Popen(
        [TIERFLOW, "event-log", "--topic", topic, "--path", log, "--data-dir", str(tmp_path)],
        env=env, stdout=output.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if storage.is_delta_table(log) and len(s3_rows(log)) >= sent:
                break
            time.sleep(1)
    finally:
        logger.send_signal(signal.SIGTERM)
        logger.wait(timeout=60)
    assert logger.returncode == 0, output.read_text()[-3000:]
    logged = pa.table(storage.delta_table(log).to_pyarrow_table())
    assert logged.num_rows == sent
    offsets = set(zip(logged["_kafka_partition"].to_pylist(), logged["_kafka_offset"].to_pylist(),
                      strict=True))  # fmt: skip
    assert len(offsets) == sent
