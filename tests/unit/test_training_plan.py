"""Training configs and the ``auto`` strategy: small data, large data, models that do not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from tierflow.config.loader import load_model
from tierflow.config.training import TrainingConfig
from tierflow.errors import ConfigError
from tierflow.train.data import Preprocessor
from tierflow.train.ingest import split_codes
from tierflow.train.models import build_model
from tierflow.train.planner import SINGLE_MAX_ROWS, ModelSize, model_size, plan_training

BASE = {
    "name": "t",
    "snapshot": {"path": "gold/x"},
    "features": ["a", "b", "c"],
    "categorical": ["c"],
    "label": "y",
    "model": {"name": "mlp"},
    "workers": 2,
}
GIB = 1024**3


def config(**changes) -> TrainingConfig:
    return TrainingConfig.model_validate({**BASE, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": "magic"}, "strategy = 'magic'"),
        ({"categorical": ["z"]}, "categorical column(s) z are not features"),
        ({"label": "a"}, "the label 'a' is also a feature"),
        ({"split": {"train": 0.5, "valid": 0.2}}, "sum to 1"),
        ({"strategy": "ddp", "batch_size": 255}, "must split evenly across 2 workers"),
        ({"strategy": "pipeline", "workers": 3}, "workers must be even, not 3"),
        ({"strategy": "pipeline", "pipeline": {"microbatches": 3}}, "into 3 micro-batches"),
        ({"use_gpu": "maybe"}, "use_gpu = 'maybe'"),
        ({"epochs": 0}, "epochs = 0"),
    ],
)
def test_bad_configs_name_file_key_and_value(tmp_path: Path, changes, message) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    with pytest.raises(ConfigError) as err:
        load_model(TrainingConfig, path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_unknown_model_and_bad_params_are_clear() -> None:
    with pytest.raises(ConfigError, match="no model 'nope'"):
        build_model("nope", 3, {})
    with pytest.raises(ConfigError, match="model 'mlp': bad params"):
        build_model("mlp", 3, {"widths": [3]})


def test_the_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "conf" / "training"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert names == ["flight_delays_mlp", "flight_delays_transformer"]
    for name in names:
        assert load_model(TrainingConfig, root / f"{name}.yaml").name == name


SMALL = ModelSize(params=10_000, largest_layer=4_000, stages=(6_000, 4_000))


def plan(size: ModelSize = SMALL, rows: int = 1000, budget: float = 1 * GIB, **changes):
    return plan_training(
        config(**changes), train_rows=rows, size=size, gpus=0, device_memory_bytes=budget
    )


def test_auto_picks_single_for_small_data_and_ddp_for_large() -> None:
    small = plan(rows=SINGLE_MAX_ROWS)
    assert (small.strategy, small.workers) == ("single", 1)
    assert "data is small" in small.explain()
    large = plan(rows=SINGLE_MAX_ROWS + 1)
    assert (large.strategy, large.workers) == ("ddp", 2)
    assert plan(rows=10**7, workers=1).strategy == "single"


def test_auto_shards_a_model_that_does_not_fit_and_pipelines_when_sharding_does_not() -> None:
    # AdamW: 16 B per parameter x 1.5 = 24 B. Whole: 240,000 B.
    # FSDP over 2: 120,000 + largest layer 4,000 x 24 = 216,000 B. Larger stage: 144,000 B.
    assert plan(budget=240_000).strategy in ("single", "ddp")
    sharded = plan(budget=230_000)
    assert sharded.strategy == "fsdp" and "sharded over 2 workers" in sharded.explain()
    staged = plan(budget=150_000)
    assert (staged.strategy, staged.workers) == ("pipeline", 2)
    assert "larger of the model's two stages" in staged.explain()
    with pytest.raises(ConfigError, match="does not fit"):
        plan(budget=100_000)
    # Without stages, no pipeline: the same budget is an error.
    with pytest.raises(ConfigError, match="does not fit"):
        plan(ModelSize(10_000, 4_000, ()), budget=150_000)


def test_a_strategy_set_in_the_config_is_kept_and_said() -> None:
    chosen = plan(budget=10, strategy="ddp")
    assert chosen.strategy == "ddp" and "set in the config" in chosen.explain()


def test_model_sizes_are_counted_from_the_real_modules() -> None:
    mlp = model_size(build_model("mlp", 10, {"hidden": [8]}))
    assert mlp.params == 10 * 8 + 8 + 8 + 1 and mlp.stages == ()
    transformer = model_size(build_model("transformer", 5, {"d_model": 8, "heads": 2, "layers": 1}))
    assert len(transformer.stages) == 2 and sum(transformer.stages) == transformer.params


def test_the_split_follows_the_key_not_the_row_order_and_preprocessing_round_trips() -> None:
    rng = np.random.default_rng(1)
    n = 1000
    table = pa.table({
        "id": np.arange(n), "a": rng.normal(size=n), "b": rng.random(n) > 0.5,
        "c": rng.choice(["x", "y"], size=n), "y": rng.random(n) > 0.3,
    })  # fmt: skip
    cfg = config(split_key="id", features=["a", "b", "c"])
    shuffled = rng.permutation(n)
    first = split_codes(table, 0, cfg)
    again = split_codes(table.take(shuffled), 0, cfg)
    assert (again == first[shuffled]).all()
    assert sorted(set(first.tolist())) == [0, 1, 2] and (first == 0).mean() > 0.7
    pre = Preprocessor({"a": (0.5, 2.0)}, ["b"], {"c": ["x", "y"]})
    assert pre.width == 1 + 1 + 2
    assert Preprocessor.from_dict(pre.to_dict()) == pre
    # A category unseen in training encodes as zeros; a missing number as the mean.
    unseen = pre.transform(pa.table({"a": [None, 2.5], "b": [True, None], "c": ["z", "y"]}))
    assert unseen.tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]]


def test_curves_png_is_a_valid_image_with_the_curves_drawn() -> None:
    import io

    from PIL import Image

    from tierflow.train.plots import curves_png

    history = [{"step": s, "epoch": 0, "loss": 1.0 / s} for s in range(1, 50)]
    history.append({"step": 49, "epoch": 0, "valid_loss": 0.1})
    png = curves_png(history, "mlp")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (800, 400)
    colours = {c for _, c in image.getcolors(800 * 400)}
    # matplotlib's tab:blue line and tab:red squares, on white
    assert (31, 119, 180) in colours and (214, 39, 40) in colours and (255, 255, 255) in colours
    empty = Image.open(io.BytesIO(curves_png([])))  # no loss yet: axes alone, no error
    assert empty.size == (800, 400)
