"""Spark sessions and ``spark-submit`` with the Delta and Kafka jars, offline.

The pyspark package carries neither Delta nor spark-sql-kafka. ``make setup`` fetches
them once with Maven into ``.local/jars/spark``; this module puts that folder on
``spark.jars`` instead of resolving packages from Maven Central at every session start,
so sessions start without network access.

Example:
    >>> from tierflow.spark import get_spark  # doctest: +SKIP
    >>> spark = get_spark("my-job")  # local[*], Delta enabled, UTC  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tierflow.errors import MissingDependencyError
from tierflow.jvm import classpath, jars_in, java_executable, spark_home
from tierflow.paths import ProjectPaths, scratch_dir

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# PySpark 4.2 warns on every pandas import that pandas >= 3 is not fully supported; the
# paths tierflow uses (Arrow in and out, mapInArrow) do not go through pandas.
warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
LOOPBACK = "127.0.0.1"
#: The address a driver binds and advertises to a cluster's executors (default loopback):
#: ``tierflow spark-submit``'s, and a session's that ``tierflow run --master`` starts.


def spark_jars(paths: ProjectPaths | None = None) -> list[str]:
    """The fetched Delta and Kafka jars (and their dependencies) for ``spark.jars``."""
    paths = paths or ProjectPaths.discover()
    return [str(j) for j in jars_in(paths.spark_jars, "Spark (Delta, spark-sql-kafka)")]


def spark_conf(
    paths: ProjectPaths | None = None, *, driver_host: str | None = LOOPBACK
) -> dict[str, str]:
    """The settings every tierflow Spark application gets.

    Args:
        paths: Project folders; discovered when omitted.
        driver_host: Address the driver binds and advertises; loopback for local work,
            None to leave Spark's choice (a driver that remote executors must reach).
    """
    paths = paths or ProjectPaths.discover()
    conf = {
        "spark.jars": ",".join(spark_jars(paths)),
        "spark.jars.ivy": str(paths.ivy),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(paths.project / ".local" / "spark-warehouse"),
        # Delta rebuilds a table's state from its log in this many tasks; its default of
        # 50 makes every write to a small table pay for 50 tasks. Raise it for tables of
        # many thousands of files.
        "spark.databricks.delta.snapshotPartitions": "8",
    }
    if driver_host:
        conf["spark.driver.host"] = driver_host
        conf["spark.driver.bindAddress"] = driver_host
    if any(paths.spark_s3_jars.glob("*.jar")):
        # S3A, for s3:// tables. On the classpath rather than in spark.jars: the AWS SDK
        # bundle is over 600 MB, and spark.jars would copy it to every executor of every
        # application. Workers need the same folder (the local cluster and the images
        # have it); a worker without it only lacks s3:// support.
        s3 = classpath(paths.spark_s3_jars, "Spark S3A (hadoop-aws, AWS SDK)")
        conf["spark.driver.extraClassPath"] = s3
        conf["spark.executor.extraClassPath"] = s3
    return conf


def ensure_s3_jars(paths: ProjectPaths, *, configured: bool | None = None) -> None:
    """Fetch the S3A jars the first time a Spark application may read ``s3://``.

    Only where object storage is ``configured`` (the project's ``object_store``, read
    when not given) and the jars are not there yet: ``make demo`` never needs them.
    """
    if any(paths.spark_s3_jars.glob("*.jar")):
        return
    if configured is None:
        from tierflow.storage import current

        configured = current().configured
    if configured:
        from tierflow.provision import provide

        provide("s3", paths)


def apply_object_store(spark: SparkSession) -> None:
    """Give the running session the object store's S3A settings (``s3://`` paths).

    Set on the live Hadoop configuration, which tasks receive with their work, so the
    access keys never appear on a command line or in the UI's Spark properties.
    """
    from tierflow.storage import current

    store = current()
    if not store.configured:
        return
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in store.hadoop_conf().items():
        hadoop.set(key, value)


@dataclass(frozen=True)
class SparkAuth:
    """What a driver needs for ``spark.authenticate``: settings, and the secret's file.

    The secret goes in a properties file of mode 0600 in a private folder, deleted when
    this process ends, passed as ``--properties-file``: settings given as ``--conf``
    show on the command line. Spark redacts it from its UI and event logs (its key
    matches ``spark.redaction.regex``).
    """

    conf: dict[str, str]
    properties_file: Path


def spark_auth() -> SparkAuth | None:
    """The driver's authentication when the ``spark_auth_secret`` secret is set."""
    from tierflow.secrets import read_secret

    secret = read_secret("spark_auth_secret")
    if secret is None:
        return None
    conf = {
        "spark.authenticate": "true",
        "spark.network.crypto.enabled": "true",
        "spark.io.encryption.enabled": "true",
    }
    return SparkAuth(conf, _secret_properties(secret.get_secret_value()))


def _secret_properties(secret: str) -> Path:
    import atexit
    import shutil

    from tierflow.secrets import write_secret_file

    folder = scratch_dir("tierflow-spark-")  # mode 0700
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "auth.properties"
    write_secret_file(path, f"spark.authenticate.secret={secret}\n")
    return path


