"""``tierflow train CONFIG`` and ``jobs/train.py``: plan, read, train on Ray Train, evaluate.

The driver resolves the snapshot version, reads it with Ray Data, splits and fits the
preprocessing, chooses the strategy (:mod:`tierflow.train.planner`), and runs
:func:`tierflow.train.loop.train_loop` on a ``TorchTrainer`` with a ``FailureConfig``
(a failed worker group restarts from the latest checkpoint). Every run is new, with
its own folder ``<storage>/<name>/runs/<run id>/`` (checkpoints, the snapshot version it
read) and the newest snapshot version unless the config pins one; an interrupted run
continues only when asked (``resume=True``, ``tierflow train --resume RUN``), from its
latest checkpoint and on the snapshot version it read. At the end the final model is
evaluated on the valid and test splits next to a baseline that predicts the training
base rate (or mean), and the artifacts are written to the run's folder and published to
``<storage>/<name>/`` (what serving loads), with ``run.json`` naming the run:
``model.pt`` (state dict, preprocessing, config), ``metrics.json``, ``history.json``
and ``curves.png``. The command then records the run in MLflow and registers the model
(:mod:`tierflow.train.tracking`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.config.training import TrainingConfig
from tierflow.progress import Progress
from tierflow.train.planner import TrainPlan, model_size, plan_training
from tierflow.train.plots import curves_png, warm

if TYPE_CHECKING:
    from tierflow.train.tracking import RunRecorder


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    name: str
    plan: TrainPlan
    version: int
    metrics: dict[str, Any]
    folder: Path  # where the model is published: <storage>/<name>
    resumed_from_step: int | None
    run_id: str = ""
    run_folder: Path | None = None  # <storage>/<name>/runs/<run id>: what the run wrote


def device_budget(config: TrainingConfig, gpus: int, workers: int) -> float:
    """Bytes one device may use: configured, else the GPU's memory, else a RAM share."""
    if config.device_memory_gb is not None:
        return config.device_memory_gb * 1024**3
    if gpus:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    from tierflow.jobs.resources import this_machine

    return this_machine().memory * 0.25 / max(1, workers)


def plan_for(config: TrainingConfig, train_rows: int, width: int, gpus: int) -> TrainPlan:
    """The plan for a config, given the training rows and the feature width."""
    from tierflow.train.models import build_model

    size = model_size(build_model(config.model.name, width, dict(config.model.params)))
    return plan_training(
        config,
        train_rows=train_rows,
        size=size,
        gpus=gpus,
        device_memory_bytes=device_budget(config, gpus, config.workers),
    )


def _auc(scores: list[float], labels: list[float]) -> float:
    pairs = sorted(zip(scores, labels, strict=True))
    positives = sum(1 for _, y in pairs if y > 0.5)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return float("nan")
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average = (i + j + 1) / 2  # ranks are 1-based; ties share the average rank
        rank_sum += average * sum(1 for k in range(i, j) if pairs[k][1] > 0.5)
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def evaluate(
    model: Any, config: TrainingConfig, chunks: Iterable[tuple[Any, Any]], base: float
) -> dict[str, float]:
    """Loss and quality of ``model`` on one split, and of the base-rate baseline.

    The split comes as ``(features, labels)`` chunks; only scores and labels are held.
    """
    import torch

    outs, targets = [], []
    with torch.no_grad():
        for x, y in chunks:
            outs.append(model(torch.from_numpy(x)).double())
            targets.append(torch.from_numpy(y).double())
    if not targets:
        return {}
    out, target = torch.cat(outs), torch.cat(targets)
    y = target.numpy()
    if config.task == "binary":
        prob = torch.sigmoid(out).clamp(1e-7, 1 - 1e-7)
        logloss = float(-(target * prob.log() + (1 - target) * (1 - prob).log()).mean())
        p = min(max(base, 1e-7), 1 - 1e-7)
        base_logloss = float(-(target * math.log(p) + (1 - target) * math.log(1 - p)).mean())
        accuracy = float(((prob > 0.5).double() == target).double().mean())
        majority = float(((target > 0.5) == (base > 0.5)).double().mean())
        return {"logloss": logloss, "accuracy": accuracy, "auc": _auc(prob.tolist(), y.tolist()),
                "baseline_logloss": base_logloss, "baseline_accuracy": majority}  # fmt: skip
    mse = float(((out - target) ** 2).mean())
    return {"mse": mse, "baseline_mse": float(((target - base) ** 2).mean())}


