"""The training loop outside Ray: strategies by name, a run's data in a folder, and a run in
one process that keeps its checkpoints and resumes from them bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierflow.config.training import TrainingConfig
from tierflow.train.data import Preprocessor, Splits
from tierflow.train.loop import WorkerSettings, run
from tierflow.train.session import LocalSession, read_checkpoint
from tierflow.train.strategies import strategy_class

torch = pytest.importorskip("torch")


def splits(rows: int = 400) -> Splits:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) > 0).astype(np.float32)
    pre = Preprocessor({"a": (0.0, 1.0), "b": (0.0, 1.0), "c": (0.0, 1.0)}, [], {})
    cut = rows * 3 // 4
    return Splits({"train": x[:cut], "valid": x[cut:]}, {"train": y[:cut], "valid": y[cut:]},
                  pre, 4, {"train": cut, "valid": rows - cut})  # fmt: skip


def settings(epochs: int) -> WorkerSettings:
    config = TrainingConfig.model_validate({
        "name": "t", "snapshot": {"path": "gold/x"}, "features": ["a", "b", "c"], "label": "y",
        "model": {"name": "mlp", "params": {"hidden": [8]}}, "epochs": epochs, "batch_size": 20,
        "seed": 5, "strategy": "single", "checkpoint": {"every_steps": 4, "keep": 2},
    })  # fmt: skip
    return WorkerSettings(config, "single", use_gpu=False)


def curve(meta: dict) -> list[tuple]:
    return [(h["step"], h["epoch"], h.get("loss"), h.get("valid_loss")) for h in meta["history"]]


def test_every_strategy_is_found_by_its_name_and_an_unknown_one_is_refused() -> None:
    for name in ("single", "ddp", "fsdp", "pipeline", "horovod"):
        assert strategy_class(name).name == name
    assert strategy_class("ddp")(1, 2, None).batch_share == (1, 2)
    assert strategy_class("pipeline")(1, 2, None).batch_share == (0, 1)
    with pytest.raises(ValueError, match="no training strategy 'magic'"):
        strategy_class("magic")


def test_splits_round_trip_through_a_folder(tmp_path: Path) -> None:
    data = splits()
    data.save(tmp_path)
    back = Splits.load(tmp_path)
    assert back.rows == data.rows and back.version == 4
    assert back.preprocessor.to_dict() == data.preprocessor.to_dict()
    for name in data.x:
        assert np.array_equal(back.x[name], data.x[name])
        assert np.array_equal(back.y[name], data.y[name])


def test_a_run_resumed_from_its_checkpoint_ends_bit_for_bit_as_one_run(tmp_path: Path) -> None:
    data = splits()  # 300 training rows, batches of 20: 15 steps an epoch
    whole = LocalSession(tmp_path / "whole", 0, 1, keep=2)
    whole.folder.mkdir()
    run(settings(epochs=2), data, whole)
    kept = whole.checkpoints()
    assert [p.name for p in kept] == ["checkpoint_000000028", "checkpoint_000000030"]
    meta, state = read_checkpoint(kept[-1])
    assert (meta["epoch"], meta["next_batch"], meta["step"]) == (2, 0, 30)
    assert [h["step"] for h in meta["history"] if "loss" in h] == list(range(1, 31))

    # Stopped after the first epoch, then started again for two: it continues from the
    # first epoch's checkpoint with the optimizer's state and the second epoch's batches.
    parted = LocalSession(tmp_path / "parted", 0, 1, keep=2)
    parted.folder.mkdir()
    run(settings(epochs=1), data, parted)
    run(settings(epochs=2), data, parted)
    again_meta, again = read_checkpoint(parted.checkpoints()[-1])
    assert curve(again_meta) == curve(meta)
    for name, weight in state["model"].items():
        assert torch.equal(again["model"][name], weight), name