def _process_env(driver_host: str | None) -> dict[str, str]:
    env = {"SPARK_HOME": str(spark_home()), "PYSPARK_PYTHON": sys.executable}
    if driver_host:
        # Otherwise Spark binds and advertises the machine's external address.
        env["SPARK_LOCAL_IP"] = driver_host
    return env


def under_spark_submit() -> bool:
    """True when this Python process was launched by ``spark-submit`` (its JVM is up)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(
    app_name: str = "tierflow",
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    paths: ProjectPaths | None = None,
    driver_host: str | None = LOOPBACK,
) -> SparkSession:
    """Build (or reuse) a Spark session with Delta and Kafka support.

    Args:
        app_name: Shown in the Spark UI and the master's application list.
        master: ``local[N]``, ``spark://host:port``; default ``local[*]``. Ignored under
            ``spark-submit``, whose ``--master`` already applies.
        conf: Extra settings, applied last.
        paths: Project folders; discovered when omitted.
        driver_host: See :func:`spark_conf`; loopback (the default) gives way to
            ``$TIERFLOW_SPARK_DRIVER_HOST``, the address a cluster's executors reach.

    Raises:
        MissingDependencyError: pyspark, Java or the fetched jars are missing, or the
            application was submitted without the jars.
    """
    java_executable()
    if driver_host == LOOPBACK:
        from tierflow.settings import env_settings

        driver_host = env_settings().spark_driver_host or LOOPBACK
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise MissingDependencyError("pyspark is not installed; run `make setup`") from None

    if under_spark_submit():
        spark = SparkSession.builder.appName(app_name).getOrCreate()
        extensions = spark.conf.get("spark.sql.extensions", "") or ""
        if DELTA_EXTENSION not in extensions:
            raise MissingDependencyError(
                "this application was submitted without the Delta jars and extension; "
                "submit it with `tierflow spark-submit ...` (it adds them)"
            )
        apply_object_store(spark)
        return spark

    for key, value in _process_env(driver_host).items():
        os.environ.setdefault(key, value)
    master = master or "local[*]"
    builder = SparkSession.builder.appName(app_name).master(master)
    paths = paths or ProjectPaths.discover()
    ensure_s3_jars(paths)
    settings = spark_conf(paths, driver_host=driver_host)
    if master.startswith("local"):
        # Spark's default of 200 shuffle partitions is sized for clusters; on one machine
        # it turns every small shuffle into hundreds of tiny tasks. (A job's engine sizes
        # them to its input: tierflow.engines.spark_engine.)
        settings.setdefault("spark.sql.shuffle.partitions", str(max(4, 2 * (os.cpu_count() or 2))))
        # In local mode the executors live in the driver's JVM, and Spark's default heap
        # of 1 GiB makes a large job spill from its first shuffle: give it a share of the
        # memory this machine offers (the heap grows only as far as it is used).
        settings.setdefault("spark.driver.memory", local_driver_memory())
    settings.setdefault("spark.ui.enabled", "false")
    settings.setdefault("spark.ui.showConsoleProgress", "false")
    auth = None if master.startswith("local") else spark_auth()
    if auth is not None:
        settings.update(auth.conf)
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    with _driver_properties(auth):
        spark = builder.getOrCreate()
    apply_object_store(spark)
    return spark


def local_driver_memory(share: float = 0.4) -> str:
    """The heap of a ``local[*]`` session: ``share`` of this machine's memory, at least 1 GiB."""
    from tierflow.jobs.resources import this_machine

    return f"{max(1024, int(this_machine().memory * share / 2**20))}m"


@contextmanager
def _driver_properties(auth: SparkAuth | None) -> Iterator[None]:
    """Give the driver's start the secret's properties file, for that start only.

    pyspark runs spark-submit to start the driver's JVM and reads its arguments from
    ``PYSPARK_SUBMIT_ARGS``; restored afterwards, so a later session adds no second file.
    """
    if auth is None:
        yield
        return
    before = os.environ.get("PYSPARK_SUBMIT_ARGS")
    os.environ["PYSPARK_SUBMIT_ARGS"] = (
        f"--properties-file {auth.properties_file} {before or 'pyspark-shell'}"
    )
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYSPARK_SUBMIT_ARGS"]
        else:
            os.environ["PYSPARK_SUBMIT_ARGS"] = before


def spark_submit_command(
    args: Sequence[str],
    paths: ProjectPaths | None = None,
    *,
    driver_host: str | None = LOOPBACK,
) -> tuple[list[str], dict[str, str]]:
    """The ``spark-submit`` command line and extra environment for ``args``.

    The Delta and Kafka jars and the session settings go in front of the user's
    arguments; a ``--jars`` of the user's is merged with ours, and a ``--conf`` of the
    user's wins over ours because spark-submit keeps the last one given.
    """
    paths = paths or ProjectPaths.discover()
    ensure_s3_jars(paths)
    conf = spark_conf(paths, driver_host=driver_host)
    jars = conf.pop("spark.jars").split(",")
    user = list(args)
    if "--jars" in user:
        at = user.index("--jars")
        jars.extend(user[at + 1].split(","))
        del user[at : at + 2]
    argv = [str(spark_home() / "bin" / "spark-submit"), "--jars", ",".join(jars)]
    auth = spark_auth()
    if auth is not None:
        conf |= auth.conf
        argv += ["--properties-file", str(auth.properties_file)]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    return argv + user, _process_env(driver_host)
