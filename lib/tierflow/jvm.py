"""The JVM side: Java itself, Spark's home in the pyspark package, fetched jar folders.

``make setup`` fetches two classpaths from Maven Central into ``.local/jars``: ``spark``
(Delta and spark-sql-kafka with their dependencies, minus what pyspark already ships)
and ``kafka`` (the Apache Kafka broker). They are kept apart so the broker's libraries
never shadow Spark's.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from tierflow.errors import MissingDependencyError

SETUP_HINT = "run `make setup` (it fetches the jars with Maven)"


def java_executable() -> str:
    """Path of ``java``, or an error that says what to install."""
    java = shutil.which("java")
    if java is None:
        raise MissingDependencyError(
            "Java was not found on PATH; install a JDK 17 "
            "(Debian/Ubuntu: `apt-get install openjdk-17-jdk-headless`)"
        )
    return java


def spark_home() -> Path:
    """The pyspark package folder, which is a complete SPARK_HOME (bin/, jars/)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("pyspark is not installed; run `make setup`")
    return Path(spec.origin).parent


def jars_in(folder: Path, what: str) -> list[Path]:
    """The jars of one fetched classpath, sorted; an error naming the fix if there are none."""
    jars = sorted(folder.glob("*.jar"))
    if not jars:
        raise MissingDependencyError(f"no {what} jars in {folder}; {SETUP_HINT}")
    return jars


def classpath(folder: Path, what: str) -> str:
    """A Java classpath wildcard for ``folder``, after checking it holds jars."""
    jars_in(folder, what)
    return str(folder / "*")
