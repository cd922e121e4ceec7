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
from pathlib import Path

import pytest

from tests.support import training_config, training_snapshot
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


def test_a_run_is_recorded_and_its_model_registered_and_served(tmp_path: Path) -> None:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from tierflow.train.predict import Predictor
    from tierflow.train.tracking import Tracking, load_model_folder, record_run

    data = training_snapshot(tmp_path / "data")
    config = load_model(TrainingConfig, training_config(data, "tracked"))
    tracking = Tracking.resolve(None, data)
    assert tracking.uri == f"sqlite:///{(data / 'mlflow' / 'mlflow.db').resolve()}"
    snapshot = str(data / "gold" / "snap")
    versions = []
    for run_id in ("run-1", "run-2"):
        folder = data / "runs" / run_id
        fake_run(folder, config, steps=40)
        metrics = json.loads((folder / "metrics.json").read_text())
        tracked = record_run(
            tracking, config, run_id=run_id, run_folder=folder, snapshot=(snapshot, 0),
            plan={"strategy": "ddp", "workers": 2}, metrics=metrics, started_ms=1_000_000,
        )  # fmt: skip
        versions.append(tracked.model_version)
    assert versions == [1, 2]  # a new version per run

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

    # Found again by version, by alias and by name (the newest).
    client.set_registered_model_alias("tracked", "champion", "1")
    found = {ref: load_model_folder(tracking, ref, tmp_path / ref.replace("@", "-"))
             for ref in ("tracked@1", "tracked@champion", "tracked")}  # fmt: skip
    assert [v for _, v in found.values()] == [1, 1, 2]
    assert load_model_folder(tracking, "unknown", tmp_path / "u") is None
    with pytest.raises(UsageError, match="no such version or alias"):
        load_model_folder(tracking, "tracked@7", tmp_path / "seven")

    # MLflow's own loader and serving's give the same numbers for the same rows.
    rows = pd.DataFrame({"a": [0.1, -1.0, 2.0], "b": [1.0, 0.0, None], "c": ["x", "z", "w"]})
    mlflow.set_tracking_uri(tracking.uri)
    loaded = mlflow.pyfunc.load_model("models:/tracked/2")
    served = Predictor.load(found["tracked"][0], None).predict(rows.to_dict(orient="records"))
    assert list(loaded.predict(rows)) == pytest.approx(served)
    assert all(0.0 < p < 1.0 for p in served)
