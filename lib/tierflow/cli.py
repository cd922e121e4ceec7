"""The ``tierflow`` command line.

Jobs (``plan``, ``run``, ``runs``, ``profile``, ``table``, ``examples``), local services
(``services``), and ``spark-submit`` with our jars. Configuration is parsed once here
and handed down as typed objects.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from tierflow.errors import ExitCode, TierflowError, UsageError
from tierflow.paths import ProjectPaths, scratch_dir
from tierflow.services import SERVICE_NAMES

ENGINES = ("single", "dask", "spark")

_PASSTHROUGH = {
    "spark-submit": "spark-submit with the Delta and Kafka jars and tierflow's settings; "
    "every argument after it goes to spark-submit unchanged",
    "spark-command": "print the command line `tierflow spark-submit ARGS` would run",
}


_EXIT_STATUSES = """exit statuses:
  0  done
  1  the data failed its contract, a threshold (bad rows, drift) or a schema check
  2  a bad command line or configuration, or a missing dependency
  3  a service unreachable (Kafka, Redis, ...), or `services status` found one down
  4  anything else failed (an unexpected error comes with its traceback)
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tierflow")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _timestamp(text: str) -> Any:
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, help="override the planner's choice")
    parser.add_argument("--master", help="Spark master URL (default: local[*])")
    parser.add_argument("--scheduler", help="Dask scheduler address (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, help="LocalCluster workers (default: CPU count)")
    parser.add_argument("--data-dir", help="data folder (default: conf/tierflow.yaml's data_dir)")


#: The commands by group, each with an example, for ``tierflow --help``.
GROUPS: dict[str, dict[str, str]] = {
    "start": {"init": "tierflow init shop"},
    "batch jobs": {
        "plan": "tierflow plan orders_clean",
        "run": "tierflow run orders_clean --engine dask",
        "runs": "tierflow runs --limit 5",
        "calibrate": "tierflow calibrate",
        "profile": "tierflow profile silver/orders --target total",
        "table": "tierflow table history silver/orders",
        "examples": "tierflow examples retail",
    },
    "feature views": {
        "features": "tierflow features values customer_spend --as-of 2026-01-08T00:00:00Z",
        "training-set": "tierflow training-set build flight_delays",
        "materialize": "tierflow materialize customer_spend --end 2026-01-08T00:00:00Z",
        "serve": "tierflow serve --port 28300",
    },
    "streaming": {
        "stream": "tierflow stream --view carrier_delays",
        "event-log": "tierflow event-log --topic flights.departures",
        "replay": "tierflow replay silver/flights --topic flights.departures --speedup 3600",
    },
    "training": {
        "plan-train": "tierflow plan-train flight_delays_mlp",
        "train": "tierflow train flight_delays_mlp [--resume RUN]",
        "tune": "tierflow tune flight_delays_mlp --trials 8",
        "predict": "tierflow predict flight_delays_mlp --input gold/to_score --output gold/scored",
        "monitor": "tierflow monitor consistency flight_delays_mlp",
    },
    "services and clusters": {
        "services": "tierflow services up kafka redis",
        "spark-submit": "tierflow spark-submit --master spark://HOST:7077 jobs/run.py JOB",
        "spark-command": "tierflow spark-command jobs/run.py JOB",
    },
}


class _Parser(argparse.ArgumentParser):
    """The top-level parser: its help lists the commands by group, with an example each."""

    helps: ClassVar[dict[str, str]] = {}

    def format_help(self) -> str:
        lines = [
            f"usage: {self.prog} [--version] [--project-dir DIR] COMMAND [ARGS]",
            "",
            "tierflow: batch jobs on the tier that fits the data, feature views in batch",
            "and from Kafka, training on Ray Train. `tierflow COMMAND --help` for a",
            "command's options.",
        ]
        width = max(len(name) for group in GROUPS.values() for name in group)
        for group, commands in GROUPS.items():
            lines += ["", f"{group}:"]
            for name, example in commands.items():
                lines.append(f"  {name:<{width}}  {self.helps.get(name, '')}")
                lines.append(f"  {'':<{width}}    e.g. {example}")
        lines += [
            "",
            "options:",
            "  --version          print the version",
            "  --project-dir DIR  the project (default: the nearest folder holding",
            "                     conf/tierflow.yaml, from here up; TIERFLOW_PROJECT_DIR)",
            "",
            _EXIT_STATUSES,
        ]
        return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tierflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tierflow {_version()}")
    parser.add_argument(
        "--project-dir",
        type=Path,
        help="the project (default: the nearest folder holding conf/tierflow.yaml, "
        "from the current one up; TIERFLOW_PROJECT_DIR)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser
    )
    add_parser = sub.add_parser

    def recorded(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if "help" in kwargs:
            _Parser.helps[name] = kwargs["help"]
            kwargs.setdefault("description", kwargs["help"])
        return add_parser(name, **kwargs)

    sub.add_parser = recorded  # type: ignore[method-assign]

    init = sub.add_parser("init", help="start a new project in DIR: a job, a feature view, data")
    init.add_argument("dir", type=Path, help="a new or empty folder")

    plan = sub.add_parser("plan", help="explain which engine a job would run on, and why")
    plan.add_argument("job", help="job name (conf/jobs/NAME.yaml) or a YAML path")
    plan.add_argument("--engine", choices=ENGINES, help="override the planner's choice")
    plan.add_argument("--master", help="Spark master URL the spark tier would use")
    plan.add_argument("--scheduler", help="Dask scheduler address the dask tier would use")
    plan.add_argument("--data-dir", help="data folder")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    run = sub.add_parser("run", help="run a job on the engine the planner picks")
    run.add_argument("job", help="job name (conf/jobs/NAME.yaml) or a YAML path")
    _add_engine_options(run)
    run.add_argument("--quiet", action="store_true", help="no stage lines on stderr")

    cal = sub.add_parser(
        "calibrate", help="measure each tier's speed and memory here, for the planner"
    )
    cal.add_argument(
        "--engines", default="single,dask,spark", help="tiers to measure (comma-separated)"
    )
    cal.add_argument("--master", help="Spark master URL (default: local[*])")
    cal.add_argument("--scheduler", help="Dask scheduler address (default: a LocalCluster)")
    cal.add_argument("--workers", type=int, help="LocalCluster workers (default: CPU count)")
    cal.add_argument(
        "--rows", default="2000000,12000000", help="probe sizes in rows (comma-separated)"
    )

    runs = sub.add_parser("runs", help="list run records (newest first)")
    runs.add_argument("--job", help="only this job")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true", help="print full records as JSON")

    prof = sub.add_parser("profile", help="HTML profile of a Delta or Parquet table")
    prof.add_argument("table", help="table path (relative to the data folder, or absolute)")
    prof.add_argument("--format", choices=("delta", "parquet"), help="default: detected")
    prof.add_argument("--target", help="column to correlate the others with")
    prof.add_argument("--out", type=Path, help="report file (default: logs/profiles/NAME.html)")
    _add_engine_options(prof)

    table = sub.add_parser("table", help="Delta table maintenance")
    table_actions = table.add_subparsers(dest="action", required=True)
    hist = table_actions.add_parser("history", help="the table's commits, newest first")
    hist.add_argument("path")
    hist.add_argument("--limit", type=int, default=20)
    opt = table_actions.add_parser("optimize", help="compact small files")
    opt.add_argument("path")
    opt.add_argument("--target-size-mb", type=int)
    vac = table_actions.add_parser("vacuum", help="delete files no recent version needs")
    vac.add_argument("path")
    vac.add_argument("--retention-hours", type=int, default=168)
    vac.add_argument("--apply", action="store_true", help="delete (default: dry run)")
    vac.add_argument("--allow-short-retention", action="store_true", help="below 168 h")
    for p in (hist, opt, vac):
        p.add_argument("--data-dir", help="data folder")

    feats = sub.add_parser("features", help="feature views: list them, compute values")
    feat_actions = feats.add_subparsers(dest="action", required=True)
    feat_actions.add_parser("list", help="views, entities, features, windows")
    values = feat_actions.add_parser("values", help="each entity's values as of a time (batch)")
    values.add_argument("view")
    values.add_argument("--as-of", type=_timestamp, help="ISO time (default: now)")
    values.add_argument("--limit", type=int, default=20)
    _add_engine_options(values)

    mat = sub.add_parser("materialize", help="load a view's latest values into the online store")
    mat.add_argument("view")
    mat.add_argument("--start", type=_timestamp, help="ignore events before (ISO time)")
    mat.add_argument("--end", type=_timestamp, help="values as of this time (default: now)")
    mat.add_argument("--chunk-rows", type=int, help="source rows per bucket and rows per write")
    mat.add_argument("--buckets", type=int, help="override the number of buckets")
    mat.add_argument("--store", choices=("sqlite", "redis"), help="override the online store")
    _add_engine_options(mat)

    pred = sub.add_parser(
        "predict", help="score a table with a registered model, features point-in-time"
    )
    pred.add_argument("model", metavar="MODEL[@VERSION|@ALIAS]")
    pred.add_argument("--input", required=True, help="Delta or Parquet table of rows to score")
    pred.add_argument("--output", required=True, help="Delta table to write (overwritten)")
    pred.add_argument("--timestamp", help="the rows' time column (default: the training set's)")
    _add_engine_options(pred)

    mon = sub.add_parser("monitor", help="compare what a model scores now with its training")
    mon_actions = mon.add_subparsers(dest="action", required=True)
    drift = mon_actions.add_parser(
        "drift", help="PSI of each feature and of the score against the training split"
    )
    drift.add_argument("model", metavar="MODEL[@VERSION|@ALIAS]")
    drift.add_argument("--input", required=True, help="Delta or Parquet table of scored rows")
    drift.add_argument("--threshold", type=float, help="PSI over which to fail (default: conf)")
    drift.add_argument("--json", action="store_true", help=_MONITOR_JSON)
    drift.add_argument("--data-dir", help="data folder")
    consistency = mon_actions.add_parser(
        "consistency",
        help="the features serving gave, against batch at the same window ends, per feature",
    )
    consistency.add_argument("model", metavar="MODEL[@VERSION]")
    consistency.add_argument(
        "--log", help="the served log (default: serving.log_path/MODEL in the data folder)"
    )
    consistency.add_argument(
        "--threshold", type=float, help="mismatch share over which to fail (default: conf)"
    )
    consistency.add_argument("--json", action="store_true", help=_MONITOR_JSON)
    _add_engine_options(consistency)

    ts = sub.add_parser("training-set", help="build or rebuild point-in-time training sets")
    ts_actions = ts.add_subparsers(dest="action", required=True)
    build = ts_actions.add_parser("build", help="build conf/training_sets/NAME.yaml")
    build.add_argument("name")
    _add_engine_options(build)
    rebuild = ts_actions.add_parser("rebuild", help="rebuild a snapshot from its recorded recipe")
    rebuild.add_argument(
        "path", help="the snapshot table (relative to the data folder, or absolute)"
    )
    rebuild.add_argument("--version", type=int, help="snapshot version (default: latest)")
    rebuild.add_argument("--out", required=True, help="where to write the rebuilt snapshot")
    _add_engine_options(rebuild)

    srv = sub.add_parser("serve", help="serve online features over HTTP")
    srv.add_argument("--host", help="bind address (default: conf, 127.0.0.1)")
    srv.add_argument("--port", type=int, help="port (default: conf, 28300)")
    srv.add_argument("--store", choices=("sqlite", "redis"), help="override the online store")
    srv.add_argument("--data-dir", help="data folder")
    srv.add_argument(
        "--no-served-log", action="store_true",
        help="do not keep the scored rows (serving.log_served in conf/tierflow.yaml)",
    )  # fmt: skip
    srv.add_argument(
        "--model", action="append", dest="models", default=[], metavar="NAME[@VERSION|@ALIAS]",
        help="also serve predictions of this model from the MLflow registry (the newest "
        "version unless one is named; repeatable)",
    )  # fmt: skip
    srv.add_argument(
        "--canary", action="append", dest="canaries", default=[],
        metavar="NAME@VERSION=SHARE",
        help="send SHARE (0-1) of NAME's requests to this version (a canary) and the rest "
        "to --model NAME's; repeatable, one per model",
    )  # fmt: skip

    from tierflow.stream.commands import add_parsers
    from tierflow.train.commands import add_parsers as add_training_parsers

    add_parsers(sub)
    add_training_parsers(sub)

    examples = sub.add_parser("examples", help="generate the example jobs' data")
    examples.add_argument("--data-dir", help="data folder (default: data/)")
    examples.add_argument("--orders", type=int, default=20_000)
    examples.add_argument(
        "which", nargs="?", choices=("all", "retail", "flights", "tpch"), default="all",
        help="retail: generated orders for the batch jobs; flights: NYC flights 2013 "
        "(raw CSV files, then the bronze, silver and label jobs) for the feature views; "
        "tpch: TPC-H tables for the tpch_* jobs (not part of all)",
    )  # fmt: skip
    examples.add_argument(
        "--scale", type=float, default=1,
        help="flights: years (2013 and time-shifted copies); tpch: the scale factor (1 = 1 GB)",
    )  # fmt: skip
    examples.add_argument(
        "--raw-only", action="store_true", help="flights: write the raw CSV files only, run no job"
    )

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
    creds = actions.add_parser(
        "credentials",
        help="create a CA, certificates and passwords for a cluster (files of mode 0600)",
    )
    creds.add_argument("--dir", type=Path, required=True, help="folder to write them in")
    creds.add_argument("--host", default="127.0.0.1", help="IP address put in the certificates")
    creds.add_argument(
        "--name", action="append", default=[], help="a host name the services are reached by"
    )
    creds.add_argument(
        "--group", type=int, default=None, help="let this group id read them (mode 0640)"
    )

    # These take their arguments raw (see main); the parsers are here for --help.
    for name, what in _PASSTHROUGH.items():
        sub.add_parser(name, help=what, add_help=False).add_argument("args", nargs="*")
    return parser


def _services(args: argparse.Namespace) -> int:
    from tierflow.config.services import load_services_config
    from tierflow.services.manager import ServiceManager

    if args.action == "credentials":
        from tierflow.services.credentials import ServiceCredentials, share_with_group

        credentials = ServiceCredentials(args.dir)
        credentials.ensure(args.host, tuple(args.name))
        if args.group is not None:
            share_with_group(args.dir, args.group)
        # Names only: the values stay in the files.
        print("\n".join(sorted(p.name for p in args.dir.iterdir())))
        return 0
    paths = ProjectPaths.discover()
    config = load_services_config(args.services_conf, paths.settings("services.yaml"))
    manager = ServiceManager(config, paths, progress=lambda m: print(m, file=sys.stderr))
    if args.action == "up":
        for st in manager.up(args.names):
            print(f"{st.name:6} {st.state:9} {json.dumps(st.endpoints)}")
        return 0
    if args.action == "down":
        for st in manager.down(args.names, purge=args.purge):
            print(f"{st.name:6} {st.state}")
        left = [st.name for st in manager.status(args.names, probe=False) if st.state != "stopped"]
        return int(ExitCode.FAILED) if left else 0
    if args.action == "env":
        for name in manager.resolve(args.names):
            for key, value in manager.service(name).client_env().items():
                print(f"export {key}={shlex.quote(value)}")
        return 0
    statuses = manager.status(args.names)
    if args.json:
        print(json.dumps([st.__dict__ for st in statuses], indent=2))
    else:
        for st in statuses:
            pids = ",".join(map(str, st.pids)) or "-"
            print(f"{st.name:6} {st.state:9} pids={pids:20} {st.detail}")
    # Scripts wait on this: every service asked about must run and answer.
    down = [st.name for st in statuses if st.state != "healthy"]
    return int(ExitCode.SERVICE) if down else 0


def _engine_options(args: argparse.Namespace) -> Any:
    from tierflow.engines.base import EngineOptions

    return EngineOptions(
        dask_scheduler=getattr(args, "scheduler", None),
        spark_master=getattr(args, "master", None),
        workers=getattr(args, "workers", None),
    )


def _table_text(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Rows as aligned text columns (right-aligned, as numbers read best)."""
    cells = [[("" if r[n] is None else f"{r[n]:.6g}" if isinstance(r[n], float) else str(r[n]))
              for n in names] for r in rows]  # fmt: skip
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    lines = [" ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))]
    lines += [" ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _init(folder: Path) -> int:
    from tierflow.scaffold import init_project

    written = init_project(folder)
    for path in written:
        print(f"  {path.relative_to(folder.resolve())}")
    print(
        f"a new tierflow project in {folder}; next:\n"
        f"  cd {shlex.quote(str(folder))}\n  tierflow plan orders_clean\n  tierflow run orders_clean"
    )
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from tierflow.project import Project

    project = Project.load(data_dir=getattr(args, "data_dir", None))
    if args.command == "plan":
        job = project.load_job(args.job)
        plan = project.plan(job, args.engine, _engine_options(args))
        print(json.dumps(plan.as_dict(), indent=2) if args.json else plan.explain())
        return 0
    if args.command == "run":
        job = project.load_job(args.job)
        record = project.run(
            job, engine=args.engine, options=_engine_options(args), echo=not args.quiet
        )
        print(
            f"{record.run_id}: {record.status} on {record.engine} in {record.duration_s:.1f}s; "
            f"{record.rows_in:,} rows in, {record.rows_quarantined:,} quarantined, "
            f"{record.rows_out:,} written to {record.output.get('path')}"
            + (
                f" (version {record.output['version']})"
                if record.output.get("version") is not None
                else ""
            )
        )
        return 0
    if args.command == "calibrate":
        return _calibrate(args, project)
    if args.command == "runs":
        from tierflow.jobs.records import list_runs

        records = list_runs(project.logs_dir / "runs", args.job)[: args.limit]
        if args.json:
            print(json.dumps([r.__dict__ for r in records], indent=2, default=str))
            return 0
        print(
            f"{'run':<50} {'status':<10} {'engine':<8} {'in':>9} {'bad':>6} {'out':>9} {'secs':>7}"
        )
        for r in records:
            print(
                f"{r.run_id:<50} {r.status:<10} {r.engine.split()[0]:<8} {r.rows_in:>9,} "
                f"{r.rows_quarantined:>6,} {r.rows_out:>9,} {r.duration_s:>7.1f}"
            )
        return 0
    if args.command == "profile":
        out, _ = project.profile(
            args.table, fmt=args.format, target=args.target, engine=args.engine,
            options=_engine_options(args), out=args.out,
        )  # fmt: skip
        print(f"profile written to {out}")
        return 0
    if args.command in ("features", "materialize", "training-set", "serve"):
        return _features(args, project)
    if args.command in ("predict", "monitor"):
        return _predict(args, project) if args.command == "predict" else _monitor(args, project)
    from tierflow.stream.commands import COMMANDS, run_command
    from tierflow.train import commands as training

    if args.command in COMMANDS:
        return run_command(args, project)
    if args.command in training.COMMANDS:
        return training.run_command(args, project)
    if args.command == "examples":
        return _examples(args, project)
    return _table(args, project.data_dir)


def _predict(args: argparse.Namespace, project: Any) -> int:
    """Score a table on the tier the planner picks for it; a run record like a job's."""
    import tempfile
    import time
    from datetime import datetime, timezone

    from tierflow.config.jobs import SourceConfig
    from tierflow.engines import create_engine
    from tierflow.jobs.records import RunRecord
    from tierflow.jobs.runner import new_run_id
    from tierflow.jobs.sources import resolve_source
    from tierflow.storage import locate
    from tierflow.train.batch import predict, table_format

    source = locate(args.input, project.data_dir)
    kind = table_format(source)
    resolved = resolve_source("input", SourceConfig(format=kind, path=source), project.data_dir)
    options = _engine_options(args)
    choice = project.choose_engine([resolved], args.engine, options)
    record = RunRecord(
        run_id=new_run_id(f"predict-{args.model.partition('@')[0]}"),
        job=f"predict:{args.model.partition('@')[0]}", engine=choice,
        started_at=datetime.now(timezone.utc).isoformat(),
        inputs=[{"path": source, "version": resolved.version}],
    )  # fmt: skip
    began = time.monotonic()
    engine = create_engine(choice, options)
    try:
        with tempfile.TemporaryDirectory(prefix="tierflow-predict-") as downloads:
            result = predict(
                project, args.model, input_path=source, output_path=args.output,
                engine=engine, timestamp=args.timestamp, downloads=Path(downloads),
            )  # fmt: skip
        record.status, record.engine = "succeeded", engine.describe()
        record.rows_in = record.rows_out = result.rows
        record.output = {"path": result.output, "rows": result.rows,
                         "model": result.model, "model_version": result.version}  # fmt: skip
    except BaseException as exc:
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        engine.close()
        record.finished_at = datetime.now(timezone.utc).isoformat()
        record.duration_s = round(time.monotonic() - began, 3)
        record.save(project.logs_dir / "runs")
    version = "" if result.version is None else f" version {result.version}"
    print(f"scored {result.rows:,} rows with {result.model}{version} on {engine.describe()} "
          f"-> {result.output}")  # fmt: skip
    return 0


_MONITOR_JSON = "print the report's numbers as one JSON object (with the report's path)"


def _print_report_json(html: Path, **extra: Any) -> None:
    """The report's JSON twin on stdout, with where the reports are: for scripts."""
    numbers = json.loads(html.with_suffix(".json").read_text())
    print(json.dumps({"report": str(html), "json": str(html.with_suffix(".json")),
                      **extra, **numbers}))  # fmt: skip


def _monitor(args: argparse.Namespace, project: Any) -> int:
    """``monitor drift``: exit 1 when a feature or the score is over the threshold."""
    import tempfile

    if args.action == "consistency":
        return _consistency(args, project)

    from tierflow.jobs.runner import new_run_id
    from tierflow.storage import locate
    from tierflow.train import drift
    from tierflow.train.batch import find_model
    from tierflow.train.predict import Predictor

    threshold = args.threshold or project.config.monitoring.psi_threshold
    with tempfile.TemporaryDirectory(prefix="tierflow-monitor-") as downloads:
        found = find_model(project, args.model, Path(downloads))
        predictor = Predictor.load(found.folder, None)
        if found.snapshot is None:
            raise UsageError(f"model {args.model}: its training snapshot is not known")
        training = drift.training_rows(found.snapshot, predictor)
        now = drift.read_rows(locate(args.input, project.data_dir))
        drifts = drift.compare(training, now, predictor, threshold=threshold)
    folder = project.logs_dir / "monitor" / new_run_id(f"drift-{predictor.name}")
    out = drift.write_report(folder, drifts, model=f"{predictor.name} ({found.where})",
                             threshold=threshold, rows=(training.num_rows, now.num_rows))  # fmt: skip
    if args.json:
        _print_report_json(out)
    else:
        for d in sorted(drifts, key=lambda d: -d.psi):
            print(f"{'OVER ' if d.flagged else '     '}{d.name}: PSI {d.psi:.4f}")
        print(f"report: {out}")
    flagged = [d.name for d in drifts if d.flagged]
    if flagged:
        print(f"drift over {threshold:g}: {', '.join(flagged)}", file=sys.stderr)
        return int(ExitCode.DATA)
    return 0


def _consistency(args: argparse.Namespace, project: Any) -> int:
    """``monitor consistency``: exit 1 when a feature's mismatch share is over the threshold."""
    import pyarrow.compute as pc

    from tierflow.config.jobs import SourceConfig
    from tierflow.engines import create_engine
    from tierflow.jobs.runner import new_run_id, read_source
    from tierflow.jobs.sources import resolve_source
    from tierflow.storage import is_delta_table, locate
    from tierflow.train import consistency
    from tierflow.train.drift import read_rows
    from tierflow.train.served import WINDOW_END
    from tierflow.train.tracking import parse_model_ref

    name, number, alias = parse_model_ref(args.model)
    if alias is not None:
        raise UsageError(f"{args.model}: give NAME or NAME@VERSION (the log names versions)")
    path = locate(args.log or f"{project.config.serving.log_path}/{name}", project.data_dir)
    if not is_delta_table(path):
        raise UsageError(f"no served log at {path}: serve the model first "
                         "(`tierflow serve --model NAME`)")  # fmt: skip
    log = read_rows(path)
    log = log.filter(pc.equal(log["model"], name))
    if number is not None:
        log = log.filter(pc.equal(log["version"], str(number)))
    if not log.num_rows:
        raise UsageError(f"the served log {path} has no rows of {args.model}")
    views = project.feature_views()
    names = [c[: -len(WINDOW_END)] for c in log.column_names if c.endswith(WINDOW_END)]
    sources = {
        v: resolve_source(v, SourceConfig(format=views[v].source.format,
                                          path=views[v].source.path), project.data_dir)
        for v in names
    }  # fmt: skip
    engine = create_engine(
        project.choose_engine(list(sources.values()), args.engine), _engine_options(args)
    )
    monitoring = project.config.monitoring
    threshold = monitoring.mismatch_threshold if args.threshold is None else args.threshold
    try:
        events = {v: read_source(engine, source) for v, source in sources.items()}
        checks = consistency.check(log, views, events, engine,
                                   tolerance=monitoring.mismatch_tolerance, threshold=threshold)  # fmt: skip
        where = engine.describe()
    finally:
        engine.close()
    folder = project.logs_dir / "monitor" / new_run_id(f"consistency-{name}")
    out = consistency.write_report(folder, checks, model=args.model, threshold=threshold,
                                   rows=log.num_rows)  # fmt: skip
    if args.json:
        _print_report_json(out, where=where)
    else:
        for c in checks:
            print(f"{'OVER ' if c.flagged else '     '}{c.feature}: {c.mismatches:,} of "
                  f"{c.compared:,} differ ({c.rate:.2%})")  # fmt: skip
        print(f"{log.num_rows:,} served rows of {args.model} against batch on {where}; "
              f"report: {out}")  # fmt: skip
    flagged = [c.feature for c in checks if c.flagged]
    if flagged:
        print(f"mismatch share over {threshold:g}: {', '.join(flagged)}", file=sys.stderr)
        return int(ExitCode.DATA)
    return 0


def _calibrate(args: argparse.Namespace, project: Any) -> int:
    import tempfile

    from tierflow.jobs import calibration

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise UsageError(f"--engines: unknown tier(s) {', '.join(unknown)} (known: {ENGINES})")
    rows = tuple(int(r) for r in args.rows.split(","))
    options = _engine_options(args)
    resources = project.resources(options)
    folder = project.calibration_dir
    scratch = project.paths.project / ".local"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="calibrate-", dir=scratch) as work:
        for engine in engines:
            place = resources.places[engine]
            if place.unreachable:
                print(f"{engine}: {place.label} is unreachable ({place.unreachable}); skipped")
                continue
            print(f"{engine} at {place.label} ({place.cores} cores):")
            cost, raw = calibration.measure(project, engine, place, options, Path(work), rows=rows)
            measured = calibration.Calibration(
                calibration.place_key(place), {engine: cost}, calibration.now(),
                raw={engine: raw},
            )  # fmt: skip
            path = calibration.save(folder, measured)
            print(
                f"{engine}: startup {cost.startup_s:.2f} s, {cost.fixed_s:.3f} s a job, "
                f"{cost.core_s_per_gib:.2f} core-s per GiB; memory "
                f"{cost.memory_base / 2**20:.0f} MiB + {cost.memory_per_gib / 2**20:.0f} MiB "
                f"per GiB -> {path}"
            )
    return 0


def _examples(args: argparse.Namespace, project: Any) -> int:
    if args.which == "tpch":
        from tierflow.examples.tpch import generate as tpch

        data = tpch(project.data_dir, args.scale)
        print(f"TPC-H at scale factor {args.scale:g} in {data.tables} (jobs: tpch_q1 ... tpch_q18)")
        return 0
    if args.which in ("all", "flights") and args.scale != int(args.scale):
        raise UsageError(f"--scale {args.scale:g}: flights take a whole number of years")
    if args.which in ("all", "retail"):
        from tierflow.examples.retail import generate

        generate(project.data_dir, orders=args.orders)
    if args.which in ("all", "flights"):
        from tierflow.examples.flights import PIPELINE_JOBS, write_raw

        write_raw(project.data_dir, int(args.scale))
        if not args.raw_only:
            for name in PIPELINE_JOBS:
                record = project.run(project.load_job(name), echo=False)
                print(
                    f"{name}: {record.rows_out:,} rows to {record.output.get('path')} "
                    f"on {record.engine} ({record.rows_quarantined:,} quarantined)"
                )
                if record.status != "succeeded":
                    print(f"{name} failed: {record.error}", file=sys.stderr)
                    return int(ExitCode.FAILED)
    print(f"example data ({args.which}) written to {project.data_dir}")
    return 0


def _is_share(text: str) -> bool:
    try:
        return 0.0 < float(text) < 1.0
    except ValueError:
        return False


def _serve(args: argparse.Namespace, project: Any) -> int:
    from tierflow.serving import serve

    views = project.feature_views()
    models: dict[str, Any] = {}
    if args.models or args.canaries:
        from tierflow.serving import Route
        from tierflow.train.batch import find_model
        from tierflow.train.predict import Predictor
        from tierflow.train.tracking import parse_model_ref

        downloads = scratch_dir("tierflow-models-")

        def load(ref: str) -> tuple[Any, str]:
            found = find_model(project, ref, downloads / ref.replace("@", "-"))
            print(f"model {ref.partition('@')[0]}: {found.where}", file=sys.stderr)
            version = "published" if found.version is None else str(found.version)
            return Predictor.load(found.folder, views), version

        for ref in args.models:
            predictor, version = load(ref)
            models[predictor.name] = Route(predictor, version)
        for spec in args.canaries:
            ref, _, share = spec.rpartition("=")
            name, number, alias = parse_model_ref(ref or spec)
            if not ref or (number is None and alias is None) or not _is_share(share):
                raise UsageError(f"--canary {spec!r}: give NAME@VERSION=SHARE, SHARE in (0, 1)")
            if name not in models:
                raise UsageError(f"--canary {spec!r}: serve the main version with --model {name}")
            predictor, canary = load(ref)
            models[name] = Route(models[name].main, models[name].main_version,
                                 predictor, canary, float(share))  # fmt: skip
    store = project.open_store(args.store)
    store.check()  # unreachable: exit 3 now, not an error on every request
    cfg = project.config.serving
    served_log = None
    if models and cfg.log_served and not args.no_served_log:
        from tierflow.storage import locate
        from tierflow.train.served import ServedLog

        root = locate(cfg.log_path, project.data_dir)
        served_log = ServedLog(root, views, flush_seconds=cfg.log_flush_seconds)
        print(f"served rows are kept in {root}/<model>", file=sys.stderr)
    serve(
        store,
        views,
        host=args.host or cfg.host,
        port=args.port or cfg.port,
        max_entities=cfg.max_entities,
        models=models,
        served_log=served_log,
    )
    return 0


def _features(args: argparse.Namespace, project: Any) -> int:
    from tierflow.engines import create_engine
    from tierflow.storage import locate

    if args.command == "serve":
        return _serve(args, project)
    if args.command == "features" and args.action == "list":
        for name, view in sorted(project.feature_views().items()):
            print(f"{name}: entities {', '.join(view.entities)}; step {view.step}; ttl {view.ttl}")
            for f in view.features:
                print(
                    f"  {view.column_name(f):<40} {f.agg}({f.column or '*'}) over {f.window or view.step}"
                )
        return 0
    if args.command == "training-set":
        from tierflow.features import training

        views = project.feature_views()
        if args.action == "build":
            config = project.training_set(args.name)
            labels, sources = training.resolve_inputs(config, views, project.data_dir)
            engine = create_engine(
                project.choose_engine([labels, *sources.values()], args.engine),
                _engine_options(args),
            )
            try:
                out = locate(config.path, project.data_dir)
                snap = training.build(config, views, engine, project.data_dir, out_path=out)
            finally:
                engine.close()
        else:
            engine = create_engine(args.engine or "single", _engine_options(args))
            path, out = locate(args.path, project.data_dir), locate(args.out, project.data_dir)
            try:
                snap = training.rebuild(
                    path, engine, project.data_dir, out_path=out, version=args.version
                )
            finally:
                engine.close()
        print(f"training set written to {snap.path} version {snap.version}: {snap.rows:,} rows")
        return 0
    view = project.feature_view(args.view)
    source = project.view_source(view)
    engine = create_engine(project.choose_engine([source], args.engine), _engine_options(args))
    try:
        if args.command == "materialize":
            from tierflow.features.materialize import materialize

            with project.open_store(args.store) as store:
                result = materialize(
                    view, source, engine, store, start=args.start, end=args.end,
                    chunk_rows=args.chunk_rows or project.config.materialize_chunk_rows,
                    buckets=args.buckets, progress=sys.stderr,
                    work_dir=project.data_dir / "_materialize",
                )  # fmt: skip
            print(
                f"{view.name}: {result.rows_written:,} rows in {result.seconds:.1f}s "
                f"({result.rows_per_second:,.0f} rows/s; the store loaded "
                f"{result.load_rows_per_second:,.0f} rows/s), buckets {result.buckets_done_now}/{result.buckets}"
                + (" (already done)" if result.already_done else "")
            )
            return 0
        from datetime import datetime, timezone

        from tierflow.features.batch import latest_values
        from tierflow.jobs.runner import read_source

        moment = args.as_of or datetime.now(timezone.utc)
        as_of_us = int(moment.timestamp() * 1_000_000)
        rows = latest_values(read_source(engine, source, lineage=False), view, engine, as_of_us)
        table = engine.collect_arrow(rows)
        print(_table_text(table.slice(0, args.limit).to_pylist(), table.column_names))
        print(f"({table.num_rows:,} entities as of {moment.isoformat()}, engine {engine.name})")
        return 0
    finally:
        engine.close()


def _table(args: argparse.Namespace, data_dir: Path) -> int:
    from tierflow import tables
    from tierflow.storage import locate

    path = locate(args.path, data_dir)
    if args.action == "history":
        for entry in tables.history(path, args.limit):
            print(json.dumps(entry, default=str))
    elif args.action == "optimize":
        print(json.dumps(tables.optimize(path, target_size_mb=args.target_size_mb), default=str))
    else:
        result = tables.vacuum(
            path, retention_hours=args.retention_hours, dry_run=not args.apply,
            allow_short_retention=args.allow_short_retention,
        )  # fmt: skip
        verb = "would delete" if result.dry_run else "deleted"
        print(f"{verb} {len(result.files)} file(s) older than {result.retention_hours}h")
        for file in result.files:
            print(f"  {file}")
    return 0


def _spark_submit(args: Sequence[str], *, print_only: bool) -> int:
    # On a cluster the executors must reach the driver: it binds the address given here.
    from tierflow.settings import env_settings
    from tierflow.spark import LOOPBACK, spark_submit_command

    host = env_settings().spark_driver_host or LOOPBACK
    argv, env = spark_submit_command(args, driver_host=host)
    if print_only:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(argv))
        return 0
    if "--properties-file" not in argv:
        os.execve(argv[0], argv, dict(os.environ) | env)  # replaces this process
    # The properties file holds the Spark secret: wait for spark-submit, then delete it
    # (an exec would leave it behind).
    import signal
    import subprocess

    child = subprocess.Popen(argv, env=dict(os.environ) | env)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, _frame: child.send_signal(sig))
    return child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        if raw and raw[0] in _PASSTHROUGH:
            # spark-submit's own options must reach it untouched, so no argparse here.
            return _spark_submit(raw[1:], print_only=raw[0] == "spark-command")
        args = _parser().parse_args(raw)
        if args.project_dir is not None:
            from tierflow.paths import PROJECT_ENV

            # Through the environment, so that every process this one starts agrees.
            os.environ[PROJECT_ENV] = str(args.project_dir.resolve())
        if args.command == "init":
            return _init(args.dir)
        if args.command == "services":
            return _services(args)
        return _jobs(args)
    except TierflowError as exc:
        print(f"tierflow: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except ModuleNotFoundError as exc:
        from tierflow.extras import missing_dependency

        known = missing_dependency(exc)
        if known is None:
            return _failed()
        print(f"tierflow: error: {known}", file=sys.stderr)
        return int(known.exit_code)
    except Exception:  # a bug: its traceback, and not the status of a data failure
        return _failed()


def _failed() -> int:
    import traceback

    traceback.print_exc()
    return int(ExitCode.FAILED)
