"""Training: tierflow's Ray Train DDP against plain torchrun DDP; its ingest against pyarrow.

- **DDP step time.** The same MLP (hidden 256, 256) on the same synthetic data (200,000
  rows x 32 features, global batch 512, AdamW), 2 CPU workers with gloo: ``tierflow
  train`` (Ray Train, through its real loop: checkpoints at epoch ends only) against a
  hand-written DDP loop under ``torchrun --nproc_per_node=2``. Median step time over the
  steps after the first 20.
- **Ingest.** The snapshot (a Delta table of 2,000,000 rows x 34 columns, in row groups
  of 131,072) streamed to two workers the way training does (:mod:`tierflow.train.ingest`:
  two Ray tasks, each its shard's blocks through the split, the preprocessing and the
  shuffle buffer, in batches of 256), against ``deltalake`` reading the same files to one
  pyarrow table, and against Ray Data's ``streaming_split(2)`` of ``read_delta`` consumed
  by two tasks. Rows per second of wall time; the fitting pass that precedes training
  (once per run) is timed on its own.

Medians of ``ROUNDS`` runs, all in one private network namespace (``make bench-training``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import ROOT, Results, local_services, median

ROUNDS = 3
ROWS, FEATURES, BATCH, HIDDEN = 200_000, 32, 512, (256, 256)
INGEST_ROWS = 2_000_000


def write_snapshot(folder: Path, rows: int) -> None:
    import pyarrow as pa
    from deltalake import WriterProperties, write_deltalake

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=rows)) > 0
    columns = {f"f{i}": x[:, i] for i in range(FEATURES)} | {"id": np.arange(rows), "y": y}
    # Row groups of 131,072 rows: a multi-file, multi-row-group snapshot as tables have.
    write_deltalake(str(folder), pa.table(columns),
                    writer_properties=WriterProperties(max_row_group_size=131_072))  # fmt: skip


def tierflow_step_time(data: Path, env: dict[str, str], round_: int) -> float:
    import yaml

    name = f"bench_ddp_{round_}"
    config = data / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "name": name, "snapshot": {"path": "snap", "version": 0},
        "features": [f"f{i}" for i in range(FEATURES)], "label": "y", "split_key": "id",
        "split": {"train": 1.0}, "model": {"name": "mlp", "params": {"hidden": list(HIDDEN)}},
        "epochs": 1, "batch_size": BATCH, "strategy": "ddp", "workers": 2,
        "checkpoint": {"every_steps": 100000}, "storage_path": "models",
    }))  # fmt: skip
    run = subprocess.run([str(Path(sys.executable).parent / "tierflow"), "train", str(config),
                          "--data-dir", str(data), "--json"], env=env, check=False,
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"tierflow train failed:\n{run.stderr[-3000:]}")
    history = json.loads((data / "models" / name / "history.json").read_text())
    stamps = [h["seconds"] for h in history if "loss" in h]
    return float(np.median(np.diff(stamps[20:])))


def torchrun_step_time(data: Path, env: dict[str, str]) -> float:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(str(data / "snap")).to_pyarrow_table()
    x = np.stack([table[f"f{i}"].to_numpy() for i in range(FEATURES)], axis=1).astype(np.float32)
    # Standardised like tierflow's preprocessing, so both train on the same numbers.
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = pc.cast(table["y"], "float").to_numpy().astype(np.float32)
    arrays = data / "torchrun.npz"
    np.savez(arrays, x=x, y=y, hidden=np.array(HIDDEN), batch=np.array(BATCH))
    out = data / "torchrun.json"
    run = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", "--master_port=29511",
                          str(ROOT / "benchmarks" / "torchrun_ddp.py"), str(arrays), str(out)],
                         env=env, check=False, capture_output=True, text=True)  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"torchrun failed:\n{run.stderr[-3000:]}")
    stamps = json.loads(out.read_text())
    return float(np.median(np.diff(stamps[20:])))


def _count_shard(snapshot: Any, blocks: list[int], config: Any, pre: Any) -> int:
    """Rows one worker receives from its shard (what a Ray Train worker reads)."""
    from tierflow.train.ingest import shard_batches

    batches = shard_batches(snapshot, blocks, config, pre, seed=(0, 0, 0), local_batch=256,
                            buffer_rows=config.shuffle_buffer)  # fmt: skip
    return sum(len(y) for _, y in batches)


def _count_split(iterator: Any) -> int:
    """Rows one consumer of Ray Data's ``streaming_split`` receives."""
    return sum(len(b["id"]) for b in iterator.iter_batches(batch_format="pyarrow"))


