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
  by two tasks. Rows per second: tierflow's from the first shard's start to the last
  one's end, each timed inside its task after its libraries are loaded (the wall time
  around the tasks, Ray's dispatch and a fresh worker's imports included, is kept in the
  raw results); the others' wall time. The fitting pass that precedes training (once
  per run) is timed on its own.

- **Scale.** ``tierflow train`` on a 50,000,000-row snapshot (``TIERFLOW_BENCH_TRAIN_ROWS``;
  0 leaves it out): DDP on 2 workers, one epoch, a 1% validation split, with the driver
  held to 1.5 GiB and the Ray node's processes (raylet, workers, tasks) to 4 GiB together
  by memory cgroups (root is needed), against a snapshot of 6.4 GiB in memory. Each
  process's peak resident memory is sampled every 0.2 s; rows per second of the training
  and of the whole run (fitting pass and evaluation included).

Medians of ``ROUNDS`` runs (``INGEST_ROUNDS`` for the ingest), all in one private network
namespace (``make bench-training``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import ROOT, Results, local_services, median

ROUNDS = 3
INGEST_ROUNDS = 5  # a round takes seconds, and these rates vary most between rounds
ROWS, FEATURES, BATCH, HIDDEN = 200_000, 32, 512, (256, 256)
INGEST_ROWS = 2_000_000
#: The scale proof: rows (``TIERFLOW_BENCH_TRAIN_ROWS``), its global batch, and the
#: memory the driver, and the Ray node's processes together, are held to.
SCALE_ROWS = int(os.environ.get("TIERFLOW_BENCH_TRAIN_ROWS", "50000000"))
SCALE_BATCH = 8192
GiB = 1024**3
DRIVER_LIMIT, RAY_LIMIT = 3 * GiB // 2, 4 * GiB


class MemoryCage:
    """A memory cgroup (v1 or v2) with a hard limit: processes put in it, and every
    process they start, are killed by the kernel rather than pass the limit together.

    Needs root (a benchmark's machine). The per-process peaks are sampled separately
    (:class:`ProcessPeaks`); the cage enforces, it does not measure.
    """

    def __init__(self, name: str, limit_bytes: int) -> None:
        v1 = Path("/sys/fs/cgroup/memory")
        v2 = Path("/sys/fs/cgroup")
        if (v1 / "memory.limit_in_bytes").is_file():
            self.path, limit_file = v1 / name, "memory.limit_in_bytes"
            self._peak_file = "memory.max_usage_in_bytes"
        elif "memory" in (v2 / "cgroup.controllers").read_text().split():
            self.path, limit_file = v2 / name, "memory.max"
            self._peak_file = "memory.peak"
        else:
            raise RuntimeError("no memory cgroup to hold processes to a limit (v1 or v2)")
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / limit_file).write_text(str(limit_bytes))
        except OSError as exc:
            raise RuntimeError(f"cannot create memory cgroup {self.path} (root?): {exc}") from exc
        self.limit = limit_bytes

    def add(self, pid: int) -> None:
        """Put ``pid`` in the cage (processes it starts from now on are in it too)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        """The processes in the cage now."""
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def peak(self) -> int:
        """The group's highest charge so far (its processes' memory and page cache)."""
        return int((self.path / self._peak_file).read_text())

    def close(self) -> None:
        """Move what is still inside back to the root and remove the cgroup."""
        for pid in self.pids():
            try:
                (self.path.parent / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass  # exited meanwhile
        self.path.rmdir()


class ProcessPeaks:
    """Each process's resident memory at its highest, sampled in the background.

    ``pids`` says which processes to watch at each sample (for instance a cage's).
    """

    def __init__(self, pids: Callable[[], list[int]], every: float = 0.2) -> None:
        import threading

        self.pids, self.every = pids, every
        self.peak: dict[int, int] = {}
        self.name: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            for pid in self.pids():
                proc = Path("/proc") / str(pid)
                try:
                    rss = int((proc / "statm").read_text().split()[1]) * page
                    # Read each time: Ray renames its workers (ray::RayTrainWorker...).
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except (OSError, IndexError, ValueError):
                    continue  # gone meanwhile
                if cmd.strip():  # an exiting process reads empty: keep its last name
                    self.name[pid] = cmd.strip()[:120]
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self._stop.wait(self.every)

    def __enter__(self) -> ProcessPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_snapshot(folder: Path, rows: int, chunk: int = 2_000_000) -> None:
    """Synthetic training data as a Delta table, written ``chunk`` rows at a time."""
    import pyarrow as pa
    from deltalake import WriterProperties, write_deltalake

    for first in range(0, rows, chunk):
        n = min(chunk, rows - first)
        rng = np.random.default_rng(first // chunk)
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n)) > 0
        columns = {f"f{i}": x[:, i] for i in range(FEATURES)}
        columns |= {"id": np.arange(first, first + n), "y": y}
        # Row groups of 131,072 rows: a multi-file, multi-row-group snapshot as tables have.
        write_deltalake(str(folder), pa.table(columns), mode="append",
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


def _count_shard(data: Any, blocks: list[int], config: Any) -> tuple[int, float, float]:
    """Rows one worker receives from its shard (what a Ray Train worker reads), and when
    it began and ended (wall clock, after its libraries were loaded)."""
    from tierflow.train.ingest import shard_batches

    began = time.time()
    batches = shard_batches(data, blocks, config, seed=(0, 0, 0), local_batch=256,
                            buffer_rows=config.shuffle_buffer)  # fmt: skip
    return sum(len(y) for _, y in batches), began, time.time()


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
    # From the first worker's start to the last one's end, each after loading its libraries:
    # a training worker loads them once a run, and Ray may hand a task to a fresh process
    # (pyarrow is loaded here already). The wall time around it is kept too.
    began = time.perf_counter()
    done = ray.get([task.remote(prepared, blocks, config) for blocks in shards])
    wall = sum(r for r, _, _ in done) / (time.perf_counter() - began)
    streamed = sum(r for r, _, _ in done) / (
        max(e for _, _, e in done) - min(b for _, b, _ in done)
    )
    # No CPU of their own: the consumers wait on Ray Data's read tasks, which need the CPUs.
    consume = ray.remote(num_cpus=0)(_count_split)
    began = time.perf_counter()
    splits = ray.data.read_delta(path).streaming_split(2)
    rows = sum(ray.get([consume.remote(it) for it in splits]))
    ray_data = rows / (time.perf_counter() - began)
    began = time.perf_counter()
    rows = DeltaTable(path).to_pyarrow_table().num_rows
    pyarrow = rows / (time.perf_counter() - began)
    return {"fitting": fitting, "tierflow": streamed, "tierflow_wall": wall, "ray_data": ray_data,
            "pyarrow": pyarrow}  # fmt: skip


def scale_proof(data: Path, env: dict[str, str], ray_pids: list[int]) -> dict[str, Any]:
    """Train on ``SCALE_ROWS`` rows with the driver and the Ray node held to memory limits.

    The driver (``tierflow train``) runs in a memory cgroup of ``DRIVER_LIMIT``; the Ray
    node's processes (and the workers it starts) in one of ``RAY_LIMIT`` together. Each
    process's peak resident memory is sampled; rows per second of the training itself
    (its ``seconds``) and of the whole run (the fitting pass and evaluation included).
    """
    import pyarrow as pa
    import yaml
    from deltalake import DeltaTable

    snapshot = data / "scale"
    began = time.perf_counter()
    write_snapshot(snapshot, SCALE_ROWS)
    written = time.perf_counter() - began
    actions = pa.table(DeltaTable(str(snapshot)).get_add_actions(flatten=True))
    on_disk = sum(actions.column("size_bytes").to_pylist())
    in_memory = SCALE_ROWS * (FEATURES * 4 + 8 + 1)  # float32 features, int64 id, bool label
    config = data / "scale.yaml"
    config.write_text(yaml.safe_dump({
        "name": "scale", "snapshot": {"path": "scale"},
        "features": [f"f{i}" for i in range(FEATURES)], "label": "y", "split_key": "id",
        "split": {"train": 0.99, "valid": 0.01}, "model": {"name": "mlp", "params": {"hidden": [64]}},
        "epochs": 1, "batch_size": SCALE_BATCH, "strategy": "ddp", "workers": 2,
        "checkpoint": {"every_steps": 1_000_000}, "storage_path": "models",
    }))  # fmt: skip
    driver = MemoryCage(f"tierflow-bench-driver-{os.getpid()}", DRIVER_LIMIT)
    node = MemoryCage(f"tierflow-bench-ray-{os.getpid()}", RAY_LIMIT)
    try:
        for pid in ray_pids:
            try:
                node.add(pid)
            except ProcessLookupError:
                pass  # a process of the node that has exited since it was listed
        with ProcessPeaks(driver.pids) as drivers, ProcessPeaks(node.pids) as ray_side:
            began = time.perf_counter()
            run = subprocess.run(
                [str(Path(sys.executable).parent / "tierflow"), "train", str(config),
                 "--data-dir", str(data), "--json"],
                env=env, check=False, capture_output=True, text=True, cwd=ROOT,
                preexec_fn=lambda: driver.add(os.getpid()),
            )  # fmt: skip
            wall = time.perf_counter() - began
        charged = {"driver": driver.peak(), "ray": node.peak()}
    finally:
        node.close()
        driver.close()
    if run.returncode:
        raise RuntimeError(f"the {SCALE_ROWS:,}-row training failed:\n{run.stderr[-3000:]}")
    metrics = json.loads((data / "models" / "scale" / "metrics.json").read_text())
    workers = [b for p, b in ray_side.peak.items() if "TrainWorker" in ray_side.name.get(p, "")]
    others = [b for p, b in ray_side.peak.items() if "TrainWorker" not in ray_side.name.get(p, "")]
    named = {**drivers.name, **ray_side.name}
    return {
        "rows": SCALE_ROWS,
        "train_rows": metrics["rows"]["train"],
        "steps": metrics["steps"],
        "snapshot_bytes_on_disk": on_disk,
        "snapshot_bytes_in_memory": in_memory,
        "write_seconds": written,
        "train_seconds": metrics["seconds"],
        "run_seconds": wall,
        "train_rows_per_s": metrics["rows"]["train"] / metrics["seconds"],
        "run_rows_per_s": SCALE_ROWS / wall,
        "driver_limit": DRIVER_LIMIT,
        "ray_limit": RAY_LIMIT,
        "driver_peak": max(drivers.peak.values(), default=0),
        "worker_peaks": sorted(workers),
        "largest_other_peak": max(others, default=0),
        "cgroup_peaks": charged,
        "peaks": {
            f"{p} {named.get(p, '')}": b
            for p, b in sorted({**drivers.peak, **ray_side.peak}.items())
        },
        "valid_loss": metrics.get("valid", {}),
    }


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
        for _ in range(INGEST_ROUNDS):
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
        if SCALE_ROWS:
            scale = scale_proof(data, env, manager.live_pids("ray"))
            results.raw["scale"] = scale
            what = (f"train on {SCALE_ROWS:,} rows (DDP, 2 workers; driver <= "
                    f"{DRIVER_LIMIT / GiB:g} GiB, Ray node <= {RAY_LIMIT / GiB:g} GiB)")  # fmt: skip
            results.add(benchmark=what, metric="training rows/s", tierflow=scale["train_rows_per_s"],
                        peer=None, peer_name="", ratio=None)  # fmt: skip
            largest = max(scale["driver_peak"], *scale["worker_peaks"], scale["largest_other_peak"])
            results.add(benchmark=what, metric="largest process peak / snapshot in memory",
                        tierflow=largest / scale["snapshot_bytes_in_memory"], peer=None,
                        peer_name="", ratio=None)  # fmt: skip
    out = results.write()
    if SCALE_ROWS:
        (out / "training.md").write_text(results.markdown() + scale_markdown(results.raw["scale"]))
    print((out / "training.md").read_text())
    print(f"results in {out}")
    return 0


def scale_markdown(scale: dict[str, Any]) -> str:
    """The scale proof's numbers, every process's peak among them."""
    lines = [
        "",
        "### Training at scale, under memory limits",
        "",
        f"- snapshot: {scale['rows']:,} rows, {scale['snapshot_bytes_on_disk'] / GiB:.2f} GiB of "
        f"Parquet, {scale['snapshot_bytes_in_memory'] / GiB:.2f} GiB in memory as Arrow",
        f"- limits (memory cgroups, enforced by the kernel): driver {scale['driver_limit'] / GiB:g} "
        f"GiB, the Ray node's processes together {scale['ray_limit'] / GiB:g} GiB",
        f"- peaks: driver {scale['driver_peak'] / GiB:.2f} GiB, training workers "
        + ", ".join(f"{p / GiB:.2f}" for p in scale["worker_peaks"])
        + f" GiB, any other Ray process {scale['largest_other_peak'] / GiB:.2f} GiB (resident; "
        f"the groups' highest charge, page cache included: driver "
        f"{scale['cgroup_peaks']['driver'] / GiB:.2f} GiB, Ray node "
        f"{scale['cgroup_peaks']['ray'] / GiB:.2f} GiB)",
        f"- {scale['train_rows']:,} training rows, {scale['steps']:,} steps of {SCALE_BATCH:,} in "
        f"{scale['train_seconds']:.0f} s: {scale['train_rows_per_s']:,.0f} rows/s; the whole run "
        f"(fitting pass, training, evaluation) {scale['run_seconds']:.0f} s: "
        f"{scale['run_rows_per_s']:,.0f} rows/s",
        "",
        "| process | peak GiB |",
        "|---|---|",
    ]
    lines += [f"| {name} | {peak / GiB:.2f} |" for name, peak in scale["peaks"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
