"""The streaming commands: ``tierflow stream``, ``tierflow event-log``, ``tierflow replay``.

Parsers are added without importing Kafka; the work is imported when a command runs.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.errors import ConfigError

if TYPE_CHECKING:
    from tierflow.config.features import FeatureViewConfig
    from tierflow.config.streaming import StreamingConfig
    from tierflow.project import Project
    from tierflow.stream.connection import KafkaConnection

COMMANDS = ("stream", "event-log", "replay")


def add_parsers(sub: Any) -> None:
    """Add the streaming subcommands to the ``tierflow`` parser."""
    stream = sub.add_parser(
        "stream", help="run a feature daemon: Kafka topics to online feature values"
    )
    stream.add_argument(
        "--view", action="append", dest="views", metavar="NAME",
        help="a view to keep current (repeatable; default: every view with a topic)",
    )  # fmt: skip
    stream.add_argument("--group", help="consumer group (default: streaming.yaml's group_id)")
    stream.add_argument("--store", choices=("sqlite", "redis"), help="online store kind")
    stream.add_argument("--metrics-port", type=int, help="port of /metrics and /health")
    stream.add_argument("--bootstrap", help="Kafka bootstrap servers")
    stream.add_argument("--max-seconds", type=float, help="stop after this long (for demos)")

    elog = sub.add_parser("event-log", help="append a topic's events to a Delta table")
    elog.add_argument("--topic", required=True, help="a view's topic (before the prefix)")
    elog.add_argument("--path", help="Delta table (default: <data>/<event_log_dir>/<topic>)")
    elog.add_argument("--bootstrap", help="Kafka bootstrap servers")
    elog.add_argument("--max-seconds", type=float, help="stop after this long")
    elog.add_argument("--data-dir", help="data folder")

    rep = sub.add_parser("replay", help="produce a table's rows to a topic in event-time order")
    rep.add_argument("table", help="Delta or Parquet table (relative to the data folder)")
    rep.add_argument("--topic", required=True, help="the topic (before the prefix)")
    rep.add_argument("--key", help="key columns, comma-separated (default: the topic's views')")
    rep.add_argument("--time", help="event-time column (default: the topic's views')")
    rep.add_argument("--rate", type=float, help="messages per second at most")
    rep.add_argument("--speedup", type=float, help="event time runs this many times faster")
    rep.add_argument("--limit", type=int, help="send only the first N events")
    rep.add_argument("--partitions", type=int, default=4, help="when creating the topic")
    rep.add_argument("--bootstrap", help="Kafka bootstrap servers")
    rep.add_argument("--data-dir", help="data folder")


def bootstrap_servers(
    project: Project, config: StreamingConfig, given: str | None
) -> KafkaConnection:
    """``--bootstrap``, else streaming.yaml's, else the local Kafka of services.yaml.

    With the security settings of streaming.yaml and the ``kafka_password`` secret.
    """
    from tierflow.stream.connection import KafkaConnection

    servers = given or config.bootstrap_servers
    if not servers:
        from tierflow.config.services import load_services_config

        services = load_services_config(None, project.paths.settings("services.yaml"))
        servers = f"{services.host}:{services.kafka.port}"
    return KafkaConnection.from_config(servers, config)


def _views_for(project: Project, names: list[str] | None) -> list[FeatureViewConfig]:
    views = project.feature_views()
    if names:
        return [project.feature_view(n) for n in names]
    chosen = [v for v in views.values() if v.source.topic]
    if not chosen:
        raise ConfigError("no feature view has a source.topic to stream from")
    return chosen


def run_command(args: argparse.Namespace, project: Project) -> int:
    """Run one streaming command."""
    from tierflow.config.streaming import load_streaming_config

    config = load_streaming_config(project.paths.settings("streaming.yaml"))
    if args.command == "replay":
        return _replay(args, project, config)
    from tierflow.stream.metrics import json_logging

    json_logging()
    # SIGUSR1 writes every thread's stack to stderr, the daemon going on: where a daemon
    # that seems to wait is waiting (a join, a store, a broker), without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.command == "event-log":
        return _event_log(args, project, config)
    return _stream(args, project, config)


def _stream(args: argparse.Namespace, project: Project, config: StreamingConfig) -> int:
    # A stop asked for while starting up (imports, connections) is honoured too: the
    # daemon then leaves before its first poll, still with exit status 0.
    asked: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: asked.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: asked.append(signum))

    from tierflow.stores.base import StoreError
    from tierflow.stream.daemon import FeatureDaemon

    updates: dict[str, Any] = {}
    if args.group:
        updates["group_id"] = args.group
    if args.metrics_port is not None:
        updates["metrics_port"] = args.metrics_port
    config = config.model_copy(update=updates)
    views = _views_for(project, args.views)
    store = project.open_store(args.store)
    try:
        store.load_partition(f"{config.group_id}/__probe__")
    except StoreError as exc:
        raise ConfigError(f"the online store ({store.kind}) does not answer: {exc}") from None
    daemon = FeatureDaemon(views, config, store, bootstrap_servers(project, config, args.bootstrap))
    daemon.install_signal_handlers()
    if asked:
        daemon.request_stop()
    try:
        daemon.start()
        summary = daemon.run(max_seconds=args.max_seconds)
    finally:
        store.close()
    print(json.dumps({"summary": summary.as_dict()}), flush=True)
    return 0


def _event_log(args: argparse.Namespace, project: Project, config: StreamingConfig) -> int:
    from tierflow.storage import locate
    from tierflow.stream.eventlog import EventLogger

    views = [v for v in project.feature_views().values() if v.source.topic == args.topic]
    if not views:
        raise ConfigError(f"no feature view reads topic {args.topic!r}")
    # Joined as text: the folder may be an s3:// URI, which Path would mangle.
    default = f"{config.event_log_dir.rstrip('/')}/{args.topic.replace('.', '_')}"
    path = locate(args.path or default, project.data_dir)
    logger = EventLogger(
        config.topic_prefix + args.topic,
        views,
        path,
        config,
        bootstrap_servers(project, config, args.bootstrap),
    )
    signal.signal(signal.SIGTERM, logger.request_stop)
    signal.signal(signal.SIGINT, logger.request_stop)
    logger.start()
    logged = logger.run(max_seconds=args.max_seconds)
    print(json.dumps({"logged": logged, "poison": logger.poison, "path": path}), flush=True)
    return 0


def read_table(path: str) -> Any:
    """A Delta table (newest version) or Parquet files, as Arrow."""
    import pyarrow.dataset as ds

    from tierflow.storage import arrow_location, delta_table, is_delta_table, is_object_uri

    if is_delta_table(path):
        return delta_table(path).to_pyarrow_table()
    if not is_object_uri(path) and not Path(path).exists():
        raise ConfigError(f"no table at {path}")
    filesystem, inner = arrow_location(path)
    return ds.dataset(inner, format="parquet", filesystem=filesystem).to_table()


def ensure_topic(
    bootstrap: KafkaConnection | str, topic: str, partitions: int, replication_factor: int = 1
) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from tierflow.stream.connection import kafka_options

    admin = KafkaAdminClient(**kafka_options(bootstrap))
    try:
        admin.create_topics([NewTopic(topic, partitions, replication_factor)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def _replay(args: argparse.Namespace, project: Project, config: StreamingConfig) -> int:
    from tierflow.storage import locate
    from tierflow.stream.replay import replay

    readers = [v for v in project.feature_views().values() if v.source.topic == args.topic]
    keys = args.key.split(",") if args.key else (list(readers[0].entities) if readers else [])
    time_column = args.time or (readers[0].event_time if readers else None)
    if not keys or not time_column:
        raise ConfigError(f"no feature view reads topic {args.topic!r}: give --key and --time")
    data_dir = Path(args.data_dir) if args.data_dir else project.data_dir
    path = locate(args.table, data_dir)
    bootstrap = bootstrap_servers(project, config, args.bootstrap)
    topic = config.topic_prefix + args.topic
    ensure_topic(bootstrap, topic, args.partitions, config.topic_replication_factor)
    key_format = readers[0].source.key_format if readers else "json-list"
    result = replay(
        read_table(path), topic, bootstrap, keys=keys, time_column=time_column,
        key_format=key_format,
        rate=args.rate, speedup=args.speedup, limit=args.limit,
        progress=sys.stderr,
    )  # fmt: skip
    logging.getLogger("tierflow").debug("replay done")
    print(
        f"replayed {result.sent:,} events to {topic} in {result.seconds:.1f} s "
        f"({result.rate:,.0f}/s); {result.skipped_no_time:,} rows without "
        f"{time_column} left out"
    )
    return 0
