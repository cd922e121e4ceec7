"""``tierflow predict MODEL --input TABLE --output TABLE``: batch scoring on the tiers.

The rows of the input table (entity keys, a timestamp, the model's own facts) get every
view's features as of their timestamp, never later (:func:`~tierflow.features.batch.
point_in_time`, with the view definitions and joins of the training set the model was
trained on, read from its snapshot's recipe, over the views' current source tables), and
then the model's score, computed by :meth:`Engine.map_arrow` in the engine's own workers
(Polars batches; Dask partitions; Spark ``mapInArrow`` with the model broadcast once per
executor). Rows that already hold every feature (a feature table, a training snapshot)
are scored as they are. The output is the input's rows with the features and a ``score``
column, as a Delta table. Scores are computed by the same code as ``POST
/v1/predict/<model>``'s: the same features give the same score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tierflow.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from tierflow.engines.base import Engine
    from tierflow.project import Project
    from tierflow.train.predict import Predictor

SCORE = "score"


@dataclass(frozen=True)
class FoundModel:
    """A model to score with, and where it came from."""

    folder: Path
    version: int | None  # the registry's; None for a published folder
    snapshot: tuple[str, int] | None  # the training snapshot (path, Delta version)
    where: str


def find_model(project: Project, ref: str, into: Path) -> FoundModel:
    """The registry's version of ``ref``, else (a bare name) the published folder.

    Raises:
        UsageError: a version or alias the registry does not have.
    """
    from tierflow.storage import locate
    from tierflow.train.commands import load_training
    from tierflow.train.tracking import Tracking, load_model_folder, parse_model_ref

    tracking = Tracking.resolve(project.config.tracking.uri, project.data_dir)
    name, version, alias = parse_model_ref(ref)
    found = load_model_folder(tracking, ref, into / name)
    if found is not None:
        folder, number = found
        return FoundModel(folder, number, _snapshot_tag(tracking, name, number),
                          f"version {number} from the registry ({tracking.uri})")  # fmt: skip
    if version is not None or alias is not None:
        raise UsageError(f"--model {ref}: no model {name!r} in {tracking.uri}")
    # Not registered (trained before tracking): the model `tierflow train` published.
    config = load_training(project, name)
    folder = project.data_dir / config.storage_path / config.name
    record = folder / "run.json"
    snapshot = None
    if record.is_file():
        version_read = int(json.loads(record.read_text())["snapshot_version"])
        snapshot = (locate(config.snapshot.path, project.data_dir), version_read)
    return FoundModel(folder, None, snapshot, f"not in the registry; the one published in {folder}")


def _snapshot_tag(tracking: Any, name: str, version: int) -> tuple[str, int] | None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
    tag = client.get_model_version(name, str(version)).tags.get("tierflow.snapshot")
    if not tag or "@v" not in tag:
        return None
    path, _, number = tag.rpartition("@v")
    return path, int(number)


class Scorer:
    """The model's score appended to a table of its features (picklable: it travels)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def __call__(self, table: Any) -> Any:
        """``table`` with a ``score`` column (float64)."""
        import pyarrow as pa

        scores = self.predictor.predict_table(table) if table.num_rows else []
        return table.append_column(SCORE, pa.array(scores, pa.float64()))


@dataclass(frozen=True)
class PredictResult:
    """What a batch scoring run wrote."""

    output: str
    rows: int
    version: int | None
    model: str


def predict(
    project: Project,
    ref: str,
    *,
    input_path: str,
    output_path: str,
    engine: Engine,
    timestamp: str | None = None,
    downloads: Path,
) -> PredictResult:
    """Score ``input_path`` with model ``ref`` on ``engine`` into ``output_path`` (Delta).

    Raises:
        ConfigError: the model's snapshot has no recipe and the input lacks its features,
            or the input lacks the timestamp column.
    """
    from tierflow.config.features import FeatureViewConfig, TrainingSetConfig
    from tierflow.config.jobs import SinkConfig, SourceConfig
    from tierflow.features.batch import point_in_time
    from tierflow.features.training import RECIPE_KEY, read_recipe
    from tierflow.io.textdecode import META_FILE, META_RECORD
    from tierflow.jobs.runner import read_source
    from tierflow.jobs.sources import resolve_source
    from tierflow.storage import locate
    from tierflow.train.predict import Predictor

    model = find_model(project, ref, downloads)
    predictor = Predictor.load(model.folder, None)
    source = locate(input_path, project.data_dir)
    kind = table_format(source)
    rows = read_source(engine, resolve_source("input", SourceConfig(format=kind, path=source),
                                             project.data_dir))  # fmt: skip
    rows = rows.drop(META_FILE, META_RECORD, strict=False)
    given = set(rows.collect_schema().names())
    complete = given >= set(predictor.config.features)
    recipe = None if complete else _recipe(model.snapshot, read_recipe)
    if recipe is not None:
        config = TrainingSetConfig.model_validate(recipe[RECIPE_KEY])
        views = {n: FeatureViewConfig.model_validate(d) for n, d in recipe["views"].items()}
        column = timestamp or config.timestamp
        if column not in rows.collect_schema().names():
            raise ConfigError(f"predict: the input has no timestamp column {column!r} "
                              f"(the training set's; --timestamp names another)")  # fmt: skip
        joins = []
        for join in config.views:
            view = views[join.view]
            current = SourceConfig(format=view.source.format, path=view.source.path)
            events = read_source(engine, resolve_source(view.name, current, project.data_dir))
            joins.append((view, dict(join.keys), events))
        rows = point_in_time(rows, column, joins, engine)
    missing = [f for f in predictor.config.features if f not in rows.collect_schema().names()]
    if missing:
        raise ConfigError(f"predict: no value for the model's feature(s) {', '.join(missing)} "
                          "(neither in the input nor from the training set's views)")  # fmt: skip
    scored = engine.map_arrow(rows, Scorer(predictor))
    out = locate(output_path, project.data_dir)
    sink = SinkConfig(format="delta", path=out, mode="overwrite", replace_schema=True)
    result = engine.write(scored, sink, out)
    return PredictResult(out, result.rows, model.version, predictor.name)


def _recipe(snapshot: tuple[str, int] | None, read: Any) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    try:
        return dict(read(*snapshot))
    except (ValueError, OSError):
        return None  # a snapshot not built by `tierflow training-set build`


def table_format(path: str) -> Literal["delta", "parquet"]:
    """Delta where ``path`` is a Delta table, else Parquet files."""
    from tierflow.storage import is_delta_table

    return "delta" if is_delta_table(path) else "parquet"