def ingest(data: Path) -> dict[str, float]:
    """Rows per second: tierflow's fitting pass; its two workers' streams; Ray Data's
    streaming split to two consumers; deltalake to pyarrow."""
    import ray
    import ray.data
    from deltalake import DeltaTable

    from tierflow.config.training import TrainingConfig
    from tierflow.train.data import prepare
    from tierflow.train.ingest import deal
    from tierflow.train.runner import on_ray

    path = str(data / "ingest")
    config = TrainingConfig.model_validate({
        "name": "ingest", "snapshot": {"path": path}, "label": "y", "split_key": "id",
        "features": [f"f{i}" for i in range(FEATURES)], "split": {"train": 1.0},
        "model": {"name": "mlp"}, "workers": 2,
    })  # fmt: skip
    began = time.perf_counter()
    prepared = prepare(path, 0, config, on_ray)
    fitting = INGEST_ROWS / (time.perf_counter() - began)
    task = ray.remote(num_cpus=1)(_count_shard)
    shards = deal(prepared.train_rows, config.seed, 0, 2)
    began = time.perf_counter()
    rows = sum(ray.get([task.remote(prepared.snapshot, blocks, config, prepared.preprocessor)
                        for blocks in shards]))  # fmt: skip
    streamed = rows / (time.perf_counter() - began)
    # No CPU of their own: the consumers wait on Ray Data's read tasks, which need the CPUs.
    consume = ray.remote(num_cpus=0)(_count_split)
    began = time.perf_counter()
    splits = ray.data.read_delta(path).streaming_split(2)
    rows = sum(ray.get([consume.remote(it) for it in splits]))
    ray_data = rows / (time.perf_counter() - began)
    began = time.perf_counter()
    rows = DeltaTable(path).to_pyarrow_table().num_rows
    pyarrow = rows / (time.perf_counter() - began)
    return {"fitting": fitting, "tierflow": streamed, "ray_data": ray_data, "pyarrow": pyarrow}


def main() -> int:
    results = Results("training")
    env = dict(os.environ) | {"RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as tmp, local_services("ray") as manager:
        head = manager.service("ray")
        env |= head.client_env() | {"RAY_ADDRESS": head.address}
        os.environ.update(head.client_env())
        import ray  # after the environment: Ray reads its auth mode when imported

        data = Path(tmp)
        write_snapshot(data / "snap", ROWS)
        write_snapshot(data / "ingest", INGEST_ROWS)
        ray.init(address=head.address, include_dashboard=False, log_to_driver=False)
        ours, peer = [], []
        for round_ in range(ROUNDS):
            ours.append(tierflow_step_time(data, env, round_))
            peer.append(torchrun_step_time(data, env))
            print(
                f"  step time: tierflow {ours[-1] * 1000:.2f} ms, torchrun {peer[-1] * 1000:.2f} ms",
                flush=True,
            )
        results.raw["step_seconds"] = {"tierflow": ours, "torchrun": peer}
        results.add(benchmark=f"DDP step, MLP {HIDDEN}, batch {BATCH}, 2 CPU workers", metric="ms/step",
                    tierflow=median(ours) * 1000, peer=median(peer) * 1000, peer_name="torchrun DDP",
                    ratio=median(ours) / median(peer))  # fmt: skip
        rates: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            for key, value in ingest(data).items():
                rates.setdefault(key, []).append(value)
            print("  ingest rows/s: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
                  flush=True)  # fmt: skip
        results.raw["ingest_rows_per_s"] = rates
        what = f"{INGEST_ROWS:,} rows x {FEATURES + 2} columns"
        results.add(benchmark=f"stream the snapshot to 2 workers, {what}", metric="rows/s",
                    tierflow=median(rates["tierflow"]), peer=median(rates["pyarrow"]),
                    peer_name="deltalake -> pyarrow",
                    ratio=median(rates["tierflow"]) / median(rates["pyarrow"]))  # fmt: skip
        results.add(benchmark=f"Ray Data streaming_split to 2 consumers, {what}", metric="rows/s",
                    tierflow=median(rates["tierflow"]), peer=median(rates["ray_data"]),
                    peer_name="Ray Data streaming_split",
                    ratio=median(rates["tierflow"]) / median(rates["ray_data"]))  # fmt: skip
        results.add(benchmark=f"the fitting pass (once a run), {what}", metric="rows/s",
                    tierflow=median(rates["fitting"]), peer=median(rates["pyarrow"]),
                    peer_name="deltalake -> pyarrow",
                    ratio=median(rates["fitting"]) / median(rates["pyarrow"]))  # fmt: skip
        ray.shutdown()
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