def final_model(config: TrainingConfig, strategy: str, width: int, state: dict[str, Any]) -> Any:
    """The trained model in one process, from a checkpoint's state."""
    from tierflow.train.models import build_model
    from tierflow.train.strategies import strategy_class

    model = build_model(config.model.name, width, dict(config.model.params))
    return strategy_class(strategy).final_model(model, state).eval()


def train(
    config: TrainingConfig,
    data_dir: Path,
    *,
    run_id: str,
    resume: bool = False,
    ray_address: str | None = None,
    progress: Any = print,
    recorder: RunRecorder | None = None,
) -> TrainResult:
    """Run ``config`` on Ray Train (see the module doc).

    ``recorder`` (the run's MLflow run) is started once the plan is known, and given the
    workers' steps and losses as they report them.

    Raises:
        UsageError: ``resume`` names a run that does not exist.
    """
    opened = open_run(config, data_dir, run_id=run_id, resume=resume,
                      ray_address=ray_address, progress=progress)  # fmt: skip
    from tierflow.train.loop import WorkerSettings  # after open_run's torch import

    folder, published, version, data, plan = (
        opened.folder, opened.published, opened.version, opened.data, opened.plan,
    )  # fmt: skip
    live = str(folder / "live.json")
    Path(live).unlink(missing_ok=True)
    warm()  # the curves' plotting library, imported while the workers train
    on_status = None
    if recorder is not None:
        recorder.start({"strategy": plan.strategy, "workers": plan.workers})
        on_status = recorder.live
    if plan.strategy == "horovod":
        began = time.perf_counter()
        settings = WorkerSettings(config, plan.strategy, plan.use_gpu, live_path=live)
        with _watching(Path(live), config.name, on_status):
            meta, state = run_horovod(settings, data, folder, plan.workers)
        latest = None
    else:
        latest = newest_checkpoint(folder / "ray")
        # Ray Train v2 has no resume_from_checkpoint: the loop starts from this
        # checkpoint when Ray has none of its own (a worker-group restart has one).
        start = latest.path if latest is not None else None
        settings = WorkerSettings(
            config, plan.strategy, plan.use_gpu, resume_path=start, live_path=live
        )
        began = time.perf_counter()
        with _watching(Path(live), config.name, on_status):
            meta, state = fit_on_ray(settings, data, plan, folder)
    seconds = time.perf_counter() - began
    metrics = write_artifacts(config, plan, data, version, folder, (meta, state), seconds)
    resumed = latest_step(latest)
    publish(folder, published, run_id, version)
    return TrainResult(config.name, plan, version, metrics, published, resumed, run_id, folder)


@dataclass(frozen=True)
class OpenedRun:
    """A run's folder made, its snapshot read and pinned, its strategy planned."""

    folder: Path
    published: Path
    snapshot: str
    version: int
    data: Any
    plan: TrainPlan


