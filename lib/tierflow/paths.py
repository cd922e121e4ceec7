"""Where tierflow keeps things: the project folder, service state, fetched JVM jars.

Everything the project creates at run time lives under the ignored ``.local/`` folder of
the project, so a clean checkout plus ``make setup`` rebuilds it. Environment variables
move each part elsewhere (tests use this to keep their services apart from a developer's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_ENV = "TIERFLOW_PROJECT_DIR"
PROFILE_ENV = "TIERFLOW_PROFILE"
#: The settings files a profile may replace; jobs, views and training stay shared.
PROFILE_FILES = ("tierflow.yaml", "services.yaml", "streaming.yaml")


#: What makes a folder a tierflow project (``tierflow init`` writes it).
MARKER = Path("conf") / "tierflow.yaml"


def _is_project(path: Path) -> bool:
    return (path / MARKER).is_file()


def find_project_dir() -> Path:
    """Return the tierflow project folder.

    Order: ``$TIERFLOW_PROJECT_DIR`` (the command line's ``--project-dir`` sets it); the
    current folder or the nearest one above it holding ``conf/tierflow.yaml``; the
    checkout this package was installed from (an editable install of tierflow's own
    repository, whose examples are a project); else the current folder.
    """
    from tierflow.settings import env_settings

    named = env_settings().project_dir
    if named is not None:
        return named.resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if _is_project(candidate):
            return candidate
    here = Path(__file__).resolve().parent.parent.parent
    if _is_project(here) and (here / "lib" / "tierflow").is_dir():
        return here
    return cwd


@dataclass(frozen=True)
class ProjectPaths:
    """The folders of one project checkout."""

    project: Path
    state: Path
    jars: Path
    profile: str | None = None

    @classmethod
    def discover(cls) -> ProjectPaths:
        """Resolve the folders from the environment and the project layout.

        Raises:
            ConfigError: ``$TIERFLOW_PROFILE`` names no folder under ``conf/profiles``.
        """
        from tierflow.settings import env_settings

        env = env_settings()
        project = find_project_dir()
        state = env.state_dir or project / ".local" / "services"
        jars = env.jars_dir or project / ".local" / "jars"
        profile = env.profile
        if profile is not None and not (project / "conf" / "profiles" / profile).is_dir():
            from tierflow.errors import ConfigError

            known = sorted(p.name for p in (project / "conf" / "profiles").glob("*") if p.is_dir())
            raise ConfigError(
                f"{PROFILE_ENV} = {profile!r}: no folder conf/profiles/{profile} "
                f"(profiles: {', '.join(known) or 'none'})"
            )
        return cls(project=project, state=state.resolve(), jars=jars.resolve(), profile=profile)

    def settings(self, name: str) -> Path:
        """A settings file (``services.yaml``): the profile's own if it has one, else conf's.

        A profile (``TIERFLOW_PROFILE=secure``) is a folder ``conf/profiles/<name>/`` of
        whole settings files that replace the top-level ones; jobs, feature views and
        training configs are the same in every profile.
        """
        if name not in PROFILE_FILES:
            raise ValueError(f"{name} is not a settings file ({', '.join(PROFILE_FILES)})")
        if self.profile:
            own = self.conf / "profiles" / self.profile / name
            if own.is_file():
                return own
        return self.conf / name

    @property
    def conf(self) -> Path:
        """The ``conf/`` folder of YAML configuration."""
        return self.project / "conf"

    @property
    def spark_jars(self) -> Path:
        """Jars added to Spark: Delta and spark-sql-kafka with their dependencies."""
        return self.jars / "spark"

    @property
    def spark_s3_jars(self) -> Path:
        """S3A (hadoop-aws and the AWS SDK bundle): on Spark's classpath when a store is set."""
        return self.jars / "spark-s3"

    @property
    def kafka_jars(self) -> Path:
        """The Apache Kafka broker's classpath (kept apart from Spark's)."""
        return self.jars / "kafka"

    @property
    def ivy(self) -> Path:
        """Ivy cache for Spark, so nothing is written into the home folder."""
        return self.project / ".local" / "ivy"

    def service_dir(self, name: str) -> Path:
        """Data, logs and process records of one local service."""
        return self.state / name


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder of this process, named ``<prefix><pid>-<random>``.

    A killed process cannot remove its scratch: the folders of the same prefix whose
    process is gone are removed here first, so a machine's temporary folder does not
    fill with what killed benchmarks and jobs left.
    """
    import os
    import shutil
    import tempfile

    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{prefix}*-*"):
        pid = old.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True
