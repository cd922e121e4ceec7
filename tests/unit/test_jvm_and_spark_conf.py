from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tierflow.errors import MissingDependencyError
from tierflow.paths import ProjectPaths
from tierflow.spark import DELTA_EXTENSION, ensure_s3_jars, spark_conf, spark_submit_command

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "jvm"
spec = importlib.util.spec_from_file_location("prune", SCRIPTS / "prune_spark_jars.py")
prune = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prune)


@pytest.mark.parametrize(
    ("jar", "artifact"),
    [
        ("spark-sql-kafka-0-10_2.13-4.2.0.jar", "spark-sql-kafka-0-10_2.13"),
        ("delta-spark_4.2_2.13-4.4.0.jar", "delta-spark_4.2_2.13"),
        ("hadoop-client-api-3.5.0.jar", "hadoop-client-api"),
        ("jackson-datatype-jdk8-2.13.5.jar", "jackson-datatype-jdk8"),
        ("zstd-jni-1.5.7-3.jar", "zstd-jni"),
        ("shims-0.9.25.jar", "shims"),
    ],
)
def test_artifact_names(jar, artifact):
    assert prune.artifact_of(jar) == artifact


def fake_paths(tmp_path: Path, jars: list[str]) -> ProjectPaths:
    folder = tmp_path / "jars" / "spark"
    folder.mkdir(parents=True)
    for name in jars:
        (folder / name).write_bytes(b"")
    return ProjectPaths(project=tmp_path, state=tmp_path / "state", jars=tmp_path / "jars")


def test_spark_conf_puts_the_fetched_jars_and_delta_on(tmp_path):
    paths = fake_paths(tmp_path, ["b.jar", "a.jar"])
    conf = spark_conf(paths)
    assert conf["spark.jars"].split(",") == [
        str(paths.spark_jars / "a.jar"),
        str(paths.spark_jars / "b.jar"),
    ]
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.jars.ivy"].startswith(str(tmp_path))
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert "spark.driver.host" not in spark_conf(paths, driver_host=None)


def test_missing_jars_say_how_to_fix(tmp_path):
    paths = ProjectPaths(project=tmp_path, state=tmp_path, jars=tmp_path / "nothing")
    with pytest.raises(MissingDependencyError, match="make setup"):
        spark_conf(paths)


def test_spark_submit_merges_user_jars_and_keeps_user_args_last(tmp_path):
    paths = fake_paths(tmp_path, ["delta.jar"])
    argv, env = spark_submit_command(
        ["--master", "spark://127.0.0.1:7077", "--jars", "/x/mine.jar", "job.py", "arg"], paths
    )
    assert argv[0].endswith("bin/spark-submit")
    jars = argv[argv.index("--jars") + 1].split(",")
    assert jars == [str(paths.spark_jars / "delta.jar"), "/x/mine.jar"]
    assert argv.count("--jars") == 1
    assert argv[-4:] == ["--master", "spark://127.0.0.1:7077", "job.py", "arg"]
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"


def first_use_project(tmp_path: Path, fetches: bool) -> ProjectPaths:
    """A checkout whose setup script records its layer and, if ``fetches``, brings a jar."""
    paths = fake_paths(tmp_path, ["delta.jar"])
    script = tmp_path / "scripts" / "setup.sh"
    script.parent.mkdir()
    fetch = f"mkdir -p {paths.spark_s3_jars} && touch {paths.spark_s3_jars}/hadoop-aws.jar"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/layers\n' + (fetch if fetches else "exit 3") + "\n"
    )
    script.chmod(0o755)
    return paths


def test_s3a_jars_come_the_first_time_object_storage_is_configured(tmp_path, capfd):
    paths = first_use_project(tmp_path, fetches=True)
    ensure_s3_jars(paths, configured=False)  # no object store: nothing fetched
    assert not (tmp_path / "layers").exists()
    ensure_s3_jars(paths, configured=True)
    assert (tmp_path / "layers").read_text() == "s3\n"
    assert "first use: fetching the S3A jars" in capfd.readouterr().err
    ensure_s3_jars(paths, configured=True)  # there now: not fetched again
    assert (tmp_path / "layers").read_text() == "s3\n"
    conf = spark_conf(paths)
    assert conf["spark.driver.extraClassPath"].startswith(str(paths.spark_s3_jars))


def test_a_failed_first_use_fetch_says_what_to_run(tmp_path):
    paths = first_use_project(tmp_path, fetches=False)
    with pytest.raises(MissingDependencyError, match=r"could not fetch the S3A jars.*setup.sh s3"):
        ensure_s3_jars(paths, configured=True)
    (tmp_path / "scripts" / "setup.sh").unlink()  # an installed package: no script
    with pytest.raises(MissingDependencyError, match=r"has no scripts/setup\.sh"):
        ensure_s3_jars(paths, configured=True)
