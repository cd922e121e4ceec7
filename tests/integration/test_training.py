"""Training on the real Ray head, through ``tierflow train`` and ``ray job submit``.

DDP on 2 CPU workers follows the single worker's loss curve given the same global batch;
FSDP2, reading the snapshot from MinIO, follows DDP; the two-stage pipeline follows
single-process training of the same transformer. A SIGKILLed worker is replaced and
resumes from the last checkpoint; the whole run killed and started again resumes from its
storage path; it ends with the same weights as an uninterrupted run. The single-worker
baseline is trained through ``ray job submit`` of ``jobs/train.py``, the others through
``tierflow train``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import (
    BIN,
    PROJECT,
    json_line,
    latest_checkpoint,
    train,
    training_config,
    training_outcome,
)

TIERFLOW = str(BIN / "tierflow")
RAY = str(BIN / "ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]
TOLERANCE = 1e-5  # relative, per step: float sums in another order, nothing more


def assert_close_curves(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) > 30
    worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))
    assert worst < TOLERANCE, worst


@pytest.fixture(scope="module")
def baselines(
    training_data: Path, training_env: dict[str, str], ddp_reference: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    # The single worker through the job API, DDP through `tierflow train` (the session's
    # run, which the multi-host lab's model is compared with too): both entry points train
    # with the same code, and DDP must follow the single worker either way.
    return {
        "single": train(training_data, training_env, "mlp_single", job=True, strategy="single"),
        "ddp": ddp_reference,
    }


@pytest.mark.minio
def test_ddp_follows_the_single_worker_and_fsdp_follows_ddp_from_object_storage(
    baselines, training_data: Path, training_env: dict[str, str], minio, object_store: str
) -> None:
    """FSDP reads the snapshot from MinIO (Ray Data's tasks get the store's settings with
    the work: the Ray head was started without them) and still follows DDP, which read it
    from local disk: one run shows both, each alone costs a whole training run."""
    from deltalake import DeltaTable, write_deltalake

    from tierflow import storage

    single, ddp = baselines["single"], baselines["ddp"]
    assert ddp["metrics"]["strategy"] == "ddp" and ddp["metrics"]["workers"] == 2
    assert_close_curves(ddp["losses"], single["losses"])
    # Each DDP worker streamed only its own shard; the single worker read both, the same
    # blocks: so a global batch was the same rows in both runs.
    for epoch in range(3):
        zero, one = ddp["reads"][0, epoch], ddp["reads"][1, epoch]
        assert set(zero) == {0} and set(one) == {1}, ddp["reads"]
        assert zero[0] and one[1] and not zero[0] & one[1]
        assert single["reads"][0, epoch] == {0: zero[0], 1: one[1]}
    snapshot = f"{object_store}/gold/snap"
    local = DeltaTable(str(training_data / "gold" / "snap")).to_pyarrow_table()
    write_deltalake(snapshot, local, storage_options=storage.storage_options(snapshot))
    fsdp = train(training_data, training_env | minio.client_env(), "mlp_fsdp_s3", strategy="fsdp",
                 snapshot={"path": snapshot, "version": 0})  # fmt: skip
    assert fsdp["metrics"]["strategy"] == "fsdp"
    assert fsdp["metrics"]["rows"] == ddp["metrics"]["rows"]
    assert_close_curves(fsdp["losses"], ddp["losses"])
    for name, weight in ddp["weights"].items():
        assert np.allclose(fsdp["weights"][name], weight, rtol=1e-4, atol=1e-6), name
    # It learned something: far better than the base-rate baseline on held-out data.
    test = ddp["metrics"]["test"]
    assert test["logloss"] < 0.8 * test["baseline_logloss"] and test["auc"] > 0.85
    assert (ddp["folder"] / "curves.png").read_bytes().startswith(b"\x89PNG")
    records = [
        json.loads(p.read_text()) for p in (training_data.parent / "logs" / "runs").glob("*.json")
    ]
    mine = [r for r in records if r["job"] == "train:mlp_ddp"]
    assert len(mine) == 1 and mine[0]["status"] == "succeeded", records
    assert mine[0]["engine"] == "ray-train/ddp" and mine[0]["output"]["metrics"]["test"]
    # The run in MLflow, and its model registered: what tests/integration/test_tracking.py
    # checks in detail, here on a real Ray Train run.
    from mlflow import MlflowClient

    tracked = ddp["metrics"]["mlflow"]
    client = MlflowClient(tracked["tracking_uri"])
    run = client.get_run(tracked["run_id"])
    assert run.data.tags["tierflow.run_id"] == mine[0]["run_id"]
    assert len(client.get_metric_history(tracked["run_id"], "loss")) == ddp["metrics"]["steps"]
    assert run.data.metrics["test.auc"] == test["auc"]
    version = client.get_model_version("mlp_ddp", str(tracked["model_version"]))
    assert version.tags["tierflow.run_id"] == mine[0]["run_id"]


def test_pipeline_trains_the_transformer_split_across_two_workers(
    training_data: Path, training_env: dict[str, str]
) -> None:
    model = {"name": "transformer", "params": {"d_model": 16, "heads": 2, "layers": 1}}
    single = train(
        training_data, training_env, "tx_single", strategy="single", model=model, epochs=1
    )
    piped = train(
        training_data, training_env, "tx_pipeline", strategy="pipeline", model=model, epochs=1
    )
    assert piped["metrics"]["strategy"] == "pipeline" and piped["metrics"]["workers"] == 2
    assert_close_curves(piped["losses"], single["losses"])


def test_tune_finds_a_better_setting_tracks_each_trial_and_registers_the_best(
    training_data: Path, training_env: dict[str, str]
) -> None:
    """`tierflow tune` over four learning rates (a grid), one worker per trial (trained in
    Tune's trial actor), two trials at a time, ASHA after the first epoch: the best
    trial's validation loss is well below the worst's; each trial is a child run of the
    search's MLflow run, and the best one's model is the registered version and the
    published model. (Data-parallel trials run the same loop on a Ray Train worker group
    per trial: the same losses, measured by hand, at three times the time.)"""
    import torch
    from mlflow import MlflowClient

    name = "mlp_tuned"
    rates = [3e-5, 3e-4, 3e-3, 3e-2]
    tune = {"trials": 1, "concurrent": 2, "seed": 5,
            "space": {"optimizer.lr": {"grid": rates}},
            "asha": {"grace_period": 1, "reduction_factor": 2}}  # fmt: skip
    config = training_config(training_data, name, strategy="single", workers=1, epochs=2,
                             tune=tune)  # fmt: skip
    done = subprocess.run(
        [str(BIN / "tierflow"), "tune", str(config), "--data-dir", str(training_data), "--json"],
        cwd=PROJECT, env=training_env, capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json_line(done.stdout)
    trials = {t["trial"]: t for t in out["trials"]}
    assert sorted(t["params"]["optimizer.lr"] for t in trials.values()) == rates
    assert all(t["status"] in ("completed", "stopped") for t in trials.values()), trials
    best = trials[out["best"]]
    assert best["status"] == "completed" and len(best["valid_losses"]) == 2
    worst = max(t["valid_losses"][-1] for t in trials.values() if t["valid_losses"])
    assert best["valid_losses"][-1] < 0.9 * worst, trials
    assert best["params"]["optimizer.lr"] >= 3e-3, trials

    tracked = out["mlflow"]
    client = MlflowClient(tracked["tracking_uri"])
    children = client.search_runs(
        [tracked["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{tracked['run_id']}'"
    )
    assert len(children) == 4
    by_trial = {c.data.tags["tierflow.trial_id"]: c for c in children}
    assert by_trial.keys() == trials.keys()
    for trial_id, child in by_trial.items():
        assert child.data.tags["tierflow.trial_status"] == trials[trial_id]["status"]
        assert (
            float(child.data.params["optimizer.lr"]) == trials[trial_id]["params"]["optimizer.lr"]
        )
    version = client.get_model_version(name, str(tracked["model_version"]))
    assert version.run_id == tracked["best_run_id"] == by_trial[out["best"]].info.run_id
    parent = client.get_run(tracked["run_id"])
    assert parent.data.tags["tierflow.best_trial"] == out["best"]
    assert parent.data.metrics["best.valid_loss"] == best["valid_losses"][-1]
    # The published model is the best trial's, with its setting.
    published = torch.load(training_data / "models" / name / "model.pt", weights_only=False)
    assert published["config"]["optimizer"]["lr"] == best["params"]["optimizer.lr"]
    run = json.loads((training_data / "models" / name / "run.json").read_text())
    assert run["run"] == out["run"]
    assert out["test"]["logloss"] < out["test"]["baseline_logloss"]


def training_worker_pids(env: dict[str, str]) -> list[int]:
    """PIDs of the live Ray Train workers, from Ray's state API (``ray list actors``)."""
    listed = subprocess.run(
        [RAY, "list", "actors", "--filter", "class_name=RayTrainWorker",
         "--filter", "state=ALIVE", "--format", "json", "--limit", "100"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [int(actor["pid"]) for actor in json.loads(listed.stdout)]


def test_a_killed_worker_then_a_killed_run_resume_to_the_same_result(
    baselines, training_data: Path, training_env: dict[str, str]
) -> None:
    """A SIGKILLed worker is replaced and its group resumes from the last checkpoint; once
    the resumed group has registered a checkpoint of its own, the whole run is killed and
    resumed (`--resume RUN`) from its folder. Same seed, same batches, restored
    optimizer: bit for bit the weights of the uninterrupted run. (One run for both kinds of
    failure: each alone costs a whole training run.)"""
    name = "mlp_ddp_killed"
    # A checkpoint every 10 steps: the run lasts long enough to be killed twice.
    config = training_config(training_data, name, strategy="ddp", checkpoint={"every_steps": 10})
    command = [TIERFLOW, "train", str(config), "--data-dir", str(training_data), "--json"]
    log = training_data / f"{name}.log"
    first = subprocess.Popen(
        command, cwd=PROJECT, env=training_env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 300

    def running() -> bool:
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
        return True

    # Every run is new, in a folder of its own: the driver names it first.
    while not (named := re.search(r"^run (\S+) in (\S+)$", log.read_text(), re.M)) and running():
        pass
    assert named is not None
    run_id, run_folder = named.group(1), Path(named.group(2)) / "ray"

    while latest_checkpoint(run_folder) is None and running():
        pass

    # This run's workers, by the PIDs Ray prefixes their forwarded lines with: the actor
    # list can still show an earlier run's workers as alive while they are torn down.
    def own_workers() -> list[int]:
        seen = set(map(int, re.findall(r"RayTrainWorker pid=(\d+)", log.read_text())))
        return sorted(seen & set(training_worker_pids(training_env)))

    while len(victims := own_workers()) < 2 and running():
        pass
    assert len(victims) == 2, victims
    os.kill(victims[-1], signal.SIGKILL)
    # Ray forwards the workers' output (the resume is theirs) to the driver's.
    while "resumed from checkpoint at step" not in log.read_text() and running():
        pass
    step = int(log.read_text().split("resumed from checkpoint at step ")[1].split()[0])
    assert 10 <= step < 224  # 74-75 steps per epoch, 3 epochs
    restored = latest_checkpoint(run_folder)
    while latest_checkpoint(run_folder) == restored and running():
        pass

    first.send_signal(signal.SIGKILL)  # the whole run: driver, and so its workers
    first.wait()
    again = subprocess.run(
        [*command, "--resume", run_id], cwd=PROJECT, env=training_env, capture_output=True, text=True, timeout=400,
        check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    text = again.stdout + again.stderr
    assert "resumed from checkpoint at step" in text, text[-4000:]
    assert int(text.split("resumed from checkpoint at step ")[1].split()[0]) > step
    resumed = training_outcome(training_data, name, json_line(again.stdout))
    for key, weight in baselines["ddp"]["weights"].items():
        assert resumed["weights"][key].equal(weight), key


@pytest.mark.horovod
def test_horovod_trains_data_parallel_on_two_processes(
    baselines, training_data: Path, training_env: dict[str, str]
) -> None:
    """Horovod runs the same loop as Ray Train's workers, each process its own shard: it
    follows the single worker step for step, as DDP does, and ends with DDP's weights."""
    run = train(training_data, training_env, "mlp_horovod", strategy="horovod")
    assert run["metrics"]["strategy"] == "horovod" and run["metrics"]["workers"] == 2
    assert_close_curves(run["losses"], baselines["single"]["losses"])
    for name, weight in baselines["ddp"]["weights"].items():
        assert np.allclose(run["weights"][name], weight, rtol=1e-4, atol=1e-6), name
