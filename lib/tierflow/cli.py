"""The ``tierflow`` command line: local services and ``spark-submit`` with our jars.

Configuration is parsed once here and handed down as typed objects.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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

    # These two take their arguments raw (see main); the parsers are here for --help.
    for name, what in _PASSTHROUGH.items():
        sub.add_parser(name, help=what, add_help=False).add_argument("args", nargs="*")
    return parser


_PASSTHROUGH = {
    "spark-submit": "spark-submit with the Delta and Kafka jars and tierflow's settings; "
    "every argument after it goes to spark-submit unchanged",
    "spark-command": "print the command line `tierflow spark-submit ARGS` would run",
}


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


def _spark_submit(args: Sequence[str], *, print_only: bool) -> int:  # noqa: RET503
    from tierflow.spark import spark_submit_command

    argv, env = spark_submit_command(args)
    if print_only:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(argv))
        return 0
    os.execve(
        argv[0], argv, dict(os.environ) | env
    )  # replaces this process  # replaces this process; no return


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        if raw and raw[0] in _PASSTHROUGH:
            # spark-submit's own options must reach it untouched, so no argparse here.
            return _spark_submit(raw[1:], print_only=raw[0] == "spark-command")
        args = _parser().parse_args(raw)
        return _services(args)
    except TierflowError as exc:
        print(f"tierflow: error: {exc}", file=sys.stderr)
        return 2
