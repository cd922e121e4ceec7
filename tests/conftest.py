"""Session fixtures: real services started once by the project's own service manager.

Each service starts the first time a test asks for it and stops when the session ends.
Tests get fresh names (topics, key prefixes, folders) from factory fixtures, so they
never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tierflow.config.services import ServicesConfig, load_services_config
from tierflow.paths import ProjectPaths
from tierflow.services.base import LocalService
from tierflow.services.manager import ServiceManager
from tierflow.services.process import read_stat

PROJECT = Path(__file__).resolve().parent.parent
# Never share a state folder with a developer's own `tierflow services up`.
os.environ.setdefault("TIERFLOW_STATE_DIR", str(PROJECT / ".local" / "test-services"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class Services:
    """Starts services on first use and remembers which to stop."""

    def __init__(self, manager: ServiceManager) -> None:
        self.manager = manager
        self.started: list[str] = []
        self.borrowed: list[str] = []

    def ensure(self, name: str) -> LocalService:
        if name not in self.started and name not in self.borrowed:
            if self.manager.live_pids(name):
                # Already running in this state folder (someone chose to share it): use
                # it, and leave it running at the end.
                self.manager.up([name])
                self.borrowed.append(name)
            else:
                self.manager.up([name])
                self.started.append(name)
        return self.manager.service(name)

    def stop(self, names: list[str]) -> None:
        """Stop those of ``names`` this session started; none of their processes may stay."""
        names = [name for name in names if name in self.started]
        if not names:
            return
        pids = [pid for name in names for pid in self.manager.live_pids(name)]
        self.manager.down(names)
        self.started = [name for name in self.started if name not in names]
        survivors = [p for p in pids if (st := read_stat(p)) is not None and st.state != "Z"]
        assert not survivors, f"{', '.join(names)} left processes running: {survivors}"


@pytest.fixture(scope="session")
def project_paths() -> ProjectPaths:
    return ProjectPaths.discover()


@pytest.fixture(scope="session")
def services_config(project_paths: ProjectPaths) -> ServicesConfig:
    return load_services_config(None, project_paths.settings("services.yaml"))


#: The session's services, once the first test has asked for one.
SERVICES = pytest.StashKey[Services]()


@pytest.fixture(scope="session")
def services(
    request: pytest.FixtureRequest, project_paths: ProjectPaths, services_config: ServicesConfig
) -> Iterator[Services]:
    svc = Services(ServiceManager(services_config, project_paths))
    request.config.stash[SERVICES] = svc
    yield svc
    del request.config.stash[SERVICES]
    svc.stop(list(svc.started))


# --- Each service runs only while its tests do ------------------------------------------
#
# On a two-core machine, services idling beside tests that do not use them take a share
# of the CPU those tests need. Modules are grouped by the services they use, and each
# service is stopped after the last module that uses it. (A later test asking for it
# again would start it again: this only saves time, it never decides what runs.)

#: The service behind each fixture and marker that asks for one.
SERVICE_OF = {
    "kafka_bootstrap": "kafka", "kafka": "kafka", "redis_url": "redis", "redis": "redis",
    "spark_cluster": "spark", "dask_scheduler": "dask", "dask": "dask", "ray_head": "ray",
    "ray": "ray", "minio": "minio",
}  # fmt: skip
#: The order of modules: a file name places that module, a service name the modules that
#: use it; the rest follow in their own order. The modules that start services of their
#: own (several hosts; the demo's and the secure profile's services) run while no session
#: service of their process does: the lab first (its model is compared with a run on the
#: session's Ray head, so Ray's modules come next), the demo after Ray's last module.
#:
#: `scripts/run-tests.sh` runs the suite as two pytest processes at once, each in a network
#: namespace and state folder of its own (the services' ports are fixed), and
#: `TIERFLOW_TEST_LANE` names a process's lane: "own" keeps the modules OWN_LANE places
#: (those that start services of their own, and Ray's), "shared" the rest; the two take
#: about the same time. Unset, one process runs everything.
OWN_LANE = ("test_multihost.py", "ray", "test_demo.py", "test_secure_profile.py")
ORDER = (*OWN_LANE, "kafka", "redis")
LANES = ("own", "shared")
_STOP_AFTER: dict[Path, list[str]] = {}


def _services_of(item: pytest.Item) -> set[str]:
    names = set(getattr(item, "fixturenames", ())) | {m.name for m in item.iter_markers()}
    return {SERVICE_OF[name] for name in names if name in SERVICE_OF}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    modules: dict[Path, set[str]] = {}
    for item in items:
        modules.setdefault(item.path, set()).update(_services_of(item))

    def rank(path: Path) -> int:
        if path.name in ORDER:
            return ORDER.index(path.name)
        for index, key in enumerate(ORDER):
            if key in modules[path]:
                return index
        return len(ORDER)

    order = {path: (rank(path), i) for i, path in enumerate(modules)}
    items.sort(key=lambda item: order[item.path])  # stable: tests keep their order
    lane = os.environ.get("TIERFLOW_TEST_LANE")
    if lane:
        if lane not in LANES:
            raise pytest.UsageError(f"TIERFLOW_TEST_LANE={lane!r}: not one of {list(LANES)}")
        kept: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            own = order[item.path][0] < len(OWN_LANE)
            (kept if own == (lane == "own") else dropped).append(item)
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    last: dict[str, Path] = {}
    for item in session.items:
        for service in _services_of(item):
            last[service] = item.path
    _STOP_AFTER.clear()
    for service, path in last.items():
        _STOP_AFTER.setdefault(path, []).append(service)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield
    # After the module's own fixtures are torn down: they may still talk to the service.
    svc = item.config.stash.get(SERVICES, None)
    if svc is not None and (nextitem is None or nextitem.path != item.path):
        svc.stop(_STOP_AFTER.get(item.path, []))
    return result


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory of names no other test (or earlier run) uses."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


# --- Kafka ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    return services.ensure("kafka").endpoints()["bootstrap_servers"]


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Callable[..., str]:
    """Factory: create a fresh topic with ``partitions`` partitions, return its name."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="tests-admin")

    def make(partitions: int = 3) -> str:
        name = unique_name("topic")
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        return name

    yield make
    admin.close()


