"""Point-in-time-correct training sets, written as Delta snapshots that can be rebuilt.

Each label row gets every view's values as of the label's timestamp (the windows that
closed at or before it; see :mod:`tierflow.features.windows`), never later. The snapshot
is a Delta table version whose commit carries the recipe: the training set's config,
every view's full definition, the label table's and every source table's location and
version, and the engine. :func:`rebuild` reads that recipe (not today's ``conf/``) and
pins those versions, so the rows come out identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tierflow.config.features import FeatureSource, FeatureViewConfig, TrainingSetConfig
from tierflow.config.jobs import SinkConfig, SourceConfig
from tierflow.engines.base import Engine
from tierflow.features.batch import point_in_time
from tierflow.io.textdecode import META_FILE, META_RECORD
from tierflow.jobs.runner import read_source
from tierflow.jobs.sources import ResolvedSource, resolve_source

RECIPE_KEY = "tierflow.training_set"


@dataclass(frozen=True)
class Snapshot:
    """A written training-set snapshot."""

    path: str
    version: int
    rows: int
    recipe: dict[str, Any]


def _source(source: FeatureSource, version: int | None) -> SourceConfig:
    return SourceConfig(format=source.format, path=source.path, version=version)


def resolve_inputs(
    config: TrainingSetConfig,
    views: dict[str, FeatureViewConfig],
    data_dir: Any,
    pinned: dict[str, int] | None = None,
) -> tuple[ResolvedSource, dict[str, ResolvedSource]]:
    """Pin the label table and every view's source (to ``pinned`` versions when given)."""
    pinned = pinned or {}
    labels_version = pinned.get("__labels__", config.labels.version)
    labels = resolve_source("labels", _source(config.labels, labels_version), data_dir)
    sources = {
        join.view: resolve_source(
            join.view,
            _source(
                views[join.view].source, pinned.get(join.view, views[join.view].source.version)
            ),
            data_dir,
        )
        for join in config.views
    }
    return labels, sources


def build(
    config: TrainingSetConfig,
    views: dict[str, FeatureViewConfig],
    engine: Engine,
    data_dir: Any,
    *,
    out_path: str,
    pinned: dict[str, int] | None = None,
) -> Snapshot:
    """Compute the training set on ``engine`` and write it to ``out_path`` as a new version."""
    missing = [j.view for j in config.views if j.view not in views]
    if missing:
        raise KeyError(f"training set {config.name} names unknown view(s) {', '.join(missing)}")
    labels, sources = resolve_inputs(config, views, data_dir, pinned)
    label_frame = read_source(engine, labels).drop(META_FILE, META_RECORD)
    joins = []
    for join in config.views:
        view = views[join.view]
        frame = read_source(engine, sources[join.view])
        joins.append((view, dict(join.keys), frame))
    output = point_in_time(label_frame, config.timestamp, joins, engine)
    recipe = {
        RECIPE_KEY: config.model_dump(mode="json"),
        "views": {name: views[name].model_dump(mode="json") for name in sources},
        "inputs": {
            "__labels__": {"location": labels.location, "version": labels.version},
            **{n: {"location": s.location, "version": s.version} for n, s in sources.items()},
        },
        "engine": engine.name,
        "built_at": datetime.now(timezone.utc).isoformat(),
    }
    # Each build is a new version of the snapshot table; its columns follow the views.
    sink = SinkConfig(format="delta", path=out_path, mode="overwrite", replace_schema=True)
    result = engine.write(
        output, sink, out_path, commit_metadata=json.dumps(recipe, sort_keys=True)
    )
    assert result.version is not None
    return Snapshot(out_path, result.version, result.rows, recipe)


def read_recipe(path: str, version: int | None = None) -> dict[str, Any]:
    """The recipe recorded with a snapshot version (the latest by default)."""
    from tierflow.storage import delta_table

    table = delta_table(path)
    wanted = table.version() if version is None else version
    for entry in table.history():
        if entry.get("version") == wanted:
            text = entry.get("userMetadata")
            if not text:
                break
            return dict(json.loads(text))
    raise ValueError(f"{path} version {wanted} has no training-set recipe")


def rebuild(
    path: str, engine: Engine, data_dir: Any, *, out_path: str, version: int | None = None
) -> Snapshot:
    """Rebuild a snapshot from its own recipe: same definitions, same input versions."""
    recipe = read_recipe(path, version)
    config = TrainingSetConfig.model_validate(recipe[RECIPE_KEY])
    views = {n: FeatureViewConfig.model_validate(v) for n, v in recipe["views"].items()}
    pinned = {n: int(i["version"]) for n, i in recipe["inputs"].items() if i["version"] is not None}
    return build(config, views, engine, data_dir, out_path=out_path, pinned=pinned)
