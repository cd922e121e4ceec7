"""The training loop outside Ray: strategies by name, and a run in one process streaming a
small snapshot, which keeps its checkpoints and resumes from them bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tierflow.config.training import TrainingConfig
from tierflow.train.data import prepare
from tierflow.train.loop import WorkerSettings, run
from tierflow.train.session import LocalSession, read_checkpoint
from tierflow.train.strategies import strategy_class

torch = pytest.importorskip("torch")


def settings(epochs: int) -> WorkerSettings:
    config = TrainingConfig.model_validate({
        "name": "t", "snapshot": {"path": "gold/x"}, "features": ["a", "b", "c"], "label": "y",
        "split_key": "id", "model": {"name": "mlp", "params": {"hidden": [8]}}, "workers": 2,
        "epochs": epochs, "batch_size": 20, "seed": 5, "strategy": "single",
        "checkpoint": {"every_steps": 4, "keep": 2}, "shuffle_buffer": 50,
    })  # fmt: skip
    return WorkerSettings(config, "single", use_gpu=False)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    from deltalake import write_deltalake

    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 3))
    path = tmp_path_factory.mktemp("loop") / "snap"
    table = pa.table({"id": np.arange(400), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                      "y": (x @ np.array([1.0, -2.0, 0.5]) > 0).astype(float)})  # fmt: skip
    write_deltalake(str(path), table)
    return str(path)


def curve(meta: dict) -> list[tuple]:
    return [(h["step"], h["epoch"], h.get("loss"), h.get("valid_loss")) for h in meta["history"]]


def test_every_strategy_is_found_by_its_name_and_an_unknown_one_is_refused() -> None:
    for name in ("single", "ddp", "fsdp", "pipeline", "horovod"):
        assert strategy_class(name).name == name
    assert strategy_class("ddp")(1, 2, None).batch_share == (1, 2)
    assert strategy_class("pipeline")(1, 2, None).batch_share == (0, 1)
    assert strategy_class("fsdp")(1, 2, None).eval_share == (0, 1)
    with pytest.raises(ValueError, match="no training strategy 'magic'"):
        strategy_class("magic")


def test_a_run_resumed_from_its_checkpoint_ends_bit_for_bit_as_one_run(
    snapshot: str, tmp_path: Path
) -> None:
    data = prepare(snapshot, 0, settings(2).config)
    whole = LocalSession(tmp_path / "whole", 0, 1, keep=2)
    whole.folder.mkdir()
    run(settings(epochs=2), data, whole)
    kept = whole.checkpoints()
    meta, state = read_checkpoint(kept[-1])
    losses = [h for h in meta["history"] if "loss" in h]
    assert meta["epoch"] == 2 and meta["next_batch"] == 0 and meta["step"] == len(losses) > 20
    assert [h["step"] for h in losses] == list(range(1, meta["step"] + 1))
    assert len(kept) == 2 and {h["epoch"] for h in losses} == {0, 1}

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
