"""Feature view definitions: clear errors for unknown columns, bad windows, unsupported
aggregations and bad expressions; the window semantics' partial aggregates."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tierflow.config.features import FeatureViewConfig, duration_us
from tierflow.config.loader import load_model
from tierflow.errors import ConfigError
from tierflow.features.windows import Partial, finish, grid_floor, tile_of
from tierflow.paths import ProjectPaths
from tierflow.project import Project

VIEW = {
    "name": "v",
    "entities": ["k"],
    "event_time": "ts",
    "step": "1h",
    "ttl": "1d",
    "source": {"format": "delta", "path": "t", "columns": {
        "k": {"type": "string"}, "ts": {"type": "timestamp"}, "x": {"type": "float64"},
        "s": {"type": "string"}}},
    "features": [{"name": "m", "agg": "mean", "column": "x", "window": "3h"}],
}  # fmt: skip


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "conf" / "features" / "v.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def load(tmp_path: Path, doc: dict) -> FeatureViewConfig:
    return load_model(FeatureViewConfig, write(tmp_path, doc))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": [{"name": "m", "agg": "mean", "column": "nope"}]}, "unknown column 'nope'"),
        (
            {"features": [{"name": "m", "agg": "median", "column": "x"}]},
            "features[0].agg = 'median'",
        ),
        (
            {"features": [{"name": "m", "agg": "mean", "column": "x", "window": "90m"}]},
            "whole multiple of step 1h",
        ),
        (
            {"features": [{"name": "m", "agg": "mean", "column": "x", "window": "30m"}]},
            "whole multiple of step 1h",
        ),
        ({"features": [{"name": "m", "agg": "sum", "column": "s"}]}, "sum needs a numeric column"),
        ({"features": [{"name": "m", "agg": "mean"}]}, "aggregation mean needs a column"),
        (
            {"features": [{"name": "m", "agg": "count"}, {"name": "m", "agg": "count"}]},
            "feature names must be unique: m",
        ),
        ({"step": "1 hour"}, "step = '1 hour'"),
        ({"entities": ["missing"]}, "entity 'missing' is not a source column"),
        ({"event_time": "x"}, "event_time 'x' must be a timestamp column"),
        ({"derived": {"x": "k"}}, "derived columns shadow source columns: x"),
    ],
)
def test_bad_views_are_clear_errors(tmp_path, change, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, VIEW | change)
    assert message in str(err.value)
    assert str(tmp_path / "conf" / "features" / "v.yaml") in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("filter", "x >> 1", "unsupported operator"),
        ("filter", "y > 1", "unknown column `y`"),
    ],
)
def test_bad_expressions_name_file_key_value(tmp_path, key, value, message):
    write(tmp_path, VIEW | {key: value})
    (tmp_path / "conf" / "tierflow.yaml").write_text("transform_modules: []\n")
    project = Project.load(paths=ProjectPaths(project=tmp_path, state=tmp_path, jars=tmp_path))
    with pytest.raises(ConfigError) as err:
        project.feature_views()
    assert f"{key} = {value!r}" in str(err.value) and message in str(err.value)


def test_derived_expression_errors_name_their_key(tmp_path):
    write(tmp_path, VIEW | {"derived": {"big": "x > 5 and"}})
    (tmp_path / "conf" / "tierflow.yaml").write_text("transform_modules: []\n")
    project = Project.load(paths=ProjectPaths(project=tmp_path, state=tmp_path, jars=tmp_path))
    with pytest.raises(ConfigError, match=r"derived\.big = 'x > 5 and'"):
        project.feature_views()


def test_example_views_load():
    views = Project.load().feature_views()
    assert {"carrier_delays", "origin_delays", "route_history"} <= set(views)
    assert views["carrier_delays"].max_tiles == 24
    assert views["route_history"].entities == ("origin", "dest")


def test_durations_and_grid():
    assert duration_us("90s") == 90_000_000
    assert duration_us("7d") == 7 * 86_400_000_000
    step = duration_us("1h")
    assert tile_of(step - 1, step) == 0 and tile_of(step, step) == 1
    assert grid_floor(step * 5 + 1, step) == step * 5
    assert grid_floor(step * 5, step) == step * 5


def test_partials_merge_like_one_pass():
    values = [(3.0, 10), (None, 11), (1.0, 12), (5.0, 12), (2.0, 9)]
    whole = Partial()
    for v, t in values:
        whole.add(v, t)
    left, right = Partial(), Partial()
    for v, t in values[:2]:
        left.add(v, t)
    for v, t in values[2:]:
        right.add(v, t)
    merged = left.merge(right)
    assert merged == whole
    assert finish("count", whole, counts_rows=True) == 5
    assert finish("count", whole, counts_rows=False) == 4
    assert finish("mean", whole, counts_rows=False) == pytest.approx(2.75)
    assert finish("last", whole, counts_rows=False) == 5.0  # latest time 12, tie -> larger
    assert finish("stddev", whole, counts_rows=False) == pytest.approx(
        math.sqrt(((3 - 2.75) ** 2 + (1 - 2.75) ** 2 + (5 - 2.75) ** 2 + (2 - 2.75) ** 2) / 3)
    )
    empty = Partial()
    assert finish("count", empty, counts_rows=True) == 0
    assert finish("mean", empty, counts_rows=False) is None