def open_run(
    config: TrainingConfig,
    data_dir: Path,
    *,
    run_id: str,
    resume: bool = False,
    ray_address: str | None = None,
    progress: Any = print,
    kind: str = "run",
) -> OpenedRun:
    """What a training run and a search share before any worker starts.

    Connects to Ray (unless connected), makes the run's folder, pins the snapshot's
    version (a resumed run reads what the interrupted one read), reads and splits it
    and fits the preprocessing, then plans the strategy.

    Raises:
        UsageError: ``resume`` names a run that does not exist.
    """
    import ray
    import torch  # noqa: F401 - first: see below

    # torch is imported before the data libraries: imported after them in a `ray job
    # submit` driver, its bundled oneMKL failed to load (`Intel oneMKL FATAL ERROR: Cannot
    # load libtorch_cpu.so`, then a segmentation fault; seen in the multi-host lab).
    from tierflow.storage import locate
    from tierflow.train.data import prepare, snapshot_version

    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    path = locate(config.snapshot.path, data_dir)
    storage = Path(config.storage_path)
    storage = storage if storage.is_absolute() else data_dir / storage
    published = storage / config.name
    folder = run_folder(storage, config.name, run_id)
    if resume and not folder.is_dir():
        from tierflow.errors import UsageError

        runs = sorted(p.name for p in (published / "runs").glob("*") if p.is_dir())
        raise UsageError(f"no run {run_id!r} of {config.name} to resume (runs: {runs or 'none'})")
    folder.mkdir(parents=True, exist_ok=True)
    progress(f"{kind} {run_id} in {folder}")
    recorded = folder / "snapshot.json"
    pinned = config.snapshot.version
    if resume and recorded.is_file():
        pinned = json.loads(recorded.read_text())["version"]
    version = snapshot_version(path, pinned)
    recorded.write_text(json.dumps({"path": path, "version": version}))
    data = prepare(path, version, config, on_ray)
    gpus = int(ray.cluster_resources().get("GPU", 0))  # type: ignore[no-untyped-call]
    plan = plan_for(config, data.rows["train"], data.preprocessor.width, gpus)
    progress(plan.explain())
    return OpenedRun(folder, published, path, version, data, plan)


def fit_on_ray(
    settings: Any, data: Any, plan: TrainPlan, folder: Path, callbacks: Iterable[Any] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the worker loop on a ``TorchTrainer`` (checkpoints under ``folder/ray``).

    ``callbacks`` are Ray Train callbacks (a tuning trial's, which hands the epochs'
    validation losses to Ray Tune).

    Returns:
        The ``(meta, state)`` of the run's last checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tierflow.train.loop import train_loop
    from tierflow.train.session import read_checkpoint

    config = settings.config
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"settings": settings, "data": data},
        scaling_config=ScalingConfig(
            num_workers=plan.workers,
            use_gpu=plan.use_gpu,
            placement_strategy=config.placement.upper(),
        ),
        run_config=RunConfig(
            name="ray",
            storage_path=str(folder),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.keep),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {config.name} produced no checkpoint: {result.error!r}")
    with result.checkpoint.as_directory() as ckpt:
        return read_checkpoint(Path(ckpt))


