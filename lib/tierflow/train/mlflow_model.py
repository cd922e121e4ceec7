"""A trained model and its fitted preprocessing as one MLflow ``pyfunc`` model.

``mlflow.pyfunc.load_model("models:/NAME/VERSION")`` gives a model whose ``predict``
takes a pandas DataFrame holding the config's feature columns (view features already
joined, as in a training set) and returns the model's output per row (probabilities for a
binary task): the same numbers as ``tierflow serve`` for the same features. Imported only
when a model is logged or loaded: it imports MLflow.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd  # noqa: TC002 - MLflow reads the hint at run time

from tierflow.train.tracking import no_telemetry

no_telemetry()

with warnings.catch_warnings():
    # MLflow's own loaders, imported with pyfunc, have ``Any`` hints it warns about.
    warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType")
    import mlflow.pyfunc

#: The artifact key under which ``model.pt`` travels with the MLflow model.
WEIGHTS = "model.pt"


class TierflowModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """``model.pt`` (weights, preprocessing, config) behind MLflow's ``predict``."""

    def load_context(self, context: Any) -> None:
        """Load the weights and the preprocessing from the model's artifacts."""
        from tierflow.train.predict import Predictor

        self.predictor = Predictor.load(Path(context.artifacts[WEIGHTS]).parent, None)

    # A DataFrame: MLflow infers no schema from it (rows mix types per column).
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[float]:
        """The output for each row of ``model_input`` (a DataFrame of the features)."""
        del context, params
        return self.predictor.predict(model_input.to_dict(orient="records"))


def log_model(weights: Path, name: str) -> Any:
    """Log ``weights`` as the active run's model and register it as ``name``; the info."""
    import logging

    import torch

    # MLflow would print, at every training run, that a Python object is pickled (ours is,
    # by design: the weights travel as an artifact) and that it inferred no signature
    # (rows mix types per column; the features are the config's).
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=TierflowModel(),
            artifacts={WEIGHTS: str(weights)},
            registered_model_name=name,
            # Given, not inferred: inference imports the model's code and takes seconds.
            pip_requirements=["tierflow", f"torch=={torch.__version__.split('+', maxsplit=1)[0]}"],
        )
    finally:
        quiet.setLevel(level)
