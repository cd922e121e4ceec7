"""Predictions from a trained model's artifact (``model.pt``), for serving.

A model's features are of two kinds: ``<view>__<feature>`` columns, read from the online
store for the entity keys in the request, and the others (``carrier``, ``sched_hour``...),
the row's own facts, given in the request. The preprocessing fitted at training time
travels in ``model.pt``, so a served row is transformed exactly as its training rows were.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.config.features import FeatureViewConfig
from tierflow.config.training import TrainingConfig
from tierflow.errors import ConfigError, TierflowError, UsageError


class PredictionRequestError(TierflowError):
    """A request row lacks a fact the model needs (HTTP 400)."""


@dataclass
class Predictor:
    """A loaded model, its preprocessing, and the views its features come from."""

    name: str
    config: TrainingConfig
    model: Any
    preprocessor: Any
    view_names: tuple[str, ...]
    request_features: tuple[str, ...]

    @classmethod
    def load(cls, folder: Path, views: Mapping[str, FeatureViewConfig] | None) -> Predictor:
        """Load ``<folder>/model.pt`` (written by ``tierflow train``).

        ``views`` are the project's, to check the features against (``None``: rows come
        with every feature, as in batch scoring through MLflow).

        Raises:
            TierflowError: no artifact, or a feature names a view that is not known.
        """
        import torch

        from tierflow.train.data import Preprocessor
        from tierflow.train.models import build_model

        path = folder / "model.pt"
        if not path.is_file():
            raise UsageError(f"no trained model at {path}: run `tierflow train` first")
        saved = torch.load(path, weights_only=False)
        config = TrainingConfig.model_validate(saved["config"])
        model = build_model(config.model.name, int(saved["width"]), dict(config.model.params))
        model.load_state_dict(saved["model"])
        model.eval()
        from_views: list[str] = []
        own: list[str] = []
        for feature in config.features:
            view, sep, _ = feature.partition("__")
            if sep and views is not None and view not in views:
                raise ConfigError(f"model {config.name}: feature {feature} names no known view")
            (from_views if sep else own).append(view if sep else feature)
        return cls(
            config.name,
            config,
            model,
            Preprocessor.from_dict(saved["preprocessor"]),
            tuple(dict.fromkeys(from_views)),
            tuple(own),
        )

    def entity_columns(self, views: Mapping[str, FeatureViewConfig]) -> list[str]:
        """The keys a request row needs for the online lookups."""
        return list(dict.fromkeys(e for v in self.view_names for e in views[v].entities))

    def check_rows(self, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
        """Every row has the model's own facts and the entity keys.

        Raises:
            PredictionRequestError: naming the row and what it lacks.
        """
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise PredictionRequestError(f"rows[{index}]: expected an object")
            missing = [c for c in (*self.request_features, *keys) if c not in row]
            if missing:
                raise PredictionRequestError(f"rows[{index}]: missing {', '.join(missing)}")

    def predict(self, features: Sequence[Mapping[str, Any]]) -> list[float]:
        """The model's output for complete feature rows (probabilities for binary tasks)."""
        import pyarrow as pa

        pre = self.preprocessor
        columns: dict[str, Any] = {}
        for name in self.config.features:
            values = [row.get(name) for row in features]
            if name in pre.categories:
                columns[name] = pa.array([None if v is None else str(v) for v in values])
            elif name in pre.boolean:
                columns[name] = pa.array(values, pa.bool_())
            else:
                columns[name] = pa.array([_number(v) for v in values], pa.float64())
        return self.predict_table(pa.table(columns))

    def predict_table(self, table: Any) -> list[float]:
        """The model's output for an Arrow table holding the feature columns."""
        import torch

        matrix = self.preprocessor.transform(table)
        with torch.no_grad():
            out = self.model(torch.tensor(matrix)).double().reshape(-1)
        if self.config.task == "binary":
            out = torch.sigmoid(out)
        return [float(v) for v in out.tolist()]


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    number = float(value)
    return None if math.isnan(number) else number
