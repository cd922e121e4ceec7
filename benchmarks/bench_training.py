"""Training: tierflow's Ray Train DDP against plain torchrun DDP; Ray Data ingest against pyarrow.

- **DDP step time.** The same MLP (hidden 256, 256) on the same synthetic data (200,000
  rows x 32 features, global batch 512, AdamW), 2 CPU workers with gloo: ``tierflow
  train`` (Ray Train, through its real loop: checkpoints at epoch ends only) against a
  hand-written DDP loop under ``torchrun --nproc_per_node=2``. Median step time over the
  steps after the first 20.
- **Ingest.** Reading the snapshot (a Delta table of 2,000,000 rows x 34 columns) with
  Ray Data (``read_delta`` then ``iter_batches``, what training uses) against
  ``deltalake`` to a pyarrow table. Rows per second.

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

import numpy as np

from benchmarks.harness import ROOT, Results, local_services, median

ROUNDS = 3
ROWS, FEATURES, BATCH, HIDDEN = 200_000, 32, 512, (256, 256)
INGEST_ROWS = 2_000_000


def write_snapshot(folder: Path, rows: int) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=rows)) > 0
    columns = {f"f{i}": x[:, i] for i in range(FEATURES)} | {"id": np.arange(rows), "y": y}
    write_deltalake(str(folder), pa.table(columns))


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


def ingest(data: Path) -> tuple[float, float]:
    import ray
    import ray.data
    from deltalake import DeltaTable

    path = str(data / "ingest")
    began = time.perf_counter()
    rows = sum(len(b["id"]) for b in ray.data.read_delta(path).iter_batches(batch_format="pyarrow"))
    ours = rows / (time.perf_counter() - began)
    began = time.perf_counter()
    rows = DeltaTable(path).to_pyarrow_table().num_rows
    peer = rows / (time.perf_counter() - began)
    return ours, peer


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
        a, b = [], []
        for _ in range(ROUNDS):
            x, y = ingest(data)
            a.append(x)
            b.append(y)
            print(f"  ingest: ray data {x:,.0f} rows/s, pyarrow {y:,.0f} rows/s", flush=True)
        results.raw["ingest_rows_per_s"] = {"ray_data": a, "pyarrow": b}
        results.add(benchmark=f"read snapshot, {INGEST_ROWS:,} rows x {FEATURES + 2} columns", metric="rows/s",
                    tierflow=median(a), peer=median(b), peer_name="deltalake -> pyarrow",
                    ratio=median(a) / median(b))  # fmt: skip
        ray.shutdown()
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
