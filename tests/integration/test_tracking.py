"""MLflow tracking and the registry, on the embedded store, without a training cluster.

A run folder as ``tierflow train`` leaves it (weights with their preprocessing, the step
history, the evaluation, the curves) is recorded with :func:`record_run`: the run holds
the config as params, every step's loss, the evaluation, the artifacts and the snapshot
as its dataset; the model is a new registered version, found again by version, alias
and name, and MLflow's own ``pyfunc`` loader predicts what serving predicts. (The
training tests check the same on a real Ray Train run.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import PROJECT, training_config, training_snapshot
from tierflow.config.loader import load_model
from tierflow.config.training import TrainingConfig
from tierflow.errors import UsageError

pytestmark = pytest.mark.slow


def fake_run(folder: Path, config: TrainingConfig, steps: int) -> None:
    """What a finished run leaves in its folder, with an untrained model."""
    import torch

    from tierflow.train.data import Preprocessor
    from tierflow.train.models import build_model

    folder.mkdir(parents=True)
    pre = Preprocessor({"a": (0.0, 1.0), "b": (0.5, 2.0)}, [], {"c": ["x", "y", "z"]})
    width = pre.width
    torch.manual_seed(0)
    model = build_model(config.model.name, width, dict(config.model.params))
    torch.save({"model": model.state_dict(), "preprocessor": pre.to_dict(),
                "config": config.model_dump(mode="json"), "width": width},
               folder / "model.pt")  # fmt: skip
    history = [{"step": s, "epoch": 0, "loss": 1.0 / s, "seconds": 0.01 * s}
               for s in range(1, steps + 1)]  # fmt: skip
    history.append({"step": steps, "epoch": 0, "valid_loss": 0.5})
    (folder / "history.json").write_text(json.dumps(history))
    metrics = {"steps": steps, "seconds": 1.5, "rows": {"train": 100},
               "test": {"logloss": 0.4, "auc": 0.9, "baseline_logloss": 0.69}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "curves.png").write_bytes(b"\x89PNG fake")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict[str, Any]:
    """Two runs of config ``tracked`` recorded in a data folder's embedded store."""
    from tierflow.train.tracking import Tracking, record_run

    data = training_snapshot(tmp_path_factory.mktemp("tracking") / "data")
    config = load_model(TrainingConfig, training_config(data, "tracked"))
    tracking = Tracking.resolve(None, data)
    snapshot = str(data / "gold" / "snap")
    runs = []
    for run_id in ("run-1", "run-2"):
        folder = data / "runs" / run_id
        fake_run(folder, config, steps=40)
        metrics = json.loads((folder / "metrics.json").read_text())
        runs.append(record_run(
            tracking, config, run_id=run_id, run_folder=folder, snapshot=(snapshot, 0),
            plan={"strategy": "ddp", "workers": 2}, metrics=metrics, started_ms=1_000_000,
        ))  # fmt: skip
    return {"data": data, "tracking": tracking, "snapshot": snapshot, "runs": runs}


def test_a_run_is_recorded_and_its_model_registered_and_served(registry, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from tierflow.train.predict import Predictor
    from tierflow.train.tracking import load_model_folder

    data, tracking, snapshot = registry["data"], registry["tracking"], registry["snapshot"]
    assert tracking.uri == f"sqlite:///{(data / 'mlflow' / 'mlflow.db').resolve()}"
    assert [r.model_version for r in registry["runs"]] == [1, 2]  # a new version per run
    tracked = registry["runs"][1]

    client = MlflowClient(tracking.uri)
    run = client.get_run(tracked.run_id)
    assert run.data.tags["tierflow.run_id"] == "run-2"
    assert run.info.status == "FINISHED"
    assert run.data.params["model.params.hidden"] == "[16, 8]"
    assert run.data.params["strategy"] == "ddp" and run.data.params["epochs"] == "3"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 41))
    assert losses[0].timestamp == 1_000_010 and losses[0].value == 1.0
    assert run.data.metrics["test.auc"] == 0.9 and run.data.metrics["valid_loss"] == 0.5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts >= {"curves.png", "metrics.json", "history.json"}
    (used,) = run.inputs.dataset_inputs
    assert json.loads(used.dataset.source) == {"path": snapshot, "version": 0}
    assert used.dataset.digest == "v0"
    version = client.get_model_version("tracked", "2")
    assert version.tags == {"tierflow.run_id": "run-2", "tierflow.snapshot": f"{snapshot}@v0"}

    # Found again by version, by alias and by name (the newest), whatever MLflow's global
    # URIs and the working directory say (a server process has neither set).
    client.set_registered_model_alias("tracked", "champion", "1")
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    mlflow.set_registry_uri(elsewhere)
    found = {ref: load_model_folder(tracking, ref, tmp_path / ref.replace("@", "-"))
             for ref in ("tracked@1", "tracked@champion", "tracked")}  # fmt: skip
    assert [v for _, v in found.values()] == [1, 1, 2]
    assert load_model_folder(tracking, "unknown", tmp_path / "u") is None
    assert not (tmp_path / "elsewhere.db").exists()
    with pytest.raises(UsageError, match="no such version or alias"):
        load_model_folder(tracking, "tracked@7", tmp_path / "seven")

    # MLflow's own loader and serving's give the same numbers for the same rows.
    rows = pd.DataFrame({"a": [0.1, -1.0, 2.0], "b": [1.0, 0.0, None], "c": ["x", "z", "w"]})
    mlflow.set_tracking_uri(tracking.uri)
    mlflow.set_registry_uri(tracking.uri)
    loaded = mlflow.pyfunc.load_model("models:/tracked/2")
    served = Predictor.load(found["tracked"][0], None).predict(rows.to_dict(orient="records"))
    assert list(loaded.predict(rows)) == pytest.approx(served)
    assert all(0.0 < p < 1.0 for p in served)


