"""``make demo``: NYC flights 2013 from raw CSV files to online predictions.

Stages, each through the product's own entry points (docs/demo.md walks through them one
command at a time):

1. **ingest**: the package's CSV files (one per year; ``--scale N`` adds time-shifted
   copies) into bronze Delta tables: ``flights_bronze``, ``weather_bronze``...
2. **clean**: silver tables under data contracts (``flights_silver``, ``weather_silver``),
   bad rows quarantined with reasons; a profile of silver flights.
3. **labels**: ``flight_labels``: delayed more than 15 minutes on arrival, known at the
   scheduled departure; split Jan-Sep / Oct-Nov / Dec.
4. **features and training set**: the feature views joined point-in-time correctly to the
   labels on the tier the planner picks, as a new version of a Delta snapshot.
5. **training**: ``tierflow train`` on Ray Train (DDP, 2 workers), then the model against
   a historical-rate baseline on the test split.
6. **streaming**: December replayed through Kafka into ``tierflow stream``, which keeps
   the online store current.
7. **parity**: the online values against batch over the same events.
8. **serving**: ``tierflow serve --model`` answers for upcoming flights.
9. **report**: ``<logs>/demo/<run>/report.html`` and ``report.md``.

Batch stages are skipped when their inputs, configuration and code are unchanged since
the last successful run (their outputs still at the recorded version), so a second run
only repeats the live stages. ``--fresh`` recomputes everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from tierflow.config.loader import FrozenModel, load_model
from tierflow.config.project import TierThresholds
from tierflow.examples.flights import CLEAN_JOBS, INGEST_JOBS, LABEL_JOBS
from tierflow.project import Project
from tierflow.stream.connection import KafkaConnection

CODE = (Path(__file__).parents[3] / "jobs" / "transforms" / "flights.py",)


@dataclasses.dataclass(frozen=True)
class KafkaAccess:
    """What the live stages need of Kafka.

    ``connection`` is for this process; ``env`` for the daemons it starts (in the secure
    profile: the SASL settings and the password *file*, never the password);
    ``replication_factor`` for the topics it creates.
    """

    connection: KafkaConnection
    env: dict[str, str]
    replication_factor: int


class DemoConfig(FrozenModel):
    """``conf/demo.yaml``."""

    tiers: TierThresholds = TierThresholds(single_max_gb=0.05, dask_max_gb=0.25)
    training_set: str = "flight_delays"
    model: str = "flight_delays_mlp"
    replay_from: datetime = datetime(2013, 12, 1, tzinfo=timezone.utc)
    replay_until: datetime = datetime(2013, 12, 31, 18, tzinfo=timezone.utc)
    paced_from: datetime = datetime(2013, 12, 28, tzinfo=timezone.utc)
    paced_rate: Annotated[float, Field(gt=0)] = 1000.0
    upcoming_flights: Annotated[int, Field(ge=1, le=100)] = 6
    topic_partitions: Annotated[int, Field(ge=1)] = 4


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """The command line's choices."""

    scale: int = 1
    online_store: Literal["sqlite", "redis"] = "sqlite"
    fresh: bool = False


@dataclasses.dataclass
class Stage:
    """One step of the run, as the report shows it."""

    key: str
    title: str
    tier: str = "-"
    reason: str = ""
    seconds: float = 0.0
    cached: bool = False
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


