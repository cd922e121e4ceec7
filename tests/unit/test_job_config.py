"""Job YAML: typed, frozen, and errors that name the file, the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierflow.config.jobs import JobConfig
from tierflow.config.loader import load_model
from tierflow.errors import ConfigError
from tierflow.paths import ProjectPaths
from tierflow.project import Project

GOOD = """
name: demo
sources:
  orders:
    format: csv
    path: raw/*.csv
    columns:
      id: {type: int64, nullable: false, unique: true}
      amount: {type: float64, min: 0}
      status: {type: string, allowed: [a, b]}
    checks:
      - {name: positive, expr: amount > 0}
sink: {format: delta, path: out/demo, mode: merge, merge_keys: [id]}
"""


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_job_parses_frozen(tmp_path):
    job = load_model(JobConfig, write(tmp_path, GOOD))
    assert job.sources["orders"].columns["id"].unique
    assert job.sink.merge_keys == ("id",)
    with pytest.raises(ValueError, match="frozen"):
        job.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [
        (("format: csv", "format: xlsx"), "sources.orders.format", "'xlsx'"),
        (
            ("{type: float64, min: 0}", "{type: float64, min: zero}"),
            "sources.orders.columns.amount.min",
            "'zero'",
        ),
        (
            ("{type: int64, nullable: false, unique: true}", "{type: int65}"),
            "sources.orders.columns.id.type",
            "'int65'",
        ),
        (("mode: merge", "mode: upsert"), "sink.mode", "'upsert'"),
        (("name: demo", "name: 9lives"), "name", "'9lives'"),
    ],
)
def test_bad_value_names_file_key_value(tmp_path, change, key, value):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_model(JobConfig, path)
    text = str(err.value)
    assert str(path) in text
    assert f"{key} = {value}" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("mode: merge, merge_keys: [id]", "mode: merge"), "mode merge needs merge_keys"),
        (
            ("format: delta, path: out", "format: parquet, path: out"),
            "mode merge needs format delta",
        ),
        (("format: csv", "format: csv\n    version: 3"), "time travel"),
        (
            ("{type: string, allowed: [a, b]}", "{type: string, min: 1}"),
            "min/max need a numeric type",
        ),
        (("columns:", "unique_key: [nope]\n    columns:"), "unique_key names undeclared column"),
    ],
)
def test_inconsistent_jobs_are_refused(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_model(JobConfig, write(tmp_path, GOOD.replace(*change)))


def test_csv_needs_columns(tmp_path):
    text = "name: x\nsources:\n  a: {format: csv, path: a.csv}\nsink: {format: delta, path: o}\n"
    with pytest.raises(ConfigError, match="csv sources need `columns`"):
        load_model(JobConfig, write(tmp_path, text))


def project_with(tmp_path: Path, job_text: str) -> tuple[Project, Path]:
    (tmp_path / "conf" / "jobs").mkdir(parents=True)
    (tmp_path / "conf" / "tierflow.yaml").write_text("transform_modules: []\n")
    path = write(tmp_path / "conf" / "jobs", job_text)
    paths = ProjectPaths(project=tmp_path, state=tmp_path / "s", jars=tmp_path / "j")
    return Project.load(paths=paths, data_dir=str(tmp_path / "data")), path


def test_unknown_transform_names_file_key_value(tmp_path):
    text = GOOD.replace("sink:", "transform: {function: no_such_thing}\nsink:")
    project, path = project_with(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        project.load_job("demo")
    assert str(path) in str(err.value)
    assert "transform.function = 'no_such_thing'" in str(err.value)


def test_bad_check_expression_names_file_key_value(tmp_path):
    project, path = project_with(tmp_path, GOOD.replace("amount > 0", "__import__('os')"))
    with pytest.raises(ConfigError) as err:
        project.load_job("demo")
    assert str(path) in str(err.value)
    assert "sources.orders.checks[0].expr = \"__import__('os')\"" in str(err.value)
    assert "unsupported function" in str(err.value)


def test_unknown_job_lists_known_ones(tmp_path):
    project, _ = project_with(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"jobs in conf/jobs: demo"):
        project.load_job("nope")


def test_example_jobs_all_load():
    project = Project.load()
    names = project.job_names()
    assert {"orders_clean", "daily_revenue", "customers_upsert", "category_revenue"} <= set(names)
    for name in names:
        project.load_job(name)