# --- Redis ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return services.ensure("redis").endpoints()["url"]


# --- Spark ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def spark(project_paths: ProjectPaths):
    """One local Spark session with Delta and Kafka for the whole run (start is ~10 s)."""
    from tierflow.spark import get_spark

    session = get_spark(
        "tierflow-tests",
        master="local[2]",
        paths=project_paths,
        conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"},
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_cluster(services: Services) -> LocalService:
    return services.ensure("spark")


# --- Dask and Ray ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def dask_scheduler(services: Services) -> str:
    return services.ensure("dask").endpoints()["scheduler"]


@pytest.fixture(scope="session")
def ray_head(services: Services) -> LocalService:
    return services.ensure("ray")


@pytest.fixture(scope="session")
def training_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training tests' data folder, holding their snapshot."""
    from tests.support import training_snapshot

    return training_snapshot(tmp_path_factory.mktemp("training") / "data")


@pytest.fixture(scope="session")
def training_env(ray_head: LocalService, training_data: Path) -> dict[str, str]:
    """What ``tierflow train`` and ``ray job submit`` need to train on the Ray head.

    Ray's drivers print every worker's line (``RAY_DEDUP_LOGS=0``): the workers' lines
    naming the blocks each read differ only in numbers, which Ray would fold into one.
    """
    return (
        dict(os.environ)
        | ray_head.client_env()
        | {"TIERFLOW_LOGS_DIR": str(training_data.parent / "logs"), "RAY_DEDUP_LOGS": "0"}
    )


@pytest.fixture(scope="session")
def ddp_reference(training_data: Path, training_env: dict[str, str]) -> dict[str, Any]:
    """DDP on two workers of the Ray head, undisturbed: the run the training tests and the
    multi-host lab compare theirs with."""
    from tests.support import train

    return train(training_data, training_env, "mlp_ddp", strategy="ddp")


# --- MinIO (object storage) -----------------------------------------------------------


@pytest.fixture(scope="session")
def minio(services: Services) -> LocalService:
    return services.ensure("minio")


@pytest.fixture
def object_store(minio: LocalService, unique_name: Callable[[str], str]) -> Iterator[str]:
    """This process reads and writes ``s3://`` paths on the session's MinIO; yields a
    fresh ``s3://bucket/prefix`` no other test uses."""
    from tierflow import storage
    from tierflow.config.project import ObjectStoreConfig

    storage.configure(storage.ObjectStore.from_config(ObjectStoreConfig(), minio.client_env()))
    yield f"{minio.endpoints()['bucket']}/{unique_name('t')}"
    storage.configure(None)