class Demo:
    """One run of the demo; :meth:`run` returns the exit status."""

    def __init__(self, project: Project, config: DemoConfig, options: DemoOptions) -> None:
        # The demo's own thresholds, so that --scale shows the tiers on one machine.
        self.project = dataclasses.replace(
            project, config=project.config.model_copy(update={"tiers": config.tiers})
        )
        self.config = config
        self.options = options
        self.run_id = (
            datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        )
        self.run_dir = project.logs_dir / "demo" / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache_file = project.data_dir / "_demo" / "cache.json"
        self.cache: dict[str, Any] = (
            {} if options.fresh or not self.cache_file.is_file()
            else json.loads(self.cache_file.read_text())
        )  # fmt: skip
        self.stages: list[Stage] = []
        self.results: dict[str, Any] = {}
        self.began = time.monotonic()

    # --- output ---------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """A progress line."""
        print(f"   {message}", flush=True)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[Stage]:
        """Time a stage and print its start and end."""
        print(f"\n== {len(self.stages) + 1}. {title}", flush=True)
        stage = Stage(key, title)
        started = time.monotonic()
        try:
            yield stage
        finally:
            stage.seconds = time.monotonic() - started
            self.stages.append(stage)
        note = " (reused: inputs unchanged)" if stage.cached else ""
        self.say(f"{stage.tier} | {stage.seconds:.1f}s{note}")

    # --- caching --------------------------------------------------------------------------

    def _fingerprint(self, *parts: Any) -> str:
        digest = hashlib.sha256()
        for part in parts:
            if isinstance(part, Path):
                digest.update(part.read_bytes() if part.is_file() else b"-")
            else:
                digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def _cached(self, name: str, key: str, output: str | None) -> dict[str, Any] | None:
        entry = self.cache.get(name)
        if not entry or entry.get("key") != key:
            return None
        if output is not None:
            from tierflow.tables import delta_version

            if delta_version(str(self.project.data_dir / output)) != entry.get("version"):
                return None
        return dict(entry["result"])

    def _remember(self, name: str, key: str, output: str | None, result: dict[str, Any]) -> None:
        version = None
        if output is not None:
            from tierflow.tables import delta_version

            version = delta_version(str(self.project.data_dir / output))
        self.cache[name] = {"key": key, "version": version, "result": result}
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1, default=str))
        tmp.replace(self.cache_file)

    # --- batch stages ---------------------------------------------------------------------

    def run_job(self, name: str) -> dict[str, Any]:
        """Plan and run a job (``tierflow run NAME``), unless its inputs are unchanged."""
        project = self.project
        job = project.load_job(name)
        plan = project.plan(job)
        inputs = [
            (s.location, s.version, [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns)
                                     for f in s.files if "://" not in f])
            for s in plan.sources
        ]  # fmt: skip
        key = self._fingerprint(project.job_file(name), *CODE, inputs)
        cached = self._cached(name, key, job.sink.path)
        if cached is not None:
            return cached | {"cached": True}
        self.say(f"{name}: planner chose {plan.engine} ({plan.reason})")
        record = project.run(job, echo=False)
        result = {
            "job": name, "engine": plan.engine, "engine_detail": record.engine,
            "reason": plan.reason,
            "estimate_gib": plan.total_in_memory_bytes / 1024**3,
            "status": record.status, "rows_in": record.rows_in,
            "rows_quarantined": record.rows_quarantined,
            "quarantine_by_rule": record.quarantine_by_rule, "rows_out": record.rows_out,
            "output": job.sink.path, "version": record.output.get("version"),
            "seconds": record.duration_s, "run_id": record.run_id, "error": record.error,
        }  # fmt: skip
        if record.status != "succeeded":
            raise RuntimeError(f"job {name} failed: {record.error}")
        self._remember(name, key, job.sink.path, result)
        return result | {"cached": False}

    def jobs_stage(self, key: str, title: str, names: tuple[str, ...]) -> None:
        """Run jobs as one stage; the stage's tier lists theirs."""
        with self.stage(key, title) as stage:
            results = [self.run_job(n) for n in names]
            for r in results:
                bad = f", {r['rows_quarantined']:,} quarantined" if r["rows_quarantined"] else ""
                self.say(f"{r['job']}: {r['rows_in']:,} rows in{bad}, {r['rows_out']:,} "
                         f"written to {r['output']} on {r['engine']}")  # fmt: skip
                for rule, count in sorted(r["quarantine_by_rule"].items()):
                    self.say(f"    quarantined by {rule}: {count:,}")
            stage.tier = ", ".join(sorted({r["engine"] for r in results}))
            stage.reason = "; ".join(f"{r['job']}: {r['reason']}" for r in results)
            stage.cached = all(r["cached"] for r in results)
            stage.details["jobs"] = results
        self.results.setdefault("jobs", []).extend(results)

    def profile_stage(self) -> None:
        """Profile silver flights (``tierflow profile``) on the tier that fits it."""
        from tierflow.tables import delta_version

        with self.stage("profile", "Profile of the silver flights table") as stage:
            out = self.project.data_dir / "_demo" / "flights_profile.html"
            version = delta_version(str(self.project.data_dir / "silver" / "flights"))
            key = self._fingerprint("profile", version)
            cached = self._cached("profile", key, None)
            if cached is None or not out.is_file():
                _path, plan = self.project.profile("silver/flights", target="arr_delay", out=out)
                cached = {"plan": plan}
                self._remember("profile", key, None, cached)
            else:
                stage.cached = True
            shutil.copyfile(out, self.run_dir / "flights_profile.html")
            stage.tier = _plan_engine(cached["plan"])
            stage.reason = cached["plan"].splitlines()[-2] if cached["plan"] else ""
            self.say("profile: flights_profile.html")

    def training_set_stage(self) -> int:
        """Build the point-in-time training set on the planner's tier; returns its version."""
        from tierflow.engines import create_engine
        from tierflow.features import training
        from tierflow.tables import delta_version

        project = self.project
        with self.stage("training_set", "Features and the point-in-time training set") as stage:
            config = project.training_set(self.config.training_set)
            views = project.feature_views()
            labels, sources = training.resolve_inputs(config, views, project.data_dir)
            inputs = [labels, *sources.values()]
            engine_name = project.choose_engine(inputs, None)
            total = sum(s.in_memory_bytes for s in inputs) / 1024**3
            stage.tier = engine_name
            stage.reason = (f"{total:.3f} GiB of inputs against single-node up to "
                            f"{project.config.tiers.single_max_gb} GiB, Dask up to "
                            f"{project.config.tiers.dask_max_gb} GiB")  # fmt: skip
            used = sorted({j.view for j in config.views})
            key = self._fingerprint(
                project.paths.conf / "training_sets" / f"{config.name}.yaml",
                *[project.paths.conf / "features" / f"{v}.yaml" for v in used],
                [(s.location, s.version) for s in inputs],
            )
            cached = self._cached("training_set", key, config.path)
            if cached is None:
                self.say(f"planner chose {engine_name} ({stage.reason})")
                engine = create_engine(engine_name)
                try:
                    snap = training.build(config, views, engine, project.data_dir,
                                          out_path=str(project.data_dir / config.path))  # fmt: skip
                finally:
                    engine.close()
                cached = {"path": config.path, "version": snap.version, "rows": snap.rows,
                          "engine": engine_name, "views": used}  # fmt: skip
                self._remember("training_set", key, config.path, cached)
            else:
                stage.cached = True
                stage.tier = cached["engine"]
            stage.details = cached
            self.say(f"{config.path} version {cached['version']}: {cached['rows']:,} rows, "
                     f"views {', '.join(used)}")  # fmt: skip
        version = delta_version(str(project.data_dir / config.path))
        assert version is not None
        return version

    def training_stage(self, snapshot_version: int) -> None:
        """``tierflow train`` (Ray Train), then the model against the baseline."""
        from tierflow.demo.evaluation import evaluate
        from tierflow.train.commands import load_training
        from tierflow.train.predict import Predictor

        project = self.project
        with self.stage("training", "Training on Ray Train, and the baseline") as stage:
            config = load_training(project, self.config.model)
            folder = project.data_dir / config.storage_path / config.name
            key = self._fingerprint(project.paths.conf / "training" / f"{config.name}.yaml",
                                    snapshot_version)  # fmt: skip
            cached = self._cached("training", key, None)
            if cached is None or not (folder / "model.pt").is_file():
                # A different snapshot: a new run (every `tierflow train` is one).
                command = [str(Path(sys.executable).parent / "tierflow"), "train", config.name]
                self.say("$ tierflow train " + config.name)
                log = self.run_dir / "train.log"
                with log.open("wb") as handle:
                    env = {**os.environ, "TIERFLOW_DATA_DIR": str(project.data_dir)}
                    code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                          env=env, check=False).returncode  # fmt: skip
                if code:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"tierflow train exited with {code}:\n{tail}")
                metrics = json.loads((folder / "metrics.json").read_text())
                predictor = Predictor.load(folder, project.feature_views())
                snapshot = str(project.data_dir / config.snapshot.path)
                comparison = evaluate(snapshot, snapshot_version, predictor)
                tracked = json.loads((folder / "run.json").read_text())["mlflow"]
                cached = {"metrics": metrics, "comparison": comparison, "mlflow": tracked}
                self._remember("training", key, None, cached)
            else:
                stage.cached = True
            metrics, comparison = cached["metrics"], cached["comparison"]
            stage.tier = f"ray train {metrics['strategy']} x{metrics['workers']}"
            stage.reason = "tierflow plan-train: " + _train_reason(metrics)
            for artifact in ("curves.png", "history.json"):
                shutil.copyfile(folder / artifact, self.run_dir / artifact)
            model, base = comparison["model"], comparison["baseline"]
            self.say(f"trained {metrics['steps']} steps in {metrics['seconds']:.0f}s "
                     f"({metrics['strategy']}, {metrics['workers']} workers)")  # fmt: skip
            self.say(f"test AUC {model['auc']:.3f} vs baseline {base['auc']:.3f}; log loss "
                     f"{model['logloss']:.4f} vs {base['logloss']:.4f}")  # fmt: skip
            tracked = cached.get("mlflow")
            if tracked:
                self.say(f"registered {tracked['model']} version {tracked['model_version']} "
                         f"(MLflow run {tracked['run_id']}; `tierflow serve --model` loads it)")  # fmt: skip
            stage.details = cached
            self.results["training"] = cached

    # --- live stages ----------------------------------------------------------------------

    def live_stages(self, kafka: KafkaAccess, store_env: dict[str, str]) -> bool:
        """Streaming, parity and serving; False when parity fails."""
        from tierflow.demo import live

        project = self.project
        views = project.feature_views()
        prefix = f"demo-{self.run_id}."
        group = f"demo-{self.run_id}"
        partitions = self.config.topic_partitions
        bootstrap, kafka_env = kafka.connection, kafka.env
        env = {"TIERFLOW_DATA_DIR": str(project.data_dir), **store_env}
        start, end = _us(self.config.replay_from), _us(self.config.replay_until)
        store = self._store(store_env)
        try:
            with self.stage("streaming", "December through Kafka into the feature daemon") as stage:
                feeds = live.december_feeds(project.data_dir, views, start, end)
                outcome = live.run_stream(
                    feeds, bootstrap=bootstrap, prefix=prefix, group=group,
                    partitions=partitions, replication_factor=kafka.replication_factor,
                    env=env | kafka_env, store=store, run_dir=self.run_dir,
                    paced_from_us=_us(self.config.paced_from), paced_rate=self.config.paced_rate,
                    say=self.say,
                )  # fmt: skip
                stage.tier = f"kafka -> tierflow stream -> {self.options.online_store}"
                stage.details = dataclasses.asdict(outcome) | {"throughput": outcome.throughput}
                fresh = outcome.freshness
                self.say(f"bulk: {outcome.bulk_events:,} events stored in {outcome.bulk_seconds:.1f}s "
                         f"({outcome.throughput:,.0f} events/s); paced at {outcome.paced_rate:,.0f}/s "
                         f"per topic: freshness p50 {fresh.get('p50_ms')} ms, p99 {fresh.get('p99_ms')} ms")  # fmt: skip
                self.results["streaming"] = stage.details
            with self.stage("parity", "Parity: online values against batch") as parity:
                results = live.check_parity(feeds, store, group=group, prefix=prefix,
                                            partitions=partitions)  # fmt: skip
                parity.tier = "batch (single) vs online store"
                rows = [r.as_dict() for r in results]
                for r in rows:
                    self.say(f"{r['view']}: {r['entities']} entities, {r['values']:,} values, "
                             f"{r['mismatches']} differences -> {'OK' if r['ok'] else 'FAIL'}")  # fmt: skip
                parity.details = {"views": rows}
                self.results["parity"] = rows
        finally:
            store.close()
        if not all(r["ok"] for r in rows):
            return False
        with self.stage("serving", "Serving: predictions for upcoming flights") as stage:
            flights = live.upcoming_flights(project.data_dir, end, self.config.upcoming_flights)
            evening = live.evening_flights(project.data_dir, end)
            answers = live.serve_predictions(
                flights, model=self.config.model, env=env, run_dir=self.run_dir, traffic=evening
            )
            self.say(f"and {len(evening):,} more rows of the evening's flights, for monitoring")
            stage.tier = "tierflow serve (online store + model)"
            threshold = self.results["training"]["comparison"]["model"]["threshold"]
            for a in answers:
                verdict = "delayed" if a["score"] >= threshold else "on time"
                self.say(f"{a['scheduled']} {a['flight']:>7} {a['route']}: p(delay) "
                         f"{a['score']:.2f} -> {verdict}; actual arrival delay {a['arr_delay']:+.0f} min")  # fmt: skip
            stage.details = {"predictions": answers, "threshold": threshold,
                             "traffic_rows": len(evening)}  # fmt: skip
            self.results["serving"] = stage.details
        return self.monitoring_stage(env)

    def monitoring_stage(self, env: dict[str, str]) -> bool:
        """``tierflow monitor consistency`` and ``drift`` on what serving answered."""
        model = self.config.model
        served = f"{self.project.config.serving.log_path}/{model}"
        with self.stage("monitoring", "Monitoring: served features against batch, drift") as stage:
            reports = {}
            for kind, extra in (("consistency", []), ("drift", ["--input", served])):
                command = [str(Path(sys.executable).parent / "tierflow"), "monitor", kind, model,
                           *extra, "--json"]  # fmt: skip
                self.say(f"$ tierflow monitor {kind} {model} {' '.join(extra)}".rstrip())
                log = self.run_dir / f"monitor-{kind}.log"
                with log.open("wb") as handle:
                    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=handle,
                                          env={**os.environ, **env}, check=False)  # fmt: skip
                    handle.write(done.stdout)
                if done.returncode not in (0, 1):
                    text = log.read_text(errors="replace")
                    raise RuntimeError(
                        f"tierflow monitor {kind} exited with {done.returncode}:\n{text[-3000:]}"
                    )
                reports[kind] = json.loads(done.stdout)
                shutil.copyfile(reports[kind]["report"], self.run_dir / f"{kind}.html")
            checked = reports["consistency"]["features"]
            compared = sum(f["compared"] for f in checked.values())
            differ = sum(f["mismatches"] for f in checked.values())
            self.say(f"consistency: {len(checked)} features of "
                     f"{len({f['view'] for f in checked.values()})} views, {compared:,} values "
                     f"compared with batch, {differ:,} differ")  # fmt: skip
            psi = reports["drift"]["features"]
            top = sorted(psi, key=lambda n: -psi[n]["psi"])[:3]
            self.say("drift of the evening's traffic against training (informational): "
                     + ", ".join(f"{n} PSI {psi[n]['psi']:.2f}" for n in top))  # fmt: skip
            stage.tier = "tierflow monitor (single)"
            by_feature = {n: {k: f[k] for k in ("view", "compared", "mismatches", "not_served")}
                          for n, f in checked.items()}  # fmt: skip
            stage.details = {"consistency": {"features": len(checked), "compared": compared,
                                             "mismatches": differ, "by_feature": by_feature,
                                             "flagged": reports["consistency"]["flagged"]},
                             "drift": {"flagged": reports["drift"]["flagged"],
                                       "psi": {n: psi[n]["psi"] for n in psi}}}  # fmt: skip
            self.results["monitoring"] = stage.details
        return not reports["consistency"]["flagged"]

    def _store(self, store_env: dict[str, str]) -> Any:
        from tierflow.stores import open_store

        config = self.project.config.online_store
        updates: dict[str, Any] = {"kind": self.options.online_store}
        if "TIERFLOW_ONLINE_DB" in store_env:
            updates["path"] = store_env["TIERFLOW_ONLINE_DB"]
        if "TIERFLOW_REDIS_URL" in store_env:
            updates["url"] = store_env["TIERFLOW_REDIS_URL"]
        return open_store(
            config.model_copy(update=updates), self.project.paths.project, environ=store_env
        )

    # --- the whole run --------------------------------------------------------------------

    def run(self, services: Any) -> int:
        """All stages; writes the report whatever happens."""
        from tierflow.demo.report import write_report
        from tierflow.examples.flights import write_raw

        status, error = "failed", ""
        try:
            with self.stage(
                "raw", f"Raw CSV files (NYC flights 2013, scale {self.options.scale})"
            ) as stage:
                root = write_raw(self.project.data_dir, self.options.scale)
                stage.tier = "-"
                stage.details = {"folder": str(root.relative_to(self.project.data_dir))}
                self.say(f"{root.relative_to(self.project.data_dir)}: "
                         f"{self.options.scale} year(s) of flights and weather")  # fmt: skip
            self.jobs_stage("ingest", "Ingest: raw CSV to bronze Delta tables", INGEST_JOBS)
            self.jobs_stage("clean", "Clean: silver tables under data contracts", CLEAN_JOBS)
            self.profile_stage()
            self.jobs_stage("labels", "Labels and the time-based split", LABEL_JOBS)
            version = self.training_set_stage()
            self.training_stage(version)
            store_env = services.store_env(self.run_dir)
            ok = self.live_stages(services.kafka(), store_env)
            status = "succeeded" if ok else "failed: online or served values differ from batch"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            print(f"\nDEMO FAILED: {error}", file=sys.stderr, flush=True)
        finally:
            seconds = time.monotonic() - self.began
            report = write_report(self, status, error, seconds)
            print(f"\nReport: {report}  ({report.with_suffix('.md').name} beside it)")
            print(f"Demo {status} in {seconds / 60:.1f} min")
        return 0 if status == "succeeded" else 1


def _plan_engine(plan: str) -> str:
    for line in plan.splitlines():
        if line.startswith("engine:"):
            return line.split(":", 1)[1].strip()
    return "-"


def _train_reason(metrics: dict[str, Any]) -> str:
    rows = metrics.get("rows", {}).get("train", 0)
    return f"{rows:,} training rows -> {metrics['strategy']} on {metrics['workers']} worker(s)"


def load_demo_config(project: Project) -> DemoConfig:
    """``conf/demo.yaml``, or the defaults."""
    path = project.paths.conf / "demo.yaml"
    return load_model(DemoConfig, path) if path.is_file() else DemoConfig()


Say = Callable[[str], None]
