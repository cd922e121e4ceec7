"""The multi-host scenario, run on the lab's client host: ``python -m tests.multihost.scenario WORK``.

Hosts (see :mod:`tests.multihost.run`): h1 runs Kafka broker 1, the Spark master, the Ray
head and Redis; h2 runs broker 2 and a Spark worker; h3 runs broker 3, the other Spark
worker and the Ray worker; the client runs the drivers and the streaming daemons.

1. The cluster starts: 3 KRaft brokers (replication factor 3, min in-sync replicas 2),
   Spark standalone, Ray with token authentication, Redis.
2. At once: a batch job that the planner sends to the Spark cluster (``tierflow plan`` /
   ``tierflow run`` on the client, told it has 50 MiB and where the Spark master is;
   executors on h2 and h3), a training job with ``ray job submit`` (DDP workers spread
   over h1 and h3), and two streaming daemons fed by a producer on the client. Once each
   has work in flight on h3, h3 is cut off (its switch port goes down). Everything must
   still complete.
3. The outputs are written for the test to compare: the job's table, the model (the
   test compares it with the same run undisturbed on the session's Ray head), and the
   online store against a batch recomputation of the same events.

Results go to ``WORK/result.json``; the process records to ``WORK/processes.json``
(the runner stops them by PID whatever happens here).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.multihost.lab import Lab
from tests.support import latest_checkpoint, training_config, training_snapshot
from tierflow.jvm import classpath, java_executable, spark_home
from tierflow.paths import ProjectPaths
from tierflow.services.process import save_records, tail

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KAFKA_HOSTS = ("h1", "h2", "h3")
TOPIC = "mh.flights.departures"
PARTITIONS = 6


def say(message: str) -> None:
    print(f"[multihost {time.strftime('%H:%M:%S')}] {message}", flush=True)


#: Called by wait_for on every round: raises when a process the scenario needs has died.
WATCH: list[Callable[[], None]] = []


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for watch in WATCH:
            watch()
        try:
            value = check()
        except Exception as exc:
            last, value = exc, None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s (last error: {last!r})")


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return json.load(resp)


class Cluster:
    """Starts each service on its host, with everything it writes under ``work``."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab, self.work = lab, work
        self.paths = ProjectPaths.discover()
        self.ip = lab.hosts
        self.token = work / "ray-token"
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.ip[h]}:9092" for h in KAFKA_HOSTS)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.ip['h1']}:6379/0"

    @property
    def spark_master(self) -> str:
        return f"spark://{self.ip['h1']}:7077"

    @property
    def ray_dashboard(self) -> str:
        return f"http://{self.ip['h1']}:8265"

    def ray_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
                "RAY_USAGE_STATS_ENABLED": "0",
                # torch.distributed's Gloo picks the host name's address (loopback here).
                "GLOO_SOCKET_IFNAME": "eth0",
                # A lost node is noticed within seconds, not the default half minute.
                "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "5"}  # fmt: skip

    def check_alive(self, cut: tuple[str, ...] = ()) -> None:
        """Fail with its log when a service process of a host still connected has died."""
        for record in self.lab.processes:
            host = Path(record.log).name.split("-", 1)[0]
            if host not in cut and not record.is_alive():
                raise RuntimeError(f"{record.name} on {host} died:\n{tail(record.log, 20)}")

    def _start(self, host: str, name: str, argv: list[str], env: dict[str, str] | None = None):
        # Like the service manager: Python the services start (Ray job entrypoints, Spark's
        # Python workers) is this environment's.
        env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYSPARK_PYTHON": sys.executable} | (env or {})  # fmt: skip
        record = self.lab.start(host, name, argv, log=self.work / "logs" / f"{host}-{name}.log",
                                env=env)  # fmt: skip
        save_records(self.work / "processes.json", self.lab.processes)
        return record

    def start_kafka(self) -> None:
        voters = ",".join(f"{i}@{self.ip[h]}:9093" for i, h in enumerate(KAFKA_HOSTS, 1))
        java, cp = java_executable(), classpath(self.paths.kafka_jars, "Kafka broker")
        cluster_id = "tierflowMultiHost0001A"
        for node, host in enumerate(KAFKA_HOSTS, 1):
            folder = self.work / f"kafka-{node}"
            (folder / "data").mkdir(parents=True)
            ip = self.ip[host]
            props = {
                "process.roles": "broker,controller", "node.id": node,
                "controller.quorum.voters": voters,
                "listeners": f"PLAINTEXT://{ip}:9092,CONTROLLER://{ip}:9093",
                "advertised.listeners": f"PLAINTEXT://{ip}:9092",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "log.dirs": folder / "data",
                "default.replication.factor": 3, "min.insync.replicas": 2,
                "offsets.topic.replication.factor": 3, "offsets.topic.num.partitions": 6,
                "transaction.state.log.replication.factor": 3,
                "transaction.state.log.min.isr": 2,
                "unclean.leader.election.enable": "false",
                "auto.create.topics.enable": "false",
                "group.initial.rebalance.delay.ms": 0,
                # A replica behind a dead link leaves the in-sync set after 5 s, so that
                # acks=all writes go on with the two that remain.
                "replica.lag.time.max.ms": 5000,
                "broker.session.timeout.ms": 6000, "broker.heartbeat.interval.ms": 1000,
            }  # fmt: skip
            conf = folder / "server.properties"
            conf.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
            subprocess.run(
                [java, "-cp", cp, "kafka.tools.StorageTool", "format",
                 "--cluster-id", cluster_id, "--config", str(conf)],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            self._start(host, "kafka", [
                java, "-Xms384m", "-Xmx384m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                f"-Dkafka.logs.dir={folder}", "-cp", cp, "kafka.Kafka", str(conf),
            ])  # fmt: skip

    def start_redis(self) -> None:
        folder = self.work / "redis"
        folder.mkdir()
        # The lab network is private to this test; Redis's protected mode would refuse
        # the client host, which is not loopback.
        self._start("h1", "redis", [
            "redis-server", "--bind", self.ip["h1"], "--port", "6379", "--protected-mode", "no",
            "--dir", str(folder), "--save", "", "--appendonly", "yes",
        ])  # fmt: skip

    def start_spark(self) -> None:
        spark_class = str(spark_home() / "bin" / "spark-class")
        java_home = str(Path(java_executable()).resolve().parent.parent)

        def env(host: str) -> dict[str, str]:
            return {"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": self.ip[host],
                    "SPARK_NO_DAEMONIZE": "1", "JAVA_HOME": java_home,
                    "SPARK_LOG_DIR": str(self.work / "logs"), "SPARK_DAEMON_MEMORY": "384m",
                    "PYSPARK_PYTHON": sys.executable,
                    "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false "
                                         "-Dspark.worker.timeout=15"}  # fmt: skip

        self._start("h1", "spark-master", [
            spark_class, "org.apache.spark.deploy.master.Master", "--host", self.ip["h1"],
            "--port", "7077", "--webui-port", "8080",
        ], env("h1"))  # fmt: skip
        for host in ("h2", "h3"):
            self._start(host, "spark-worker", [
                spark_class, "org.apache.spark.deploy.worker.Worker", "--host", self.ip[host],
                "--port", "7078", "--webui-port", "8081", "--cores", "1", "--memory", "1g",
                "--work-dir", str(self.work / f"spark-work-{host}"), self.spark_master,
            ], env(host))  # fmt: skip

    def start_ray(self) -> None:
        ray = str(BIN / "ray")
        temp = self.lab.temp / "ray"  # removed with the lab (Ray keeps its sockets here)
        common = ["--block", "--disable-usage-stats", "--min-worker-port", "30000",
                  "--max-worker-port", "30199"]  # fmt: skip
        self._start("h1", "ray-head", [
            ray, "start", "--head", "--node-ip-address", self.ip["h1"], "--port", "6380",
            "--dashboard-host", self.ip["h1"], "--dashboard-port", "8265",
            "--num-cpus", "2", "--object-store-memory", str(300 * 2**20),
            # Job drivers ask for a sliver of this: they, and so Ray Train's controller,
            # run on the head, which is never cut off.
            "--resources", '{"head": 1}',
            "--temp-dir", str(temp), *common,
        ], self.ray_env())  # fmt: skip
        self._start("h3", "ray-worker", [
            ray, "start", "--address", f"{self.ip['h1']}:6380",
            "--node-ip-address", self.ip["h3"], "--num-cpus", "1",
            "--object-store-memory", str(300 * 2**20), *common,
        ], self.ray_env())  # fmt: skip

    # --- health ----------------------------------------------------------------------------

    def kafka_brokers(self) -> int:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            return len(admin.describe_cluster()["brokers"])
        finally:
            admin.close()

    def spark_workers(self) -> int:
        return int(http_json(f"http://{self.ip['h1']}:8080/json/")["aliveworkers"])

    def ray_nodes(self) -> int:
        out = subprocess.run(
            [str(BIN / "ray"), "list", "nodes", "--format", "json", "--address",
             self.ray_dashboard, "--filter", "state=ALIVE"],
            env=os.environ | self.ray_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return len(json.loads(out.stdout)) if out.returncode == 0 else 0

    def redis_ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()


# --- workloads ------------------------------------------------------------------------------


class RayJob:
    """A training job sent with ``ray job submit --no-wait``, then followed by its status.

    (The CLI's own log tail is a websocket to the dashboard, which a busy two-core
    machine can drop; the job itself does not depend on it.)
    """

    def __init__(self, cluster: Cluster, data: Path, name: str, log: Path) -> None:
        self.cluster, self.log = cluster, log
        self.id = f"{name}-{cluster.lab.tag}"
        # Spread over the hosts (one worker on h3, which is cut off), with checkpoints
        # often enough that the run resumes from one taken before the cut.
        config = training_config(data, name, placement="spread", checkpoint={"every_steps": 10})
        self._ray(
            "submit", "--no-wait", "--submission-id", self.id,
            "--entrypoint-resources", '{"head": 0.01}',
            "--working-dir", str(PROJECT / "jobs"), "--",
            "python", "train.py", str(config), "--data-dir", str(data), "--json",
        )  # fmt: skip

    def _ray(self, action: str, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "ray"), "job", action, "--address", self.cluster.ray_dashboard, *args],
            cwd=PROJECT, env=os.environ | self.cluster.ray_env(), capture_output=True,
            text=True, timeout=120, check=True,
        )  # fmt: skip
        return done.stdout + done.stderr  # the CLI reports through its logger, on stderr

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        out = self._ray("status", self.id).lower()  # "Job 'x' succeeded", "... is running"
        for state in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
            if f" {state.lower()}" in out:
                return state
        return "UNKNOWN"

    def logs(self) -> str:
        """What the job's driver has printed so far."""
        return self._ray("logs", self.id)

    def wait(self, timeout: float) -> str:
        """The final status; the job's logs go to ``log``."""
        final = wait_for(f"ray job {self.id}",
                         lambda: (s := self.status()) in ("SUCCEEDED", "FAILED", "STOPPED") and s,
                         timeout, every=2)  # fmt: skip
        self.log.write_text(self._ray("logs", self.id))
        return str(final)


