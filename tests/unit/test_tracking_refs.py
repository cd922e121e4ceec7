"""The pure parts of MLflow tracking: model references, params, metric histories."""

from __future__ import annotations

import math

import pytest

from tierflow.errors import UsageError
from tierflow.train.tracking import evaluation_metrics, flatten, history_metrics, parse_model_ref


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [("m", ("m", None, None)), ("m@3", ("m", 3, None)), ("m@champion", ("m", None, "champion"))],
)
def test_a_model_is_named_with_a_version_or_an_alias(ref, parsed) -> None:
    assert parse_model_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["", "@3", "m@"])
def test_an_incomplete_reference_is_a_usage_error(ref) -> None:
    with pytest.raises(UsageError, match="NAME@VERSION or NAME@ALIAS"):
        parse_model_ref(ref)


def test_the_config_flattens_into_params() -> None:
    doc = {"model": {"name": "mlp", "params": {"hidden": [16, 8]}}, "lr": 0.01, "tune": {}}
    assert flatten(doc) == {
        "model.name": "mlp", "model.params.hidden": "[16, 8]", "lr": "0.01", "tune": "{}"
    }  # fmt: skip


def test_histories_keep_steps_and_times_and_leave_out_what_is_not_a_number() -> None:
    history = [
        {"step": 1, "epoch": 0, "loss": 0.9, "seconds": 0.5},
        {"step": 2, "epoch": 0, "loss": math.nan, "seconds": 1.0},
        {"step": 2, "epoch": 0, "valid_loss": 0.7},
    ]
    assert list(history_metrics(history, 1_000)) == [
        ("loss", 0.9, 1, 1_500),
        ("valid_loss", 0.7, 2, 1_000),
    ]
    metrics = {"steps": 2, "seconds": 3.5, "test": {"auc": 0.8, "note": "x"}, "valid": None}
    assert evaluation_metrics(metrics) == {
        "test.auc": 0.8,
        "train.steps": 2.0,
        "train.seconds": 3.5,
    }


def test_a_removed_working_directory_is_replaced_before_mlflow_runs(tmp_path, monkeypatch) -> None:
    # A `ray job submit` driver's folder can be gone when the run ends; MLflow resolves
    # its default artifact root against the working directory.
    import os
    import tempfile
    from pathlib import Path

    from tierflow.train.tracking import _working_directory

    gone = tmp_path / "job"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    _working_directory()
    assert Path(os.getcwd()) == Path(tempfile.gettempdir()).resolve()


def test_the_embedded_store_is_made_when_a_run_is_recorded_not_when_looked_up(
    tmp_path, monkeypatch
) -> None:
    from tierflow.train.tracking import Tracking, load_model_folder

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = Tracking.resolve(None, tmp_path / "data")
    assert tracking.local_file == (tmp_path / "data" / "mlflow" / "mlflow.db").resolve()
    # A lookup in a data folder where nothing was ever recorded: not registered, and the
    # folder is left as it was.
    assert load_model_folder(tracking, "anything", tmp_path / "dl") is None
    assert not (tmp_path / "data").exists()
    tracking.prepare()
    assert tracking.local_file.parent.is_dir()
    assert Tracking.resolve("http://mlflow:5000", tmp_path).local_file is None
