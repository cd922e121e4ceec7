"""Helpers shared by the tests: reading tables back and comparing them across engines;
the training runs of the training tests and the multi-host lab."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable

from tierflow.engines.base import EngineOptions
from tierflow.io.arrow_sinks import unified_parquet_schema
from tierflow.project import Project

ENGINES = ("single", "dask", "spark")
PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def read_table(path: str | Path, fmt: str = "delta", version: int | None = None) -> pa.Table:
    """A Delta or Parquet table as one Arrow table (partition columns included)."""
    if fmt == "delta":
        return pa.table(DeltaTable(str(path), version=version).to_pyarrow_table())
    files = [str(p) for p in Path(path).rglob("*.parquet")]
    data_schema = unified_parquet_schema(files)
    partitions = pads.dataset(str(path), format="parquet", partitioning="hive").schema
    extra = [f for f in partitions if f.name not in data_schema.names]
    schema = pa.schema(list(data_schema) + extra)
    return pads.dataset(str(path), format="parquet", partitioning="hive", schema=schema).to_table()


def normalise(table: pa.Table, drop: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows sorted, columns in name order, types unified (ints -> int64, floats -> float64,
    partition dictionaries -> plain values), so engines' outputs compare equal."""
    names = sorted(n for n in table.column_names if n not in drop)
    columns = []
    for name in names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_integer(col.type):
            col = col.cast(pa.int64())
        elif pa.types.is_floating(col.type):
            col = col.cast(pa.float64())
        elif pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
            col = col.cast(pa.string())
        elif pa.types.is_timestamp(col.type):
            col = pc.cast(col, pa.timestamp("us", tz="UTC"))
        columns.append(col.to_pylist())
    rows = list(zip(*columns, strict=True)) if columns else []
    return sorted(rows, key=lambda r: tuple((v is None, str(v)) for v in r))


def assert_same_rows(left: list[tuple[Any, ...]], right: list[tuple[Any, ...]], what: str) -> None:
    """Equal row lists, floats equal to 1e-9 relative (engines sum in different orders)."""
    assert len(left) == len(right), f"{what}: {len(left)} rows vs {len(right)}"
    for a, b in zip(left, right, strict=True):
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), f"{what}: {a} != {b}"
            else:
                assert x == y, f"{what}: {a} != {b}"


def copy_data(source: Path, target: Path) -> Path:
    """A private copy of a data folder (jobs mutate their tables)."""
    shutil.copytree(source, target)
    return target


def engine_options(
    engine: str, *, spark: Any = None, dask_scheduler: str | None = None
) -> EngineOptions:
    """Options that point the engine at the session's services."""
    if engine == "spark":
        return EngineOptions(spark_session=spark)
    if engine == "dask":
        return EngineOptions(dask_scheduler=dask_scheduler)
    return EngineOptions()


def project_for(data_dir: Path) -> Project:
    """The real project (its conf/ and transforms) on a private data folder and log folder."""
    project = Project.load(data_dir=str(data_dir))
    return dataclasses.replace(project, logs_dir=data_dir / "_logs")


# --- training -------------------------------------------------------------------------------


def training_snapshot(folder: Path) -> Path:
    """The training tests' tabular data (3,000 rows) as a Delta table at ``gold/snap``."""
    import numpy as np
    from deltalake import write_deltalake

    rng = np.random.default_rng(0)
    n = 3000
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["x", "y", "z"], size=n)
    y = (a + 0.5 * b + (c == "x") + rng.normal(scale=0.5, size=n)) > 0.5
    table = pa.table({"id": np.arange(n), "a": a, "b": b, "c": c, "y": y})
    write_deltalake(str(folder / "gold" / "snap"), table)
    return folder


def training_config(data: Path, name: str, **changes: Any) -> Path:
    """A training config for :func:`training_snapshot`, written as ``data/<name>.yaml``.

    The multi-host lab's run differs only in where its workers go and how often it takes
    a checkpoint, which change no weight: the training tests' DDP run on the session's
    Ray head is the undisturbed run the lab's model is compared with (the same data, seed
    and world size give the same weights on any hosts). Checkpoints are few by default.
    224 steps (74-75 per epoch): a run lasts long enough after its first checkpoint for the
    tests that cut or kill it mid-run, whatever the machine's speed (3 s of steps here).
    """
    import yaml

    doc = {
        "name": name, "snapshot": {"path": "gold/snap", "version": 0},
        "features": ["a", "b", "c"], "categorical": ["c"], "label": "y", "split_key": "id",
        "model": {"name": "mlp", "params": {"hidden": [16, 8]}}, "epochs": 3,
        "batch_size": 32, "seed": 3, "workers": 2, "strategy": "ddp",
        "checkpoint": {"every_steps": 1000}, "optimizer": {"name": "adamw", "lr": 0.01},
        "storage_path": "models", "max_failures": 3,
    } | changes  # fmt: skip
    path = data / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def train(
    data: Path, env: dict[str, str], name: str, *, job: bool = False, **changes: Any
) -> dict[str, Any]:
    """Train ``name`` with ``tierflow train``, or with ``job`` as a Ray job (``ray job
    submit`` of ``jobs/train.py``); its metrics, losses and weights."""
    config = training_config(data, name, **changes)
    args = [str(config), "--data-dir", str(data), "--json"]
    command = (
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(PROJECT / "jobs"), "--",
         "python", "train.py"]
        if job
        else [str(BIN / "tierflow"), "train"]
    )  # fmt: skip
    run = subprocess.run(
        [*command, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=400,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    if job:
        assert "succeeded" in run.stdout
    outcome = training_outcome(data, name, json_line(run.stdout))
    return outcome | {"reads": shard_reads(run.stdout + run.stderr)}


def shard_reads(output: str) -> dict[tuple[int, int], dict[int, set[int]]]:
    """What each worker read in each epoch, from the lines the workers print (Ray forwards
    them to the driver's output): ``{(rank, epoch): {shard: blocks}}``."""
    import re

    reads: dict[tuple[int, int], dict[int, set[int]]] = {}
    for rank, epoch, what in re.findall(r"\[tierflow\] rank (\d+) epoch (\d+) reads (.*)", output):
        shards = re.findall(r"shard (\d+): blocks \[([\d, ]*)\]", what)
        reads[int(rank), int(epoch)] = {
            int(s): {int(b) for b in blocks.split(",") if b.strip()} for s, blocks in shards
        }
    return reads


def json_line(stdout: str) -> dict[str, Any]:
    """The command's JSON result: its last line that is an object (Ray forwards workers'
    output to the driver's too)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout[-3000:]
    return dict(json.loads(lines[-1]))


def training_outcome(data: Path, name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A finished run's metrics, loss curve, weights and folder."""
    import torch

    folder = data / "models" / name
    history = json.loads((folder / "history.json").read_text())
    saved = torch.load(folder / "model.pt", weights_only=False)
    return {"metrics": metrics, "losses": [h["loss"] for h in history if "loss" in h],
            "weights": saved["model"], "folder": folder}  # fmt: skip


def latest_checkpoint(run_folder: Path) -> str | None:
    """The last checkpoint Ray Train's controller has taken in (as JSON), or None yet.

    A worker writes its checkpoint folder before it reports it; a restart resumes only
    from what the controller has registered, which it records in this snapshot. Read once:
    the controller may replace the file between two reads.
    """
    snapshot = run_folder / "checkpoint_manager_snapshot.json"
    try:
        state = json.loads(snapshot.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet, or half written
        return None
    latest = state.get("latest_checkpoint_result")
    return None if latest is None else json.dumps(latest, sort_keys=True)