#: A training run's checkpoints under ``<storage>/<name>/runs`` (each run has a folder).
CHECKPOINTS = "*/ray/checkpoint_*/meta.json"


def latest_step(checkpoints: Path) -> int:
    """The step of the newest checkpoint the run has written (0 before the first)."""
    steps = [0]
    for meta in checkpoints.glob(CHECKPOINTS):
        try:
            steps.append(json.loads(meta.read_text())["step"])
        except (OSError, ValueError, KeyError):  # being written, or removed (keep: N)
            continue
    return max(steps)


def _ray_list(cluster: Cluster, *what: str) -> list[dict[str, Any]]:
    address = ["--address", cluster.ray_dashboard, "--format", "json", "--limit", "200"]
    return list(json.loads(subprocess.run(
        [str(BIN / "ray"), "list", *what, *address], env=os.environ | cluster.ray_env(),
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout))  # fmt: skip


def ray_node_ips(cluster: Cluster) -> dict[str, str]:
    """Each Ray node's address, by node id."""
    return {n["node_id"]: n["node_ip"] for n in _ray_list(cluster, "nodes")}


def training_workers_on(cluster: Cluster, ip_of: dict[str, str]) -> list[str]:
    """The node addresses of the live Ray Train workers (``ip_of``: the nodes' addresses,
    asked once: every round of this is a CLI of seconds while the run goes on)."""
    actors = _ray_list(cluster, "actors", "--filter", "class_name=RayTrainWorker",
                       "--filter", "state=ALIVE")  # fmt: skip
    return sorted(ip_of.get(a["node_id"], "?") for a in actors)


class PlannerJob:
    """``tierflow plan`` and ``tierflow run`` of a job on a client host given too little memory.

    The host is told it has 50 MiB (``TIERFLOW_MEMORY_GB``) and where the Spark master is
    (``TIERFLOW_SPARK_MASTER``): the planner asks the master's UI for its workers, finds
    that neither this host's single-node tier nor local Dask or Spark can hold the job,
    and sends it to the cluster, where it runs with its driver on this host. Spark's own
    ``spark-defaults.conf`` (``SPARK_CONF_DIR``) gives up on a lost executor after 15 s
    instead of 120 s.
    """

    def __init__(self, cluster: Cluster, data: Path) -> None:
        self.data = data
        conf = cluster.work / "spark-conf"
        conf.mkdir(exist_ok=True)
        (conf / "spark-defaults.conf").write_text(
            "spark.network.timeout 15s\nspark.network.timeoutInterval 5s\n"
            "spark.executor.heartbeatInterval 2s\n"
        )
        self.env = os.environ | {
            "TIERFLOW_MEMORY_GB": str(50 / 1024), "TIERFLOW_SPARK_MASTER": cluster.spark_master,
            "TIERFLOW_SPARK_DRIVER_HOST": cluster.ip["client"],
            "TIERFLOW_LOGS_DIR": str(data / "_logs"), "SPARK_CONF_DIR": str(conf),
        }  # fmt: skip
        args = ["orders_clean", "--data-dir", str(data)]
        self.log = cluster.work / "logs" / "planner-run.log"
        self.run = subprocess.Popen(
            [str(BIN / "tierflow"), "run", *args, "--quiet"], cwd=PROJECT, env=self.env,
            stdout=subprocess.PIPE, stderr=self.log.open("wb"), text=True,
        )  # fmt: skip
        # The plan the run makes, asked for on the side while it starts (its own process,
        # the same inputs): the run does not wait for it.
        plan = subprocess.run([str(BIN / "tierflow"), "plan", *args, "--json"], cwd=PROJECT,
                              env=self.env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert plan.returncode == 0, plan.stderr[-3000:]
        self.plan = json.loads(plan.stdout)

    def wait(self, timeout: float) -> dict[str, Any]:
        out, _ = self.run.communicate(timeout=timeout)
        assert self.run.returncode == 0, self.log.read_text()[-4000:]
        estimates = {e["engine"]: e for e in self.plan["estimates"]}
        return {"engine": self.plan["engine"], "address": self.plan["address"],
                "reason": self.plan["reason"], "estimates": estimates, "rc": self.run.returncode,
                "summary": out.strip().splitlines()[-1], "table": str(self.data / "silver" / "orders")}  # fmt: skip


def partitions_led_by(cluster: Cluster, broker: int) -> list[int]:
    """The partitions of the scenario's topic whose leader is ``broker``."""
    from kafka import KafkaAdminClient

    leaders = {}
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    for topic in admin.describe_topics([TOPIC]):
        for part in topic["partitions"]:
            # Field names differ between metadata versions (partition/partition_index).
            index = part.get("partition_index", part.get("partition"))
            leaders[index] = part.get("leader_id", part.get("leader"))
    admin.close()
    return sorted(p for p, leader in leaders.items() if leader == broker)


def executors_on(cluster: Cluster, host: str) -> int:
    """Executors running on ``host``'s Spark worker, from its UI's JSON."""
    state = http_json(f"http://{cluster.ip[host]}:8081/json/")
    return len(state.get("executors", []))


def main(work: Path) -> int:  # noqa: PLR0915 - one scenario, read top to bottom
    from tierflow.examples.flights import flights_table
    from tierflow.examples.retail import generate
    from tierflow.stores.redis_store import RedisOnlineStore
    from tierflow.stream.commands import ensure_topic
    from tierflow.stream.parity import compare, end_offsets, expected_values, wait_caught_up
    from tierflow.stream.replay import ordered, replay

    lab = Lab.load(work / "lab.json")
    cluster = Cluster(lab, work)
    result: dict[str, Any] = {"cut": "h3"}
    began = time.monotonic()

    say("data: retail orders for the Spark job, a training table, January's flights")
    spark_data = generate(work / "spark-data", orders=12_000, files=16)
    train_data = training_snapshot(work / "train-data")

    say("starting Kafka x3, Redis, Spark master + 2 workers, Ray head + worker")
    WATCH.append(cluster.check_alive)
    cluster.start_kafka()
    cluster.start_redis()
    cluster.start_spark()
    cluster.start_ray()
    wait_for("3 Kafka brokers", lambda: cluster.kafka_brokers() == 3, 180)
    wait_for("Redis", cluster.redis_ping, 60)
    wait_for("2 Spark workers", lambda: cluster.spark_workers() == 2, 180)
    wait_for("2 Ray nodes", lambda: cluster.ray_nodes() == 2, 240, every=3)
    result["cluster_up_s"] = round(time.monotonic() - began, 1)
    say(f"cluster up in {result['cluster_up_s']} s")

    # --- everything at once, then h3 goes ------------------------------------------------
    from tierflow.project import Project

    view = Project.load().feature_view("carrier_delays")
    events, _ = ordered(flights_table((1,)), view.event_time)
    events = events.slice(0, 12_000)
    ensure_topic(cluster.bootstrap, TOPIC, PARTITIONS, replication_factor=3)
    group = f"mh-{lab.tag}"
    daemon_env = os.environ | {
        "TIERFLOW_STREAM_BOOTSTRAP_SERVERS": cluster.bootstrap,
        "TIERFLOW_STREAM_TOPIC_PREFIX": "mh.", "TIERFLOW_STREAM_GROUP_ID": group,
        "TIERFLOW_STREAM_REQUEST_TIMEOUT_MS": "15000",
        "TIERFLOW_STREAM_TOPIC_REPLICATION_FACTOR": "3",
        "TIERFLOW_ONLINE_STORE": "redis", "TIERFLOW_REDIS_URL": cluster.redis_url,
    }  # fmt: skip
    daemons = [
        subprocess.Popen(
            [str(BIN / "tierflow"), "stream", "--view", view.name, "--metrics-port", "0"],
            cwd=PROJECT,
            env=daemon_env,
            stdout=(work / "logs" / f"daemon-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in (1, 2)
    ]
    # Half the events before the cut, half after it: the second half is produced while
    # partitions led by the lost broker fail over, whatever the timings before the cut.
    sent: list[Any] = []
    cut_done = threading.Event()

    def produce() -> None:
        half = events.num_rows // 2
        for part in (events.slice(0, half), events.slice(half)):
            if sent:
                cut_done.wait(timeout=900)
            sent.append(replay(part, TOPIC, cluster.bootstrap, keys=list(view.entities),
                               time_column=view.event_time, rate=200))  # fmt: skip

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    # The batch job: this host may use 50 MiB, the Spark cluster is configured. It runs
    # for about a minute once its executors are up; the training run's steps take seconds
    # (the start is the long part), so the training is submitted once the executors are
    # up, and h3 is cut as soon as it has a checkpoint: both are then mid-run, whatever
    # the machine's speed.
    planner = PlannerJob(cluster, spark_data)
    wait_for("a Spark executor on h3", lambda: executors_on(cluster, "h3") > 0, 180, every=0.5)
    wait_for("a Spark executor on h2", lambda: executors_on(cluster, "h2") > 0, 180, every=0.5)
    # What the cut will take away, asked now: none of it changes until the cut, and the
    # training run leaves only seconds between its first checkpoint and its end, so
    # nothing slow may stand between that checkpoint and the cut.
    result["spark_executors_before_cut"] = {h: executors_on(cluster, h) for h in ("h2", "h3")}
    result["partitions_led_by_broker_3_before_cut"] = partitions_led_by(cluster, 3)
    train_log = work / "logs" / "train-cut.log"
    training = RayJob(cluster, train_data, "mh_cut", train_log)
    checkpoints = train_data / "models" / "mh_cut" / "runs"
    published = train_data / "models" / "mh_cut" / "model.pt"  # written once it has ended

    # Where its workers run is asked (a CLI of seconds) while they start, in a thread, so
    # that the cut follows the first checkpoint at once, not after a round of the CLI.
    workers: list[list[str]] = []

    def find_workers() -> None:
        ip_of: dict[str, str] = {}
        while not workers and not cut_done.is_set():
            try:
                ip_of = ip_of or ray_node_ips(cluster)
                found = training_workers_on(cluster, ip_of)
            except (subprocess.SubprocessError, ValueError):  # the dashboard is busy
                found = []
            if len(found) == 2 and not cut_done.is_set():  # seen before the cut
                workers.append(found)
            time.sleep(0.5)

    finder = threading.Thread(target=find_workers, daemon=True)
    finder.start()
    try:
        wait_for("2 training workers and a registered checkpoint of the disturbed run",
                 lambda: workers and any(latest_checkpoint(run / "ray") for run in checkpoints.glob("*")),
                 300, every=0.1)  # fmt: skip
    except TimeoutError:
        train_log.write_text(training.logs())  # what the job's driver said, for the failure
        raise
    # Each of these is a look at a process or a file: the cut comes within milliseconds.
    in_flight = {"spark": planner.run.poll() is None, "training": not published.exists(),
                 "streaming": all(d.poll() is None for d in daemons)}  # fmt: skip
    # The job stays RUNNING after the last step (the evaluation): the step of its newest
    # checkpoint is recorded, and the test compares it with the undisturbed run's steps.
    result["training_checkpoint_step_before_cut"] = latest_step(checkpoints)
    assert all(in_flight.values()), (
        f"finished before the cut, which would prove nothing: {in_flight}"
    )
    lab.cut("h3")
    cut_done.set()
    finder.join(timeout=120)
    result["training_workers_before_cut"] = workers[0]
    say(f"cut h3 off (training workers on {workers[0]}, "
        f"executors {result['spark_executors_before_cut']})")  # fmt: skip
    WATCH[:] = [lambda: cluster.check_alive(cut=("h3",))]
    result["cut_at_s"] = round(time.monotonic() - began, 1)

    producer.join(timeout=600)
    assert len(sent) == 2, "the producer did not finish"
    result["events_sent"] = sum(r.sent for r in sent)
    result["planner"] = planner.wait(timeout=900)
    say(f"planner's job: {result['planner']['summary']}")
    result["ray_job_status"] = training.wait(timeout=900)
    text = train_log.read_text(errors="replace")
    result["training_resumed"] = "resumed from checkpoint at step" in text

    store = RedisOnlineStore(cluster.redis_url)
    ends = end_offsets(cluster.bootstrap, TOPIC)
    result["topic_end_offsets"] = sum(ends.values())

    def alive() -> None:
        for i, d in enumerate(daemons, 1):
            assert d.poll() is None, (work / "logs" / f"daemon-{i}.log").read_text()[-3000:]

    wait_caught_up(store, group, TOPIC, ends, 600, alive=alive)
    expected = expected_values(events, view, PARTITIONS)
    parity = compare(store, view, expected, group=group, topic=TOPIC)
    result["store"] = parity.as_dict() | {"mismatches": [str(m) for m in parity.mismatches[:5]]}
    store.close()
    for daemon in daemons:
        daemon.terminate()
    result["daemon_exit_codes"] = [d.wait(timeout=120) for d in daemons]
    result["paths"] = {
        "spark_table": str(spark_data / "silver" / "orders"),
        "model_cut": str(train_data / "models" / "mh_cut" / "model.pt"),
    }
    result["seconds"] = round(time.monotonic() - began, 1)
    (work / "result.json").write_text(json.dumps(result, indent=2))
    say(f"done in {result['seconds']} s: {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