def test_losses_are_logged_while_the_run_trains_and_once_each(registry) -> None:
    """The recorder opens the run as training starts: the losses the workers report are
    in MLflow before the run ends; at the end, the history adds the steps not seen live,
    and a step seen live is not logged again (a resumed run does the same)."""
    from mlflow import MlflowClient

    from tierflow.train.tracking import RunRecorder

    data, tracking = registry["data"], registry["tracking"]
    config = load_model(TrainingConfig, training_config(data, "tracked"))
    recorder = RunRecorder(tracking, config, run_id="run-live", started_ms=2_000_000)
    recorder.start({"strategy": "single", "workers": 1})
    for step, loss in ((8, 0.125), (16, 0.0625)):
        recorder.live({"step": step, "total": 40, "epoch": 0, "loss": loss})
    client = MlflowClient(tracking.uri)
    deadline = time.monotonic() + 60

    def live_steps() -> list[int]:
        runs = client.search_runs(
            [client.get_experiment_by_name("tracked").experiment_id],
            filter_string="tags.`tierflow.run_id` = 'run-live'",
        )
        if not runs:
            return []
        return [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]

    while live_steps() != [8, 16]:
        assert time.monotonic() < deadline, live_steps()
        time.sleep(0.2)
    folder = data / "runs" / "run-live"
    fake_run(folder, config, steps=40)
    tracked = recorder.finish(
        run_folder=folder,
        snapshot=(registry["snapshot"], 0),
        metrics=json.loads((folder / "metrics.json").read_text()),
    )
    losses = client.get_metric_history(tracked.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 41))  # each step once
    assert {m.step: m.value for m in losses}[16] == 0.0625
    assert client.get_run(tracked.run_id).info.status == "FINISHED"
    assert tracked.model_version == 3


def test_two_versions_live_split_the_requests_and_are_counted_apart(registry, tmp_path) -> None:
    """`tierflow serve --model tracked@1 --canary tracked@2=0.3`: about 30% of requests
    answered by version 2, each answer naming its version, and /metrics counting
    requests, rows and latency per version."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, TIERFLOW_DATA_DIR=str(registry["data"]),
               TIERFLOW_ONLINE_DB=str(tmp_path / "online.db"))  # fmt: skip
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tierflow"), "serve", "--store", "sqlite",
         "--model", "tracked@1", "--canary", "tracked@2=0.3", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def call(path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(base + path, data=data,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        return text if path == "/metrics" else json.loads(text)

    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0][-3000:]
            try:
                call("/health")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        models = call("/v1/models")["tracked"]
        assert models["version"] == "1" and models["canary"] == {"version": "2", "share": 0.3}
        versions = [
            call("/v1/predict/tracked", {"rows": [{"a": 0.5, "b": 1.0, "c": "x"}] * 2})["version"]
            for _ in range(200)
        ]
        canary = versions.count("2")
        assert versions.count("1") + canary == 200 and 30 <= canary <= 90, canary
        metrics = call("/metrics")
        assert (
            f'tierflow_predict_requests_total{{model="tracked",status="200",version="2"}} {canary:.1f}'
            in metrics
        )
        assert (
            f'tierflow_predict_rows_total{{model="tracked",version="1"}} {2 * (200 - canary):.1f}'
            in metrics
        )
        assert (
            f'tierflow_predict_seconds_count{{model="tracked",version="2"}} {canary:.1f}' in metrics
        )
    finally:
        server.send_signal(signal.SIGINT)
        out = server.communicate(timeout=30)[0]
    assert "model tracked: version 1 from the registry" in out
    assert "model tracked: version 2 from the registry" in out


def test_drift_passes_on_training_like_rows_and_fails_on_a_shifted_feature(
    registry, tmp_path, capsys
) -> None:
    """`tierflow monitor drift`: rows like the training split pass (exit 0); with one
    feature shifted, that feature is over the threshold, the command exits 1, and the
    HTML report and its JSON say which."""
    import deltalake
    import pyarrow.compute as pc

    from tierflow.cli import main

    data = registry["data"]
    rows = deltalake.DeltaTable(str(data / "gold" / "snap")).to_pyarrow_table()
    same = rows.slice(0, 1500)
    deltalake.write_deltalake(str(tmp_path / "same"), same)
    shifted = same.set_column(1, "a", pc.add(same["a"], 2.0))
    deltalake.write_deltalake(str(tmp_path / "shifted"), shifted)
    args = ["--project-dir", str(PROJECT), "monitor", "drift", "tracked"]
    env = {"TIERFLOW_DATA_DIR": str(data), "TIERFLOW_LOGS_DIR": str(tmp_path / "logs")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        assert main([*args, "--input", str(tmp_path / "same")]) == 0
        calm = capsys.readouterr().out
        assert main([*args, "--input", str(tmp_path / "shifted")]) == 1
        alarm = capsys.readouterr()
    assert "OVER" not in calm and "score: PSI" in calm
    assert "OVER a: PSI" in alarm.out and "drift over 0.25: a" in alarm.err
    reports = list((tmp_path / "logs" / "monitor").glob("*/drift.json"))
    assert len(reports) == 2
    report = max(reports, key=lambda p: p.stat().st_mtime_ns)  # the shifted input's
    numbers = json.loads(report.read_text())
    assert numbers["flagged"][0] == "a" and numbers["features"]["a"]["psi"] > 1.0
    assert numbers["features"]["b"]["psi"] < 0.05
    assert "<svg" in (report.parent / "drift.html").read_text()