def write_artifacts(
    config: TrainingConfig,
    plan: TrainPlan,
    data: Any,
    version: int,
    folder: Path,
    checkpoint: tuple[dict[str, Any], dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """Evaluate the final model on the valid and test splits; write the run's artifacts.

    Returns:
        The metrics (also in ``metrics.json``).
    """
    import torch

    from tierflow.train.ingest import split_chunks

    meta, state = checkpoint
    width = data.preprocessor.width
    model = final_model(config, plan.strategy, width, state)
    metrics: dict[str, Any] = {"strategy": plan.strategy, "workers": plan.workers,
                               "snapshot_version": version, "rows": data.rows,
                               "steps": meta["step"], "seconds": seconds}  # fmt: skip
    every = range(len(data.snapshot.blocks))
    for split in ("valid", "test"):
        if split in data.rows:
            chunks = split_chunks(data, every, config, split)
            metrics[split] = evaluate(model, config, chunks, data.base)
    torch.save({"model": model.state_dict(), "preprocessor": meta["preprocessor"],
                "config": config.model_dump(mode="json"), "width": width},
               folder / "model.pt")  # fmt: skip
    (folder / "history.json").write_text(json.dumps(meta["history"]))
    (folder / "curves.png").write_bytes(curves_png(meta["history"], config.name))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


@contextmanager
def _watching(
    live: Path, name: str, on_status: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[None]:
    """While the workers train: their step, epoch and loss as a progress line.

    Rank 0 rewrites ``live`` every few dozen steps; this reads it once a second (a
    terminal shows it redrawn, a log a line every half minute) and hands each new status
    to ``on_status``.
    """
    bar = Progress(f"{name}: training", None, "steps")
    stop = threading.Event()

    def watch() -> None:
        seen = False
        last: dict[str, Any] = {}
        while not stop.wait(1.0):
            try:
                status = json.loads(live.read_text())
            except (OSError, ValueError):
                continue  # not written yet (the workers are starting)
            bar.total = int(status["total"])
            if not seen:
                bar.rebase(int(status["step"]))  # the rate from the first step seen
                seen = True
            if on_status is not None and status != last:
                on_status(status)
            last = status
            bar.update(int(status["step"]), f"epoch {status['epoch']}, loss {status['loss']:.4f}")

    thread = threading.Thread(target=watch, name="tierflow-training-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


#: A run's artifacts, copied to ``<storage>/<name>/`` when it ends.
ARTIFACTS = ("model.pt", "metrics.json", "history.json", "curves.png")


def run_folder(storage: Path, name: str, run_id: str) -> Path:
    """Where run ``run_id`` of config ``name`` keeps its checkpoints and artifacts."""
    return storage / name / "runs" / run_id


def publish(folder: Path, published: Path, run_id: str, version: int) -> None:
    """Make a finished run's model the config's current one (what serving loads).

    Each file is replaced whole (copied beside it, then renamed), ``run.json`` last, so a
    reader sees the previous model or the new one.
    """
    for name in ARTIFACTS:
        if (folder / name).is_file():
            partial = published / f".{name}.partial"
            shutil.copyfile(folder / name, partial)
            partial.replace(published / name)
    record = {"run": run_id, "snapshot_version": version}
    (published / ".run.json.partial").write_text(json.dumps(record))
    (published / ".run.json.partial").replace(published / "run.json")


#: Snapshots up to this many rows get their fitting pass in the driver: measured here, the
#: demo's 327,342 rows take 1.6 s in process, while starting Ray's task workers takes
#: longer than that before they read a row.
IN_PROCESS_ROWS = 1_000_000


def on_ray(snapshot: Any, chunks: list[list[int]], config: TrainingConfig) -> list[Any]:
    """The fitting pass as Ray tasks, a chunk of blocks each, on the cluster's CPUs.

    A snapshot of at most :data:`IN_PROCESS_ROWS` rows is summarised in this process.
    """
    import ray

    from tierflow.train.data import in_process
    from tierflow.train.ingest import summarize

    if snapshot.rows <= IN_PROCESS_ROWS:
        return in_process(snapshot, chunks, config)

    task = ray.remote(num_cpus=1)(summarize)
    shared = ray.put(snapshot)
    return list(ray.get([task.remote(shared, chunk, config) for chunk in chunks]))


def run_horovod(
    settings: Any, data: Any, folder: Path, workers: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train with ``horovodrun`` on this machine (:mod:`tierflow.train.horovod_loop`).

    Returns:
        The ``(meta, state)`` of the run's last checkpoint.
    """
    import pickle
    import shutil
    import subprocess
    import sys

    from tierflow.train.horovod_loop import SETTINGS_FILE
    from tierflow.train.session import LocalSession, read_checkpoint

    runner = Path(sys.executable).parent / "horovodrun"
    if not runner.is_file() or shutil.which(str(runner)) is None:
        raise RuntimeError("strategy horovod needs Horovod: build it with `make horovod`")
    run_dir = folder / "horovod"
    run_dir.mkdir(parents=True, exist_ok=True)
    # The run's own settings and data description, read back by its own processes.
    (run_dir / SETTINGS_FILE).write_bytes(pickle.dumps((settings, data)))
    command = [str(runner), "-np", str(workers), "-H", f"localhost:{workers}", "--gloo",
               "--network-interfaces", "lo", sys.executable, "-m",
               "tierflow.train.horovod_loop", str(run_dir)]  # fmt: skip
    subprocess.run(command, check=True)
    keep = settings.config.checkpoint.keep
    found = LocalSession(run_dir, 0, workers, keep=keep).checkpoints()
    if not found:
        raise RuntimeError(f"training {settings.config.name} on Horovod produced no checkpoint")
    return read_checkpoint(found[-1])


def newest_checkpoint(run_folder: Path) -> Any:
    """The newest checkpoint an earlier run of this config left, if any."""
    from ray.train import Checkpoint

    if not run_folder.is_dir():
        return None
    found = sorted(run_folder.glob("checkpoint_*"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if (p / "meta.json").is_file()]
    return Checkpoint.from_directory(str(found[-1])) if found else None


def latest_step(checkpoint: Any) -> int | None:
    """The step a checkpoint was taken at."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return int(json.loads((Path(folder) / "meta.json").read_text())["step"])
