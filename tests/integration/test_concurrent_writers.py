"""Many writers, one Delta table, some of them SIGKILLed: the table stays whole.

Six writer processes (``tests/concurrent_writer.py``: four appending, two merging, all
through tierflow's delta-rs writer) and, on local disk, a Spark writer in this process
write batches into one table while two of the processes are killed mid-run. Afterwards:
the log's versions are contiguous and every commit file parses, the table reads, every
acknowledged batch is there exactly once and whole, nothing is there twice, and
conflicts between writers surfaced as retryable errors. On MinIO the same with delta-rs
writers; a Spark write there while another writer holds the table is refused (Spark's S3
log store is single-driver), and so is a delta-rs write while a Spark writer holds it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from tests.concurrent_writer import acknowledge, batch, sink

PROJECT = Path(__file__).resolve().parents[2]
ROWS = 10
WRITERS = {"a1": ("append", 20), "a2": ("append", 20), "a3": ("append", 14),
           "a4": ("append", 14), "m1": ("merge", 10), "m2": ("merge", 10)}  # fmt: skip
KILLED = ("a1", "m2")

pytestmark = [pytest.mark.slow]


def acked(acks: Path) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
    """``{(writer, batch): version}`` and ``{writer: conflicts}`` from the ack file."""
    done: dict[tuple[str, int], int] = {}
    conflicts: dict[str, int] = {}
    for line in acks.read_text().splitlines() if acks.exists() else []:
        name, what, value = line.split()
        if what == "conflicts":
            conflicts[name] = int(value)
        else:
            done[(name, int(what))] = int(value)
    return done, conflicts


def run_writers(table: str, acks: Path, env: dict[str, str]) -> dict[str, subprocess.Popen]:
    """Start the six writers; kill two of them once each has written a few batches."""

    def start(name: str, mode: str, batches: int) -> subprocess.Popen:
        argv = [sys.executable, "-m", "tests.concurrent_writer", table, name, mode,
                str(batches), str(ROWS), str(acks)]  # fmt: skip
        return subprocess.Popen(argv, cwd=PROJECT, env=env, stderr=subprocess.PIPE, text=True)

    procs = {name: start(name, mode, n) for name, (mode, n) in WRITERS.items()}
    deadline = time.monotonic() + 240
    pending = set(KILLED)
    while pending and time.monotonic() < deadline:
        done, _ = acked(acks)
        for name in list(pending):
            if sum(1 for w, _ in done if w == name) >= 3:
                procs[name].send_signal(signal.SIGKILL)
                pending.discard(name)
        time.sleep(0.02)
    assert not pending, f"{pending} never wrote 3 batches"
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        if name not in KILLED:
            assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        else:
            assert proc.returncode == -signal.SIGKILL
    return procs


def check_table(table: str, log_files: list[tuple[str, str]], acks: Path) -> None:
    """The table after the run (see the module's description).

    ``log_files``: ``(name, text)`` of every file in ``_delta_log``.
    """
    from tierflow.storage import delta_table

    commits = sorted(int(name.removesuffix(".json")) for name, _ in log_files
                     if name.endswith(".json") and name[:-5].isdigit())  # fmt: skip
    assert commits == list(range(len(commits))), f"versions not contiguous: {commits}"
    for name, text in log_files:
        if name.endswith(".json"):
            actions = [json.loads(line) for line in text.splitlines() if line.strip()]
            assert actions, f"empty commit {name}"
    dt = delta_table(table)
    assert dt.version() == commits[-1]
    data = pa.table(dt.to_pyarrow_table()).to_pydict()
    keys = Counter(data["key"])
    assert max(keys.values()) == 1, "a row is in the table twice"
    per_batch = Counter((w, b) for w, b in zip(data["writer"], data["batch"], strict=True))
    done, conflicts = acked(acks)
    for key in done:
        assert per_batch[key] == ROWS, f"acknowledged batch {key} has {per_batch[key]} rows"
    versions = list(done.values())
    assert len(set(versions)) == len(versions), "two writes acknowledged the same version"
    unacked = {k: n for k, n in per_batch.items() if k not in done and k[0] != "seed"}
    for key, n in unacked.items():
        # A writer killed after its commit and before its acknowledgement: whole, once.
        assert key[0] in KILLED and n == ROWS, (key, n)
    for name in WRITERS:
        if name not in KILLED:
            assert conflicts.get(name) is not None, f"{name} did not finish"
            assert sum(1 for w, _ in done if w == name) == WRITERS[name][1]
    # One commit per write: the seed, every acknowledged one, and the killed writers' last.
    assert dt.version() + 1 == 1 + len(done) + len(unacked)


def seed(table: str) -> None:
    from tierflow.engines.polars_engine import PolarsEngine

    engine = PolarsEngine()
    engine.write(engine.from_arrow(batch("seed", 0, 1)), sink("append", table), table)


@pytest.mark.spark
def test_writers_on_local_disk_with_spark_and_kills_leave_every_batch_once(tmp_path, spark):
    from tierflow.engines.base import EngineOptions
    from tierflow.engines.spark_engine import SparkEngine

    table = str(tmp_path / "events")
    acks = tmp_path / "acks"
    seed(table)
    engine = SparkEngine(EngineOptions(spark_session=spark))
    spark_acks: list[int] = []

    def spark_writer() -> None:
        for number in range(3):
            frame = engine.from_arrow(batch("spark", number, ROWS))
            result = engine.write(frame, sink("append", table), table)
            spark_acks.append(result.version)
            acknowledge(acks, f"spark {number} {result.version}")

    thread = threading.Thread(target=spark_writer)
    thread.start()
    run_writers(table, acks, dict(os.environ))
    thread.join(timeout=300)
    assert len(spark_acks) == 3
    log = Path(table) / "_delta_log"
    check_table(table, [(p.name, p.read_text()) for p in log.glob("*.json")], acks)
    _, conflicts = acked(acks)
    # MERGEs read the table; an append committed meanwhile is a conflict, retried.
    assert sum(conflicts.values()) > 0, conflicts


@pytest.mark.minio
def test_writers_on_minio_with_kills_leave_every_batch_once(tmp_path, object_store, minio):
    from tierflow.storage import arrow_location

    table = f"{object_store}/events"
    acks = tmp_path / "acks"
    seed(table)
    run_writers(table, acks, dict(os.environ) | minio.client_env())
    filesystem, base = arrow_location(f"{table}/_delta_log")
    from pyarrow.fs import FileSelector

    files = []
    for info in filesystem.get_file_info(FileSelector(base)):
        if not info.base_name.endswith(".json"):
            continue
        with filesystem.open_input_stream(info.path) as stream:
            files.append((info.base_name, stream.read().decode()))
    check_table(table, files, acks)


@pytest.mark.minio
@pytest.mark.spark
def test_spark_never_shares_a_table_on_an_object_store(object_store, spark):
    from tierflow.engines.base import EngineOptions
    from tierflow.engines.polars_engine import PolarsEngine
    from tierflow.engines.spark_engine import SparkEngine
    from tierflow.io.write_plan import ConcurrentWriteError
    from tierflow.io.writers import writer_slot

    table = f"{object_store}/shared"
    seed(table)
    spark_engine = SparkEngine(EngineOptions(spark_session=spark))
    polars = PolarsEngine()
    with writer_slot(table, exclusive=False):  # a delta-rs writer is writing
        with pytest.raises(ConcurrentWriteError, match="single-driver") as refused:
            spark_engine.write(
                spark_engine.from_arrow(batch("s", 0, 3)), sink("append", table), table
            )
        assert "rs writer" in str(refused.value) and "run it again" in str(refused.value)
        # delta-rs writers share the table with each other.
        polars.write(polars.from_arrow(batch("p", 0, 3)), sink("append", table), table)
    with (
        writer_slot(table, exclusive=True),
        pytest.raises(ConcurrentWriteError, match="spark writer"),
    ):
        polars.write(polars.from_arrow(batch("p", 1, 3)), sink("append", table), table)
    # Alone, Spark writes to the store as before.
    result = spark_engine.write(
        spark_engine.from_arrow(batch("s", 1, 3)), sink("append", table), table
    )
    from tierflow.storage import delta_table

    rows = pa.table(delta_table(table).to_pyarrow_table()).to_pydict()["key"]
    assert sorted(rows) == sorted(
        ["seed:0:0", "p:0:0", "p:0:1", "p:0:2", "s:1:0", "s:1:1", "s:1:2"]
    )
    assert result.version == delta_table(table).version()
