"""The ``tierflow`` command line: local services and ``spark-submit`` with our jars.

Configuration is parsed once here and handed down as typed objects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tierflow.config.services import load_services_config
from tierflow.errors import TierflowError
from tierflow.paths import ProjectPaths
from tierflow.services import SERVICE_NAMES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    services = sub.add_parser("services", help="start, stop and check the local services")
    services.add_argument(
        "--services-conf",
        type=Path,
        default=None,
        help="services YAML (default: conf/services.yaml, else built-in defaults)",
    )
    actions = services.add_subparsers(dest="action", required=True)
    names_help = f"services to act on (default: all of {', '.join(SERVICE_NAMES)})"
    up = actions.add_parser("up", help="start services and wait until each answers")
    up.add_argument("names", nargs="*", help=names_help)
    down = actions.add_parser("down", help="stop the processes `up` started, by PID")
    down.add_argument("names", nargs="*", help=names_help)
    down.add_argument("--purge", action="store_true", help="also delete data and logs")
    status = actions.add_parser("status", help="show which services run and answer")
    status.add_argument("names", nargs="*", help=names_help)
    status.add_argument("--json", action="store_true", help="print JSON")
    env = actions.add_parser("env", help="print `export` lines a client of a service needs")
    env.add_argument("names", nargs="*", help=names_help)

    submit = sub.add_parser(
        "spark-submit",
        help="spark-submit with the Delta and Kafka jars and tierflow's settings",
        description="Everything after `spark-submit` goes to spark-submit unchanged.",
    )
    submit.add_argument("args", nargs=argparse.REMAINDER)
    submit.add_argument("--print", action="store_true", help="print the command instead")
    return parser


def _services(args: argparse.Namespace) -> int:
    from tierflow.services.manager import ServiceManager

    paths = ProjectPaths.discover()
    config = load_services_config(args.services_conf, paths.conf / "services.yaml")
    manager = ServiceManager(config, paths, progress=lambda m: print(m, file=sys.stderr))
    if args.action == "up":
        for st in manager.up(args.names):
            print(f"{st.name:6} {st.state:9} {json.dumps(st.endpoints)}")
        return 0
    if args.action == "down":
        for st in manager.down(args.names, purge=args.purge):
            print(f"{st.name:6} {st.state}")
        left = [st.name for st in manager.status(args.names, probe=False) if st.state != "stopped"]
        return 1 if left else 0
    if args.action == "env":
        for name in manager.resolve(args.names):
            for key, value in manager.service(name).client_env().items():
                print(f"export {key}={value}")
        return 0
    statuses = manager.status(args.names)
    if args.json:
        print(json.dumps([st.__dict__ for st in statuses], indent=2))
    else:
        for st in statuses:
            pids = ",".join(map(str, st.pids)) or "-"
            print(f"{st.name:6} {st.state:9} pids={pids:20} {st.detail}")
    return 0


def _spark_submit(args: argparse.Namespace) -> int:  # noqa: RET503 - execve does not return
    from tierflow.spark import spark_submit_command

    argv, env = spark_submit_command(args.args)
    if args.print:
        print(" ".join(f"{k}={v}" for k, v in env.items()), " ".join(argv))
        return 0
    os.execve(argv[0], argv, dict(os.environ) | env)  # replaces this process; no return


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "services":
            return _services(args)
        return _spark_submit(args)
    except TierflowError as exc:
        print(f"tierflow: error: {exc}", file=sys.stderr)
        return 2
