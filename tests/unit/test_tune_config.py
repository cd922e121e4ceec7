"""The `tune:` block of a training config: what may be searched, checked before a run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tierflow.config.training import SearchParam, TrainingConfig, with_params
from tierflow.errors import ConfigError
from tierflow.train.tune import check_space


def config(**changes: Any) -> TrainingConfig:
    doc = {
        "name": "m", "snapshot": {"path": "gold/snap"}, "features": ["a", "b"], "label": "y",
        "model": {"name": "mlp", "params": {"hidden": [8]}}, "workers": 2, "batch_size": 32,
        "split": {"train": 0.8, "valid": 0.1, "test": 0.1},
    } | changes  # fmt: skip
    return TrainingConfig.model_validate(doc)


def test_a_search_param_is_exactly_one_kind_of_range() -> None:
    assert SearchParam(grid=[1, 2]).values() == [1, 2]
    assert SearchParam(randint=(2, 9)).values() == [2, 8]  # high is exclusive
    with pytest.raises(ValidationError, match="exactly one of"):
        SearchParam(choice=[1], uniform=(0.0, 1.0))
    with pytest.raises(ValidationError, match="exactly one of"):
        SearchParam()
    with pytest.raises(ValidationError, match="low must be below high"):
        SearchParam(uniform=(1.0, 1.0))
    with pytest.raises(ValidationError, match="must be positive"):
        SearchParam(loguniform=(0.0, 1.0))


def test_only_settings_that_leave_the_data_alone_are_searched() -> None:
    tuned = config(tune={"space": {"optimizer.lr": {"loguniform": [1e-4, 1e-1]},
                                   "model.params.hidden": {"choice": [[8], [16, 8]]}}})  # fmt: skip
    assert tuned.tune is not None and tuned.tune.trials == 8 and tuned.tune.asha is not None
    with pytest.raises(ValidationError, match="'features' cannot be searched"):
        config(tune={"space": {"features": {"choice": [["a"]]}}})
    with pytest.raises(ValidationError, match="give a valid split"):
        config(split={"train": 0.9, "test": 0.1},
               tune={"space": {"optimizer.lr": {"choice": [0.1]}}})  # fmt: skip


def test_every_value_of_the_space_is_checked_against_the_config() -> None:
    # A batch of 33 does not split evenly across 2 workers.
    bad = config(tune={"space": {"batch_size": {"grid": [32, 33]}}})
    with pytest.raises(ConfigError, match=r"tune.space.batch_size = 33 gives an invalid config"):
        check_space(bad)
    check_space(config(tune={"space": {"batch_size": {"grid": [32, 64]}}}))
    with pytest.raises(ConfigError, match="no `tune:` block"):
        check_space(config())


def test_with_params_replaces_dotted_settings() -> None:
    base = config()
    changed = with_params(base, {"optimizer.lr": 0.01, "model.params.hidden": [4, 4], "epochs": 5})
    assert (changed.optimizer.lr, changed.model.params["hidden"], changed.epochs) == (
        0.01, [4, 4], 5,
    )  # fmt: skip
    assert base.optimizer.lr == 1e-3  # the base is left as it was
